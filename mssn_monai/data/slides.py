"""Whole slides: open a pyramidal TIFF (or an OpenSlide slide), find its level-0 spacing, read levels lazily.

The file is opened with MONAI's :class:`monai.data.WSIReader` (``backend="tifffile"``), which also gives
the level-0 size and the spacing from the TIFF resolution tags (``WSIReader.get_mpp``). Two limits of
MONAI 1.6's tifffile backend decide how pixels are read:

- ``get_level_count`` counts the file's top-level pages (``len(wsi.pages)``), so a pyramid stored in
  SubIFDs (OME-TIFF and what ``tifffile`` writes with ``subifds=``) shows one level;
- ``get_data`` decodes the *whole* level before cutting the patch out (``wsi.asarray(level=level)``),
  so a level-0 region of a slide would cost the memory of the whole slide.

So the levels are taken from the same ``TiffFile`` object's ``series[0].levels`` (SubIFD and SVS-style
pyramids alike), and pixels are read tile by tile on demand with :class:`mssn_monai.io.TiledTiffImage`
(memory bounded by the window and a small cache).

Spacing, in order: ``--spacing`` when given (overrides the file); the TIFF ``XResolution`` /
``YResolution`` tags with a ``ResolutionUnit`` of centimetre or inch (``WSIReader.get_mpp``); OME-XML
``PhysicalSizeX``; Aperio's ``MPP = ...`` in the image description. A file with none of these (or with
an implausible value, e.g. the 72 dpi default of image editors) is refused with one line naming it.

**OpenSlide** (the optional extra, ``pip install "mssn-monai[openslide]"``;
:mod:`mssn_monai.data.openslide_image`) reads the formats ``tifffile`` does not: the suffixes in
:data:`~mssn_monai.data.openslide_image.OPENSLIDE_SUFFIXES` (NDPI, MRXS, SCN, BIF, VMS, ...) go to it
directly, and a ``.tif`` / ``.svs`` / ... that ``tifffile`` cannot open or decode tile by tile goes to it
when it is installed and knows the file; ``reader="openslide"`` asks for it for any file. The level sizes
come from MONAI's ``WSIReader(backend="openslide")``; the spacing from OpenSlide's ``openslide.mpp-x``
property (its reading of Aperio ``MPP``, NDPI/MRXS metadata and TIFF resolution tags in cm or inch), with
the same ``--spacing`` override, range check and one-line refusal. ``WSIReader.get_mpp`` is not used
there: without ``openslide.mpp-x`` it falls back to the TIFF tags, takes them as micrometres when their
unit is missing (with a warning), and raises an unrelated error when the unit is ``none``. A file that
needs OpenSlide when it is not installed is refused with one line saying how to install it
(:class:`~mssn_monai.data.openslide_image.OpenSlideMissingError`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mssn_monai.data.openslide_image import (
    OPENSLIDE_INSTALL,
    OPENSLIDE_SUFFIXES,
    OpenSlideImage,
    OpenSlideMissingError,
    import_openslide,
    openslide_format,
)
from mssn_monai.io import TiledTiffImage

__all__ = ["Slide", "open_slide", "SLIDE_SUFFIXES", "READERS", "MIN_SPACING_UM", "MAX_SPACING_UM"]

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".qptiff")
"""Suffixes read with ``tifffile`` first (OpenSlide's own formats: :data:`OPENSLIDE_SUFFIXES`)."""

READERS = ("auto", "tifffile", "openslide")
"""``open_slide(reader=)``: ``auto`` (by suffix, then what ``tifffile`` can decode), or one of the two."""

MIN_SPACING_UM, MAX_SPACING_UM = 0.01, 20.0
"""A level-0 spacing from the file outside this range is not believed (72 dpi is 352.8 um/px)."""


@dataclass
class Slide:
    """An opened slide: level sizes and downsamples, level-0 spacing, lazy level readers.

    Args:
        path: the file.
        spacing_um: level-0 pixel spacing in um/px.
        spacing_source: where it came from (``--spacing``, ``TIFF resolution tags``, ``OME PhysicalSizeX``,
            ``Aperio MPP``, ``OpenSlide mpp-x``).
        sizes: ``(H, W)`` of each level, level 0 first.
        reader: ``tifffile`` (:class:`~mssn_monai.io.TiledTiffImage`) or ``openslide``
            (:class:`~mssn_monai.data.openslide_image.OpenSlideImage`): what reads the pixels.
    """

    path: Path
    spacing_um: float
    spacing_source: str
    sizes: list[tuple[int, int]]
    reader: str = "tifffile"

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of level 0."""
        return self.sizes[0]

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level`` (along x; pyramids keep the aspect)."""
        return self.sizes[0][1] / self.sizes[level][1]

    def level_image(self, level: int = 0) -> TiledTiffImage | OpenSlideImage:
        """An ``(H, W, 3)`` uint8 array face of ``level``, decoded tile by tile as it is sliced."""
        self._check_level(level)
        if self.reader == "openslide":
            return OpenSlideImage(self.path, level=level)
        return TiledTiffImage(self.path, level=level)

    def thumbnail_level(self, max_side: int = 2048) -> int:
        """The finest level whose longer side is at most ``max_side`` px, else the coarsest level."""
        fits = [i for i, (h, w) in enumerate(self.sizes) if max(h, w) <= max_side]
        return fits[0] if fits else len(self.sizes) - 1

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A low-resolution ``(h, w, 3)`` uint8 picture of the slide and its level-0 pixels per pixel.

        The smallest pyramid level that fits ``max_side`` (read whole: it is small); when even the
        coarsest level is larger, it is read with a stride (decoding its tiles one at a time).
        """
        level = self.thumbnail_level(max_side)
        image = self.level_image(level)
        h, w = self.sizes[level]
        step = max(1, math.ceil(max(h, w) / max_side))
        try:
            thumb = image[::step, ::step]
        finally:
            image.close()
        return thumb, self.size[1] / thumb.shape[1]

    def _check_level(self, level: int) -> None:
        if not 0 <= int(level) < len(self.sizes):
            raise ValueError(f"{self.path}: --level {level} does not exist (levels 0-{len(self.sizes) - 1})")


def _tiff_spacing(reader, wsi) -> float | None:  # noqa: ANN001 - MONAI's reader and tifffile's TiffFile
    page = wsi.pages[0]
    unit = page.tags.get("ResolutionUnit")
    if unit is None or int(unit.value) not in (2, 3):  # 1 = none: the tags carry no physical size
        return None
    try:
        mpp_y, mpp_x = reader.get_mpp(wsi, 0)
    except (ValueError, KeyError, ZeroDivisionError):
        return None
    return float(mpp_x) if math.isfinite(mpp_x) and mpp_x > 0 else None


def _ome_spacing(wsi) -> float | None:  # noqa: ANN001
    xml = getattr(wsi, "ome_metadata", None)
    if not xml:
        return None
    m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    if not m:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit.group(1) if unit else "µm")
    return float(m.group(1)) * factor if factor else None


def _aperio_spacing(wsi) -> float | None:  # noqa: ANN001
    m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", wsi.pages[0].description or "")
    return float(m.group(1)) if m else None


def _checked_spacing(path: Path, spacing: float | None, value: float | None, where: str) -> float:
    """``value`` (the file's spacing, already range-checked) or the one-line refusal naming ``where`` it was sought."""
    if value is None:
        raise ValueError(f"{path}: no level-0 pixel spacing in the file ({where}); pass --spacing UM (um/px)")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--spacing must be a finite number > 0 um/px, got {spacing!r}")
    return value


class _NotATiff(ValueError):
    """``tifffile`` cannot open the file (the message is the one-line refusal)."""


def _open_tifffile(path: Path, spacing: float | None) -> Slide:
    from monai.data import WSIReader

    reader = WSIReader(backend="tifffile")
    try:
        wsi = reader.read(str(path))
    except Exception as e:  # tifffile raises its own TiffFileError, struct errors on corrupt headers
        raise _NotATiff(f"{path}: cannot read as a TIFF slide ({type(e).__name__}: {e})") from e
    try:
        level0 = reader.get_size(wsi, 0)
        levels = wsi.series[0].levels if wsi.series else []
        sizes = [(int(lv.shape[0]), int(lv.shape[1])) for lv in levels] or [tuple(int(v) for v in level0)]
        if spacing is not None:
            value, source = float(spacing), "--spacing"
        else:
            value, source = None, ""
            for name, find in (
                ("TIFF resolution tags", lambda: _tiff_spacing(reader, wsi)),
                ("OME PhysicalSizeX", lambda: _ome_spacing(wsi)),
                ("Aperio MPP", lambda: _aperio_spacing(wsi)),
            ):
                found = find()
                if found is not None and MIN_SPACING_UM <= found <= MAX_SPACING_UM:
                    value, source = found, name
                    break
    finally:
        wsi.close()
    where = "TIFF resolution tags in cm or inch, OME PhysicalSizeX, Aperio MPP"
    return Slide(path, _checked_spacing(path, spacing, value, where), source, sizes)


def _openslide_spacing(properties) -> float | None:  # noqa: ANN001 - OpenSlide's property mapping
    try:
        value = float(properties.get("openslide.mpp-x") or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) and MIN_SPACING_UM <= value <= MAX_SPACING_UM else None


def _open_openslide(path: Path, spacing: float | None) -> Slide:
    import_openslide(path)  # the one-line install hint before MONAI's own import error
    from monai.data import WSIReader

    reader = WSIReader(backend="openslide")
    try:
        wsi = reader.read(str(path))
    except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError
        raise ValueError(f"{path}: OpenSlide cannot read it ({type(e).__name__}: {e})") from e
    try:
        sizes = [tuple(int(v) for v in reader.get_size(wsi, i)) for i in range(reader.get_level_count(wsi))]
        if spacing is not None:
            value, source = float(spacing), "--spacing"
        else:
            value, source = _openslide_spacing(wsi.properties), "OpenSlide mpp-x"
    finally:
        wsi.close()
    value = _checked_spacing(path, spacing, value, "OpenSlide's openslide.mpp-x")
    return Slide(path, value, source, sizes, reader="openslide")


def _tifffile_decodes(path: Path) -> bool:
    """Whether :class:`TiledTiffImage` opens level 0 and decodes its first chunk (cheap: one tile)."""
    try:
        image = TiledTiffImage(path, level=0, cache_mb=1.0)
    except Exception:
        return False
    try:
        image[0:1, 0:1]
        return True
    except Exception:  # a codec tifffile lacks (JPEG 2000 without imagecodecs), a corrupt tile
        return False
    finally:
        image.close()


def _has_openslide() -> bool:
    try:
        import_openslide()
    except OpenSlideMissingError:
        return False
    return True


def open_slide(path: str | os.PathLike, spacing: float | None = None, reader: str = "auto") -> Slide:
    """Open a slide with MONAI's ``WSIReader`` and find its level-0 spacing.

    Args:
        path: the slide: a pyramidal TIFF (``.tif``, ``.tiff``, ``.svs``, ...; tiled pages, any number of
            levels), or with the ``openslide`` extra any format OpenSlide reads (``.ndpi``, ``.mrxs``, ...).
        spacing: level-0 spacing in um/px, overriding the file's.
        reader: ``auto``: the suffixes in :data:`OPENSLIDE_SUFFIXES` with OpenSlide, others with
            ``tifffile``, falling back to OpenSlide (when installed and it knows the file) for a file
            ``tifffile`` cannot open or decode tile by tile; ``tifffile`` or ``openslide``: that one only.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable slide, or no spacing in the file and none given (one line naming the file).
        OpenSlideMissingError: the file needs OpenSlide and the extra is not installed (one line).
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {', '.join(READERS)}, got {reader!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such slide file")
    if reader == "openslide" or (reader == "auto" and path.suffix.lower() in OPENSLIDE_SUFFIXES):
        return _open_openslide(path, spacing)
    if reader == "auto" and not _tifffile_decodes(path) and openslide_format(path) is not None:
        logger.info("%s: tifffile cannot read it tile by tile; reading it with OpenSlide", path)
        return _open_openslide(path, spacing)
    try:
        return _open_tifffile(path, spacing)
    except _NotATiff as e:
        if reader == "auto" and not _has_openslide():
            raise ValueError(f"{e}; if OpenSlide reads it: {OPENSLIDE_INSTALL}") from e
        raise

"""Slides through OpenSlide (the optional ``openslide`` extra): NDPI, MRXS, SCN, BIF, VMS, ... read lazily.

``pip install "mssn-monai[openslide]"`` installs ``openslide-python`` and ``openslide-bin`` (the OpenSlide
library as a wheel). :func:`mssn_monai.data.slides.open_slide` sends the formats in
:data:`OPENSLIDE_SUFFIXES` here, and TIFFs that ``tifffile`` cannot decode tile by tile; nothing in the
package imports ``openslide`` before a file needs it.

:class:`OpenSlideImage` gives a pyramid level the face of :class:`mssn_monai.io.TiledTiffImage`: an
``(H, W, 3)`` uint8 array that reads only the window it is sliced with, in pieces of at most ``tile x
tile`` px (one ``OpenSlide.read_region`` each), so memory is bounded by the window whatever the slide
size. OpenSlide returns RGBA: transparent pixels (no scan there: MRXS gaps, empty TIFF tiles, the area
outside the scanned region) are composited onto white, the colour of background glass
(:func:`composite_on_white`). MONAI's ``OpenSlideWSIReader`` drops the alpha channel instead (they turn
black), which is why the pixels are read here and not with ``WSIReader.get_data``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mssn_monai.io import gather_by_tiles, take_window

__all__ = [
    "OPENSLIDE_SUFFIXES",
    "OPENSLIDE_INSTALL",
    "OpenSlideMissingError",
    "OpenSlideImage",
    "composite_on_white",
    "import_openslide",
    "openslide_format",
]

OPENSLIDE_SUFFIXES = (".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide", ".czi", ".dcm")
"""Slide formats read with OpenSlide whatever ``tifffile`` could do with them (Hamamatsu, MIRAX, Leica,
Ventana, Sakura, Zeiss, DICOM). ``.svs`` and ``.tif`` go to ``tifffile`` first."""

OPENSLIDE_INSTALL = 'pip install "mssn-monai[openslide]"'
"""The command that installs the optional extra (``openslide-python`` and the ``openslide-bin`` library)."""


class OpenSlideMissingError(ImportError):
    """A file needs OpenSlide and ``openslide`` cannot be imported; the message says how to install it."""


def import_openslide(path: str | os.PathLike | None = None) -> ModuleType:
    """The ``openslide`` module, or :class:`OpenSlideMissingError` (one line naming ``path``).

    Args:
        path: the file that needs it, for the message.

    Raises:
        OpenSlideMissingError: ``openslide-python`` is not installed, or it finds no OpenSlide library.
    """
    try:
        import openslide
    except (ImportError, OSError) as e:  # no package, or no libopenslide (openslide-bin) for it to load
        where = f"{path}: " if path is not None else ""
        raise OpenSlideMissingError(
            f"{where}this slide is read with OpenSlide, which is not installed ({e.__class__.__name__}); "
            f"install the extra: {OPENSLIDE_INSTALL}"
        ) from e
    return openslide


def openslide_format(path: str | os.PathLike) -> str | None:
    """OpenSlide's name of the file's format (``"aperio"``, ``"hamamatsu"``, ``"generic-tiff"``, ...), or
    ``None`` when OpenSlide is not installed or does not know the file."""
    try:
        openslide = import_openslide(path)
    except OpenSlideMissingError:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # an unreadable file is simply not one OpenSlide reads
        return None


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 RGBA (not premultiplied, as ``openslide-python`` returns it) over white, as
    ``(H, W, 3)`` uint8: ``rgb * a + 255 * (1 - a)``, rounded. Opaque pixels are kept exactly."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[-1] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 4) uint8 RGBA, got {rgba.dtype} {tuple(rgba.shape)}")
    alpha = rgba[..., 3:]
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint32)
    out = (rgba[..., :3].astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideImage:
    """A level of a slide OpenSlide reads, as an ``(H, W, 3)`` uint8 array face read on demand.

    Indexing with two slices (``image[y0:y1, x0:x1]``, steps allowed: ``image[::8, ::8]``) reads only the
    window, in pieces aligned on a ``tile x tile`` grid of the level (one ``read_region`` each), and
    returns ``(h, w, 3)`` uint8 composited onto white (:func:`composite_on_white`). OpenSlide keeps the
    slide's decoded tiles in its own cache (``cache_mb``), so neighbouring windows do not decode them
    again. ``np.asarray(image)`` reads the whole level.

    Pixel positions at a level above 0 are passed to OpenSlide in level-0 coordinates (``x *
    downsample``, rounded), as ``read_region`` wants them; with a downsample that is not a whole number
    OpenSlide may resample the piece by a fraction of a pixel.

    Args:
        path: a slide OpenSlide opens.
        level: pyramid level (0: full resolution), as OpenSlide counts them.
        tile: side of the read pieces in pixels of the level.
        cache_mb: OpenSlide's tile cache for this slide, in MB.

    Raises:
        OpenSlideMissingError: ``openslide`` is not installed.
        ValueError: a file OpenSlide cannot open, or a missing level (the message names the file).
    """

    def __init__(self, path: str | os.PathLike, level: int = 0, tile: int = 512, cache_mb: float = 256.0) -> None:
        openslide = import_openslide(path)
        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError: one line naming the file
            raise ValueError(f"{self.path}: OpenSlide cannot read it ({type(e).__name__}: {e})") from e
        if not 0 <= int(level) < self._slide.level_count:
            n = self._slide.level_count
            self.close()
            raise ValueError(f"{self.path}: no pyramid level {level} (levels 0-{n - 1})")
        self._slide.set_cache(openslide.OpenSlideCache(int(cache_mb * 2**20)))
        self.level = int(level)
        self.downsample = float(self._slide.level_downsamples[self.level])
        width, height = self._slide.level_dimensions[self.level]
        self.tile = (int(tile), int(tile))
        self.shape = (int(height), int(width), 3)
        self.ndim, self.dtype = 3, np.dtype(np.uint8)

    def close(self) -> None:
        """Close the slide (also done when the object is collected); closing twice is harmless."""
        slide, self._slide = getattr(self, "_slide", None), None
        if slide is not None:
            slide.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Level pixels ``[y, y + height) x [x, x + width)`` as ``(height, width, 3)`` uint8 on white."""
        location = (round(x * self.downsample), round(y * self.downsample))
        region = self._slide.read_region(location, self.level, (int(width), int(height)))
        return composite_on_white(np.asarray(region))

    def __getitem__(self, key: Any) -> np.ndarray:
        def pixels(ty: int, tx: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            r0, c0 = int(rows.min()), int(cols.min())
            piece = self.read(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1)
            return take_window(piece, rows - r0, cols - c0)

        return gather_by_tiles(self, key, pixels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, level={self.level}, shape={self.shape}, tile={self.tile})"

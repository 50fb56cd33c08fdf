"""Slides through OpenSlide (the optional ``openslide`` extra): small files tifffile writes, read back exactly.

The tests that read need ``openslide`` (``pip install "mssn-monai[openslide]"``) and are skipped without it;
those of the message when it is missing hide the module and run everywhere.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import tifffile

from mssn_monai.data.openslide_image import (
    OPENSLIDE_INSTALL,
    OpenSlideImage,
    OpenSlideMissingError,
    composite_on_white,
)
from mssn_monai.data.slides import open_slide

TILE = 128


@pytest.fixture
def openslide():
    return pytest.importorskip("openslide")


@pytest.fixture
def no_openslide(monkeypatch):
    """``import openslide`` fails, as without the extra."""
    monkeypatch.setitem(sys.modules, "openslide", None)


def _pyramid(h: int = 300, w: int = 520, levels: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Random RGB level 0 and its 2x, 4x, ... subsamples (each an exact copy of pixels of level 0)."""
    img = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return [np.ascontiguousarray(img[:: 2**i, :: 2**i]) for i in range(levels)]


def _write_svs(path, levels: list[np.ndarray], mpp: float | None = 0.25) -> None:
    """An Aperio-layout SVS: tiled level 0 whose description starts with ``Aperio`` (``|MPP = ...``), a
    stripped thumbnail, then the other levels as tiled top-level pages; uncompressed (exact pixels)."""
    h, w = levels[0].shape[:2]
    head = f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE})"
    tail = "|AppMag = 40" + (f"|MPP = {mpp}" if mpp is not None else "")
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(TILE, TILE), photometric="rgb", description=f"{head} -> {w}x{h}{tail}", metadata=None)
        thumb = np.ascontiguousarray(levels[0][::8, ::8])
        tw.write(thumb, photometric="rgb", rowsperstrip=16, description=f"{head} -> thumbnail", metadata=None)
        for lv in levels[1:]:
            desc = f"{head} -> {lv.shape[1]}x{lv.shape[0]}{tail}"
            tw.write(lv, tile=(TILE, TILE), photometric="rgb", description=desc, metadata=None)


def _write_generic(path, levels: list[np.ndarray], spacing: float | None, tiles=None) -> None:
    """A generic tiled TIFF (OpenSlide's ``generic-tiff``): the levels as top-level pages, zlib (lossless),
    resolution tags in cm when ``spacing`` is given; ``tiles`` replaces level 0's tiles (``None``: empty)."""
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            res = {}
            if spacing is not None:
                res = {"resolution": (1e4 / (spacing * 2**i),) * 2, "resolutionunit": "CENTIMETER"}
            data, kw = lv, {}
            if i == 0 and tiles is not None:
                data, kw = iter(tiles), {"shape": lv.shape, "dtype": lv.dtype}
            opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib", "metadata": None}
            tw.write(data, subfiletype=int(i > 0), **opts, **kw, **res)


def test_aperio_svs_levels_spacing_and_exact_pixels(openslide, tmp_path):
    levels = _pyramid()
    _write_svs(tmp_path / "a.svs", levels)
    assert openslide.OpenSlide.detect_format(str(tmp_path / "a.svs")) == "aperio"
    s = open_slide(tmp_path / "a.svs", reader="openslide")
    assert s.reader == "openslide" and s.spacing_source == "OpenSlide mpp-x"
    assert s.spacing_um == pytest.approx(0.25)
    assert s.sizes == [(300, 520), (150, 260), (75, 130)] and s.downsample(2) == 4.0
    assert open_slide(tmp_path / "a.svs", spacing=0.5, reader="openslide").spacing_source == "--spacing"
    for level, expected in enumerate(levels):
        image = s.level_image(level)
        try:
            assert isinstance(image, OpenSlideImage) and image.shape == (*expected.shape[:2], 3)
            np.testing.assert_array_equal(image[:, :], expected)
            np.testing.assert_array_equal(np.asarray(image), expected)
        finally:
            image.close()
    # windows across the read grid, steps, clipped and reversed slices: numpy's answers
    image = OpenSlideImage(tmp_path / "a.svs", level=0, tile=64)
    try:
        img = levels[0]
        for key in [
            (slice(10, 200), slice(7, 333)),
            (slice(None, None, 3), slice(1, None, 5)),
            (slice(250, 400), slice(500, 900)),
            (slice(None, None, -7), slice(300, 100, -2)),
            (slice(5, 5), slice(0, 10)),
        ]:
            np.testing.assert_array_equal(image[key], img[key])
    finally:
        image.close()
    image.close()  # twice: harmless
    thumb, scale = s.thumbnail(200)
    assert thumb.shape == (75, 130, 3) and scale == 4.0
    with pytest.raises(ValueError, match="does not exist"):
        s.level_image(3)
    with pytest.raises(ValueError, match="no pyramid level 3"):
        OpenSlideImage(tmp_path / "a.svs", level=3)


def test_svs_stays_with_tifffile_and_both_readers_agree(openslide, tmp_path):
    from mssn_monai.slide import stain_sample, tissue_blocks

    levels = _pyramid(600, 900, seed=1)
    levels[0][100:400, 200:700] = (170, 90, 160)  # a pink "tissue" patch on noise, for the tissue mask
    levels = [np.ascontiguousarray(levels[0][:: 2**i, :: 2**i]) for i in range(3)]
    _write_svs(tmp_path / "b.svs", levels)
    t, o = open_slide(tmp_path / "b.svs"), open_slide(tmp_path / "b.svs", reader="openslide")
    assert (t.reader, t.spacing_source, o.reader) == ("tifffile", "Aperio MPP", "openslide")
    assert t.sizes == o.sizes and t.spacing_um == o.spacing_um
    # the slide pipeline's reads (thumbnail, tissue blocks, stain tiles) are the same through either reader
    thumb_t, mask_t, scale_t, grid_t = tissue_blocks(t, 0, 256, thumb_side=300)
    thumb_o, mask_o, scale_o, grid_o = tissue_blocks(o, 0, 256, thumb_side=300)
    np.testing.assert_array_equal(thumb_t, thumb_o)
    np.testing.assert_array_equal(grid_t, grid_o)
    assert scale_t == scale_o and grid_t.any()
    it, io = t.level_image(0), o.level_image(0)
    try:
        np.testing.assert_array_equal(stain_sample(it, grid_t, 256, tile=64), stain_sample(io, grid_o, 256, tile=64))
    finally:
        it.close()
        io.close()


def test_openslide_suffix_goes_to_openslide_and_spacing_from_resolution_tags(openslide, tmp_path):
    levels = _pyramid(seed=2)
    _write_generic(tmp_path / "g.tif", levels, spacing=0.5)
    shutil.copy(tmp_path / "g.tif", tmp_path / "g.ndpi")  # no NDPI tags: OpenSlide reads it as generic-tiff
    s = open_slide(tmp_path / "g.ndpi")
    assert s.reader == "openslide" and s.spacing_um == pytest.approx(0.5)
    assert s.sizes == [(300, 520), (150, 260), (75, 130)]
    image = s.level_image(1)
    try:
        np.testing.assert_array_equal(image[20:140, 33:250], levels[1][20:140, 33:250])
    finally:
        image.close()
    assert open_slide(tmp_path / "g.tif").reader == "tifffile"  # a TIFF tifffile decodes stays there


def test_missing_spacing_is_refused_in_one_line(openslide, tmp_path):
    _write_generic(tmp_path / "n.ndpi", _pyramid(levels=1), spacing=None)
    refusal = r"n\.ndpi: no level-0 pixel spacing .*openslide\.mpp-x.* pass --spacing UM"
    with pytest.raises(ValueError, match=refusal) as e:
        open_slide(tmp_path / "n.ndpi")
    assert "\n" not in str(e.value)
    s = open_slide(tmp_path / "n.ndpi", spacing=0.3)
    assert (s.spacing_um, s.spacing_source, s.reader) == (0.3, "--spacing", "openslide")
    _write_svs(tmp_path / "n.svs", _pyramid(levels=1), mpp=None)
    with pytest.raises(ValueError, match="no level-0 pixel spacing"):
        open_slide(tmp_path / "n.svs", reader="openslide")


def test_tiff_tifffile_cannot_decode_by_tiles_falls_back_to_openslide(openslide, tmp_path):
    img = _pyramid(200, 300, levels=1)[0]
    # planar (RGB in separate planes): io.TiledTiffImage reads chunky pages only
    res = {"resolution": (4e4, 4e4), "resolutionunit": "CENTIMETER"}
    planar = np.moveaxis(img, -1, 0)
    tifffile.imwrite(
        tmp_path / "planar.tif", planar, tile=(64, 64), photometric="rgb", planarconfig="separate", metadata=None, **res
    )
    s = open_slide(tmp_path / "planar.tif")
    assert s.reader == "openslide" and s.spacing_um == pytest.approx(0.25)
    image = s.level_image(0)
    try:
        np.testing.assert_array_equal(image[:, :], img)
    finally:
        image.close()
    assert open_slide(tmp_path / "planar.tif", reader="tifffile").reader == "tifffile"  # asked for: not switched
    (tmp_path / "junk.ndpi").write_bytes(b"not a slide" * 10)
    with pytest.raises(ValueError, match=r"junk\.ndpi: OpenSlide cannot read it"):
        open_slide(tmp_path / "junk.ndpi")


def test_transparent_is_white(openslide, tmp_path):
    levels = _pyramid(256, 384, levels=1)
    img = levels[0]
    tiles = [img[y : y + TILE, x : x + TILE] for y in range(0, 256, TILE) for x in range(0, 384, TILE)]
    tiles[4] = None  # an empty tile (byte count 0): nothing scanned there
    _write_generic(tmp_path / "sparse.tif", levels, spacing=0.25, tiles=tiles)
    image = OpenSlideImage(tmp_path / "sparse.tif")
    try:
        out = image[:, :]
    finally:
        image.close()
    assert (out[128:256, 128:256] == 255).all()
    out[128:256, 128:256] = img[128:256, 128:256]
    np.testing.assert_array_equal(out, img)


def test_composite_on_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128], [200, 100, 0, 51]]], dtype=np.uint8)
    np.testing.assert_array_equal(
        composite_on_white(rgba), [[[10, 20, 30], [255, 255, 255], [127, 127, 127], [244, 224, 204]]]
    )
    with pytest.raises(ValueError, match="RGBA"):
        composite_on_white(rgba[..., :3])


def test_missing_openslide_is_one_line_with_the_install_command(no_openslide, tmp_path):
    (tmp_path / "s.ndpi").write_bytes(b"II*\x00" + b"\x00" * 60)
    with pytest.raises(OpenSlideMissingError) as e:
        open_slide(tmp_path / "s.ndpi")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 's.ndpi'}: ") and msg.endswith(OPENSLIDE_INSTALL) and "\n" not in msg
    with pytest.raises(OpenSlideMissingError, match="mssn-monai"):
        open_slide(tmp_path / "s.ndpi", reader="openslide")
    # a .tif tifffile cannot read: its own refusal, and the hint
    (tmp_path / "x.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=r"x\.tif: cannot read as a TIFF slide .*; if OpenSlide reads it: pip install"):
        open_slide(tmp_path / "x.tif")


def test_missing_openslide_ends_the_command_in_one_line(no_openslide, tmp_path, monkeypatch, capsys):
    import mssn_monai.checkpoints
    from mssn_monai.cli import main

    monkeypatch.setattr(mssn_monai.checkpoints, "load_detector", lambda *a, **k: None)  # no weights to load
    (tmp_path / "s.mrxs").write_bytes(b"\x00" * 64)
    with pytest.raises(SystemExit) as e:
        main(["slide", "--input", str(tmp_path / "s.mrxs"), "--out", str(tmp_path / "out"), "--noprogress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith(OPENSLIDE_INSTALL) and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["slide", "--input", "s.tif", "--out", str(tmp_path / "out"), "--reader", "pillow"])
    assert e.value.code == 2 and "--reader" in capsys.readouterr().err


def test_resume_record_names_the_reader(tmp_path):
    from mssn_monai.io import write_json
    from mssn_monai.slide import _load_record

    key = {"version": 1, "slide": "a.svs", "reader": "tifffile"}
    write_json(tmp_path / "old.json", {"version": 1, "slide": "a.svs", "blocks": {"0,0": []}})  # before readers
    assert _load_record(tmp_path / "old.json", key) == {"0,0": []}
    with pytest.raises(ValueError, match="reader differ"):
        _load_record(tmp_path / "old.json", {**key, "reader": "openslide"})


class _DarkestPixel:
    """A stand-in for the detector in :func:`mssn_monai.slide.detect_slide`: one point per block, at the
    darkest pixel of the block read with 16 px of context (what the pipeline hands it is what it finds)."""

    block_px, settings = 256, {"stand_in": "darkest pixel"}

    def __init__(self):
        from types import SimpleNamespace

        self.detector = SimpleNamespace(progress=False, output_stride=4)

    def detect_blocks(self, image, spacing_um, blocks, fit_on=None, cells=None):
        assert fit_on is not None and fit_on.dtype == np.uint8
        assert cells(0, 2, 0, 3).shape == (2, 3)  # the tissue cells of the slide's map grid
        for i, j in blocks:
            y0, x0 = max(0, i * self.block_px - 16), max(0, j * self.block_px - 16)
            window = image[y0 : (i + 1) * self.block_px + 16, x0 : (j + 1) * self.block_px + 16]
            y, x = np.unravel_index(np.argmin(window.sum(axis=2)), window.shape[:2])
            yield (i, j), {"detections": np.array([[x0 + x, y0 + y, 0.9]])}


def test_slide_pipeline_through_openslide_equals_tifffile_and_resumes(openslide, tmp_path):
    from mssn_monai.slide import detect_slide

    img = np.full((600, 900, 3), 235, dtype=np.uint8)
    img[100:500, 150:750] = np.random.default_rng(3).integers(60, 200, size=(400, 600, 3), dtype=np.uint8)
    _write_svs(tmp_path / "c.svs", [np.ascontiguousarray(img[:: 2**i, :: 2**i]) for i in range(3)])
    fields = _DarkestPixel()
    ref = detect_slide(str(tmp_path / "c.svs"), str(tmp_path / "t"), fields, progress=False)
    part = detect_slide(
        str(tmp_path / "c.svs"), str(tmp_path / "o"), fields, progress=False, reader="openslide", max_blocks=2
    )
    assert ref["complete"] and ref["blocks"] > 2 and not part["complete"]
    record = tmp_path / "o" / "c.progress.json"
    with pytest.raises(ValueError, match="reader differ"):
        detect_slide(str(tmp_path / "c.svs"), str(tmp_path / "o"), fields, progress=False, resume=True)
    run = detect_slide(
        str(tmp_path / "c.svs"), str(tmp_path / "o"), fields, progress=False, reader="openslide", resume=True
    )
    assert run["complete"] and run["slide"].reader == "openslide" and '"reader": "openslide"' in record.read_text()
    np.testing.assert_array_equal(run["detections"], ref["detections"])
    np.testing.assert_array_equal(run["mask"], ref["mask"])

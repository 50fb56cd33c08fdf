"""Image reading and detection files: conversions, errors, atomic writes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tifffile
from PIL import Image

from mssn_monai.io import (
    atomic_write,
    list_images,
    read_detections_csv,
    read_image_rgb,
    read_predictions,
    write_detections_csv,
    write_json,
)


def test_rgb_png_roundtrip(tmp_path):
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(img).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "a.png"), img)


def test_grayscale_rgba_16bit_float_are_converted(tmp_path):
    gray = np.array([[0, 128], [255, 7]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image_rgb(tmp_path / "a.png")
    assert out.shape == (2, 2, 3) and np.all(out[..., 0] == 200) and np.all(out[..., 1:] == 0)

    tifffile.imwrite(tmp_path / "s.tif", np.full((3, 3, 3), 0xABCD, np.uint16), photometric="rgb")
    assert np.all(read_image_rgb(tmp_path / "s.tif") == 0xAB)

    f = np.full((2, 3, 3), 0.5, np.float32)
    f[0, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", f, photometric="rgb")
    out = read_image_rgb(tmp_path / "f.tif")
    assert out[0, 0, 0] == 0 and out[1, 1, 1] == 128


def test_unreadable_images_name_the_file(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match="zero.png.*0 bytes"):
        read_image_rgb(tmp_path / "zero.png")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="junk.tif"):
        read_image_rgb(tmp_path / "junk.tif")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image_rgb(tmp_path / "missing.png")


def test_list_images(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path)
    (tmp_path / "b").mkdir()
    for name in ("b/2.TIF", "1.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["1.png", "2.TIF"]


def test_detection_csv_roundtrip_and_errors(tmp_path):
    write_detections_csv(tmp_path / "d.csv", [[1.5, 2.25, 0.9], [3, 4, 1]])
    np.testing.assert_allclose(read_detections_csv(tmp_path / "d.csv"), [[1.5, 2.25, 0.9], [3, 4, 1]])
    (tmp_path / "h.csv").write_text("x,y,score\n1,2,0.5\n\n3,4\n")
    np.testing.assert_allclose(read_detections_csv(tmp_path / "h.csv"), [[1, 2, 0.5], [3, 4, 1.0]])
    (tmp_path / "bad.csv").write_text("1,2,0.5\n1,abc,0.5\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        read_detections_csv(tmp_path / "bad.csv")
    write_json(tmp_path / "p.json", {"dir/a.tif": [[1, 2, 0.3]], "b": []})
    preds = read_predictions(tmp_path / "p.json")
    assert preds["a"].shape == (1, 3) and preds["b"].shape == (0, 3)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with pytest.raises(IsADirectoryError):
        write_json(tmp_path, {})
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        write_json(tmp_path / "file" / "x.json", {})


@pytest.mark.parametrize("first_row", ["182.5,nan,4.6", "12.5,30,high", "1,inf", "a,b", "x,y,label"])
def test_csv_first_row_that_is_not_a_header_is_an_error(tmp_path, first_row):
    path = tmp_path / "d.csv"
    path.write_text(f"{first_row}\n1,2,0.5\n")
    with pytest.raises(ValueError, match=r"d\.csv:1: "):
        read_detections_csv(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("y,x,score\n1,2,0.5\n", [[2, 1, 0.5]]),
        ("Score, Y ,X\n0.5,1,2\n", [[2, 1, 0.5]]),
        ("\n\nrow,col,probability\n1,2,0.25\n3,4\n", [[2, 1, 0.25], [4, 3, 1.0]]),
        ("X,Y\n1,2\n", [[1, 2, 1.0]]),
        ("\ufeffx,y,score\r\n1,2,0.5\r\n", [[1, 2, 0.5]]),
        ("1,2\n\n3,4,0.5\n", [[1, 2, 1.0], [3, 4, 0.5]]),
        ("", np.zeros((0, 3))),
        ("x,y,score\n", np.zeros((0, 3))),
    ],
)
def test_csv_header_columns_are_read_by_name(tmp_path, text, expected):
    (tmp_path / "d.csv").write_bytes(text.encode("utf-8"))
    np.testing.assert_array_equal(read_detections_csv(tmp_path / "d.csv"), np.asarray(expected, float).reshape(-1, 3))


@pytest.mark.parametrize(
    "text, match",
    [
        ("x,y,score\n1,2,0.5\nx,y,score\n", r"d\.csv:3: x must be a finite number, got 'x'"),
        ("1,2,0.5\n3,nan,1\n", r"d\.csv:2: y must be a finite number, got 'nan'"),
        ("1,2,0.5\n3,4,-inf\n", r"d\.csv:2: score must be a finite number"),
        ("1,2,0.5,7\n", r"d\.csv:1: expected 2 or 3 cells"),
        ("1\n", r"d\.csv:1: expected 2 or 3 cells"),
        ("1,2\n3,,1\n", r"d\.csv:2: y must be a finite number, got ''"),
        ("x,y,x\n1,2,3\n", r"d\.csv:1: "),
        ("score,x,y\n0.5,1\n", r"d\.csv:2: expected 3 cells like the header"),
    ],
)
def test_csv_bad_cells_name_the_file_and_line(tmp_path, text, match):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_detections_csv(tmp_path / "d.csv")


def test_csv_binary_file_names_the_file(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 8)
    with pytest.raises(ValueError, match=r"bin\.csv: not a UTF-8 text CSV"):
        read_detections_csv(tmp_path / "bin.csv")
    (tmp_path / "nul.csv").write_bytes(b"1,2,3\n4,\x00,5\n")
    with pytest.raises(ValueError, match=r"nul\.csv:2"):
        read_detections_csv(tmp_path / "nul.csv")
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "a.csv").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match=r"a\.csv: not a UTF-8"):
        read_predictions(tmp_path / "preds")


def test_json_predictions_with_non_finite_or_text_name_the_entry(tmp_path):
    (tmp_path / "p.json").write_text('{"a.tif": [[1, 2, NaN]]}')
    with pytest.raises(ValueError, match=r"p\.json: entry 'a\.tif' is not a list of finite"):
        read_predictions(tmp_path / "p.json")
    (tmp_path / "q.json").write_text('{"a.tif": [["1", "2", "0.5"]]}')
    with pytest.raises(ValueError, match=r"q\.json: entry 'a\.tif'"):
        read_predictions(tmp_path / "q.json")


@pytest.mark.parametrize(
    "obj, where",
    [
        ({"overall": {"f1": float("nan")}}, "overall.f1 = nan"),
        ({"per_image": [{"a": 1.0}, {"a": np.float32("inf")}]}, r"per_image\[1\]\.a = inf"),
        ({"sweep": {"precision": np.array([0.5, -np.inf])}}, r"sweep\.precision\[1\] = -inf"),
        ([1.0, [2.0, float("nan")]], r"\[1\]\[1\] = nan"),
    ],
)
def test_write_json_refuses_nan_and_infinity(tmp_path, obj, where):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(ValueError, match=rf"report\.json: cannot write {where}: JSON has no NaN"):
        write_json(target, obj)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_json(target, {"f1": None, "x": np.float32(0.5), "a": np.arange(2)})
    assert target.read_text() == '{\n  "f1": null,\n  "x": 0.5,\n  "a": [\n    0,\n    1\n  ]\n}\n'


def test_evaluation_report_writes_null_for_undefined_densities(tmp_path):
    from mssn_monai.evaluation import evaluate_predictions

    write_detections_csv(tmp_path / "pred" / "a.csv", [[1, 2, 0.9]])
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    for spacing in (1e-200, 1e200):  # the area under- or overflows
        records = [{"image": str(tmp_path / "a.png"), "mitoses": [[1, 2]], "spacing": spacing}]
        report = evaluate_predictions(records, tmp_path / "pred", radius_um=1e-100)
        row = report["per_image"][0]
        assert row["area_mm2"] is None and row["gt_per_mm2"] is None and row["pred_per_mm2"] is None
        write_json(tmp_path / "r.json", report)
        assert "NaN" not in (tmp_path / "r.json").read_text()


def _png_claiming(path, width, height):
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 10000, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _tiff_claiming(path, width, height):
    """A tiny TIFF whose header claims ``width`` x ``height`` pixels."""
    import struct

    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        fields = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for (offset, dtype), value in zip(fields, (width, height), strict=True):
        struct.pack_into("<H" if dtype == 3 else "<I", data, offset, min(value, 65535) if dtype == 3 else value)
    path.write_bytes(bytes(data))


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    _png_claiming(tmp_path / "bomb.png", 100000, 100000)
    assert (tmp_path / "bomb.png").stat().st_size < 10_000
    with pytest.raises(ValueError, match=r"bomb\.png: the header claims 100000x100000 = 10000000000 pixels"):
        read_image_rgb(tmp_path / "bomb.png")
    _tiff_claiming(tmp_path / "bomb.tif", 100000, 100000)
    with pytest.raises(ValueError, match=r"bomb\.tif: the header claims \d+x\d+ = \d+ pixels, more than the limit"):
        read_image_rgb(tmp_path / "bomb.tif")


def test_image_pixel_limits_are_configurable(tmp_path, monkeypatch):
    import mssn_monai.io as io

    img = np.zeros((30, 40, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb")
    monkeypatch.setattr(io, "MAX_DECODED_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"a\.png: the header claims 40x30 = 1200 pixels.*MAX_DECODED_IMAGE_PIXELS"):
        read_image_rgb(tmp_path / "a.png")
    assert read_image_rgb(tmp_path / "a.tif").shape == (30, 40, 3)
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"a\.tif: .*MAX_IMAGE_PIXELS"):
        read_image_rgb(tmp_path / "a.tif")
    # Pillow's own limit (89 Mpx warning, 179 Mpx error) is replaced by ours, and left as it was
    from PIL import Image as PILImage

    before = PILImage.MAX_IMAGE_PIXELS
    _png_claiming(tmp_path / "big.png", 15000, 15000)
    with pytest.raises(ValueError, match=r"big\.png: cannot read image"):  # truncated data, not a bomb error
        monkeypatch.setattr(io, "MAX_DECODED_IMAGE_PIXELS", 20000 * 20000)
        read_image_rgb(tmp_path / "big.png")
    assert PILImage.MAX_IMAGE_PIXELS == before


def test_signed_16_bit_tiff_is_mapped_with_a_warning(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "s.tif", np.array([[-5, 0], [1024, 32767]], np.int16))
    with caplog.at_level("WARNING", logger="mssn_monai.io"):
        out = read_image_rgb(tmp_path / "s.tif")
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [8, 255]])
    assert "s.tif" in caplog.text and "signed 16-bit" in caplog.text
    tifffile.imwrite(tmp_path / "small.tif", np.array([[-5, 0], [100, 255]], np.int16))
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "small.tif")[..., 1], [[0, 0], [100, 255]])


# ---------------------------------------------------------------- tiled TIFFs read by tiles


def test_take_window_slices_runs_and_gathers_the_rest():
    from mssn_monai.io import take_window

    a = np.arange(60).reshape(6, 10)
    run = take_window(a, np.array([1, 2, 3]), np.array([4, 5]))
    np.testing.assert_array_equal(run, [[14, 15], [24, 25], [34, 35]])
    assert np.shares_memory(run, a)  # a window is a view, not a copy
    np.testing.assert_array_equal(take_window(a, np.array([3, 1]), np.array([0, 9])), [[30, 39], [10, 19]])
    np.testing.assert_array_equal(take_window(a, np.array([0, 2]), np.array([1, 2])), [[1, 2], [21, 22]])


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize(("dtype", "samples"), [(np.uint8, 3), (np.uint8, 4), (np.uint16, 1), (np.uint16, 3)])
def test_tiled_tiff_windows_equal_the_whole_read(tmp_path, dtype, samples, workers):
    """Any window (steps, edges, partial edge tiles, empty) equals the same window of the whole image, whether
    the chunks are decoded one by one or by several threads at once."""
    from mssn_monai.io import TiledTiffImage

    rng = np.random.default_rng(0)
    hi = 255 if dtype == np.uint8 else 65535
    shape = (600, 530) if samples == 1 else (600, 530, samples)
    pixels = rng.integers(0, hi, shape).astype(dtype)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(
        path,
        pixels,
        tile=(128, 256),
        photometric="minisblack" if samples == 1 else "rgb",
        extrasamples=[2] if samples == 4 else None,
        compression="zlib",
    )
    whole = read_image_rgb(path)
    lazy = TiledTiffImage(path, workers=workers)
    assert lazy.shape == whole.shape and lazy.tile == (128, 256)
    for rows, cols in [
        (slice(None), slice(None)), (slice(100, 333), slice(255, 514)), (slice(None, None, 7), slice(3, None, 5)),
        (slice(590, 700), slice(0, 1)), (slice(10, 10), slice(0, 5)), (slice(500, 90, -3), slice(None, None, -1)),
    ]:  # fmt: skip
        np.testing.assert_array_equal(lazy[rows, cols], whole[rows, cols])
    np.testing.assert_array_equal(np.asarray(lazy), whole)
    with pytest.raises(TypeError, match="two slices"):
        lazy[3]
    lazy.close()


def test_decode_workers_follow_omp_num_threads(monkeypatch):
    from mssn_monai.io import MAX_DECODE_WORKERS, decode_workers

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert decode_workers() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert decode_workers() == MAX_DECODE_WORKERS
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert 1 <= decode_workers() <= MAX_DECODE_WORKERS


def test_open_image_reads_large_tiled_tiffs_lazily_and_refuses_bombs(tmp_path, monkeypatch):
    import mssn_monai.io as io
    from mssn_monai.io import TiledTiffImage, open_image

    pixels = np.random.default_rng(1).integers(0, 255, (300, 200, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "tiled.tif", pixels, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(pixels, -1, 0), photometric="rgb", planarconfig="separate")
    assert isinstance(open_image(tmp_path / "tiled.tif"), np.ndarray)  # small: read whole
    monkeypatch.setattr(io, "LAZY_TIFF_PIXELS", 1000)
    lazy = open_image(tmp_path / "tiled.tif")
    assert isinstance(lazy, TiledTiffImage)
    np.testing.assert_array_equal(np.asarray(lazy), pixels)
    planar = open_image(tmp_path / "planar.tif")  # not chunky: the whole-image reader
    assert isinstance(planar, np.ndarray)
    np.testing.assert_array_equal(planar, pixels)
    monkeypatch.setattr(io, "MAX_TILED_PIXELS", 50_000)
    with pytest.raises(ValueError, match="more than the limit.*MAX_TILED_PIXELS.*decompression bomb"):
        open_image(tmp_path / "tiled.tif")


def test_stripped_tiff_is_read_by_strips_with_a_cache(tmp_path):
    """A TIFF in strips (the common non-tiled layout) reads by strips; a repeated window decodes nothing new."""
    from mssn_monai.io import TiledTiffImage

    pixels = np.random.default_rng(2).integers(0, 255, (301, 77, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", pixels, rowsperstrip=16, photometric="rgb", compression="zlib")
    lazy = TiledTiffImage(tmp_path / "s.tif", cache_mb=0.01)  # room for about 2 strips
    assert lazy.tile == (16, 77)
    np.testing.assert_array_equal(lazy[290:301, 5:9], pixels[290:301, 5:9])  # the short last strip
    np.testing.assert_array_equal(lazy[::3, ::2], pixels[::3, ::2])
    assert len(lazy._cache) <= 3 and lazy._cache_bytes <= 3 * 16 * 77 * 3
    tifffile.imwrite(tmp_path / "one.tif", pixels, rowsperstrip=301, photometric="rgb")
    assert TiledTiffImage(tmp_path / "one.tif").tile == (301, 77)  # one small strip still qualifies


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_tiled_tiff_decodes_in_a_forked_child_after_the_parent_did(tmp_path):
    """A child forked after the parent decoded with threads gets its own pool (the parent's threads do not
    exist there), so a DataLoader worker does not wait forever."""
    from mssn_monai.io import TiledTiffImage

    pixels = np.random.default_rng(4).integers(0, 255, (256, 256, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", pixels, tile=(64, 64), photometric="rgb", compression="zlib")
    np.testing.assert_array_equal(TiledTiffImage(tmp_path / "t.tif", workers=2)[:, :], pixels)
    pid = os.fork()
    if pid == 0:  # the child: read again with threads, exit 0 when the pixels are right
        ok = np.array_equal(TiledTiffImage(tmp_path / "t.tif", workers=2)[:, :], pixels)
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung decoding tiles")

"""Image reading and detection files: conversions, errors, atomic writes."""

from __future__ import annotations

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

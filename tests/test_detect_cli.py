"""`python -m mssn_monai detect` with the shipped weights: outputs, formats and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mssn_monai.data.synthetic import generate_field
from mssn_monai.io import detections_to_geojson, read_detections_csv, write_image

ROOT = Path(__file__).resolve().parents[1]


def _detect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mssn_monai", "detect", *args], capture_output=True, text=True)


def test_geojson_is_qupath_points():
    gj = detections_to_geojson(np.array([[10.0, 20.0, 0.9]]), "a")
    (feature,) = gj["features"]
    assert gj["type"] == "FeatureCollection" and feature["geometry"] == {"type": "Point", "coordinates": [10.0, 20.0]}
    props = feature["properties"]
    assert props["objectType"] == "detection" and props["classification"]["name"] == "Mitotic figure"
    assert props["measurements"] == {"score": 0.9}
    assert detections_to_geojson(np.array([[10.0, 20.0, 0.9]]), "a") == gj  # deterministic ids


def test_detect_writes_csv_geojson_json(tmp_path):
    src = tmp_path / "in"
    write_image(src / "field.tif", generate_field((320, 256), seed=7, mitosis_rate=20.0).image)
    gray = generate_field((130, 90), seed=8).image.mean(axis=2).astype(np.uint8)
    write_image(src / "small_gray.png", np.repeat(gray[..., None], 3, axis=2)[..., 0])
    (src / "broken.tif").write_bytes(b"II*\x00junk")
    out = tmp_path / "out"
    r = _detect("--input", str(src), "--out", str(out), "--spacing", "0.2455", "--overlay")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "broken.tif" in r.stderr  # reported, the others still processed
    for stem, (w, h) in (("field", (320, 256)), ("small_gray", (130, 90))):
        det = read_detections_csv(out / f"{stem}.csv")
        summary = json.loads((out / f"{stem}.json").read_text())
        gj = json.loads((out / f"{stem}.geojson").read_text())
        assert (summary["width"], summary["height"]) == (w, h)
        assert summary["count"] == len(det) == len(gj["features"]) == len(summary["detections"])
        assert summary["mitoses_per_mm2"] == summary["count"] / (w * h * 0.2455**2 / 1e6)
        assert (out / f"{stem}_overlay.png").is_file()
    assert not (out / "broken.csv").exists()


def test_detect_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _detect("--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no image files" in r.stderr
    (tmp_path / "file").write_text("x")
    write_image(tmp_path / "img" / "a.png", np.zeros((8, 8, 3), np.uint8))
    r = _detect("--input", str(tmp_path / "img"), "--out", str(tmp_path / "file"))
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = _detect("--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "missing" in r.stderr


def test_bundle_stain_normalisation_maps_a_shifted_field_towards_training_colours():
    """FieldDetector.prepare (what detect, candidates and training feed the detector) with the bundle's normaliser."""
    import torch

    from mssn_monai.checkpoints import DEFAULT_BUNDLE, bundle_config, stain_normalizer
    from mssn_monai.data.synthetic import StainStyle
    from mssn_monai.networks import FieldDetector, MSSNDetector, MultiScaleFNR, SiameseEmbedding
    from mssn_monai.ops.intensity import hwc_to_chw_float, to_uint8

    normalizer = stain_normalizer(bundle_config(DEFAULT_BUNDLE / "configs" / "train.json"))
    assert normalizer is not None
    detector = MSSNDetector(MultiScaleFNR(stem_channels=(4, 4), head_channels=4, features=3), SiameseEmbedding())
    train_look = generate_field((256, 256), seed=5).image
    shifted = generate_field((256, 256), seed=5, style=StainStyle.shifted(np.random.default_rng(1))).image
    assert torch.equal(FieldDetector(detector).prepare(shifted), hwc_to_chw_float(shifted))  # no normaliser: as is
    field = FieldDetector(detector, normalizer).prepare(shifted)
    assert field.shape == (3, 256, 256) and field.dtype == torch.float32
    out = to_uint8(field).permute(1, 2, 0).numpy()

    def gap(a):
        return np.abs(a.reshape(-1, 3).mean(0) - train_look.reshape(-1, 3).mean(0)).sum()

    assert gap(out) < gap(shifted)


def test_detect_bad_images_are_reported_and_the_rest_processed(tmp_path):
    """The issue's list of bad images, in one folder: each named on stderr or handled, the others written."""
    import tifffile

    src = tmp_path / "in"
    good = generate_field((256, 256), seed=3).image
    write_image(src / "good.png", good)
    (src / "zero.tif").write_bytes(b"")
    write_image(src / "whole.tif", good)
    (src / "truncated.tif").write_bytes((src / "whole.tif").read_bytes()[:5000])
    (src / "whole.tif").unlink()
    write_image(src / "one.png", good[:1, :1])
    write_image(src / "tiny.png", good[:20, :30])  # smaller than every patch
    rgba = np.concatenate([good, np.full((256, 256, 1), 255, np.uint8)], axis=2)
    write_image(src / "rgba.png", rgba)
    tifffile.imwrite(src / "sixteen.tif", good.astype(np.uint16) * 257)
    nan = good.astype(np.float32) / 255
    nan[10:20, 10:20] = np.nan
    tifffile.imwrite(src / "nan.tif", nan)
    out = tmp_path / "out"
    r = _detect("--input", str(src), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    for bad in ("zero.tif", "truncated.tif"):
        assert bad in r.stderr
        assert not (out / f"{Path(bad).stem}.csv").exists()
    for stem in ("good", "one", "tiny", "rgba", "sixteen", "nan"):
        assert (out / f"{stem}.csv").is_file() and (out / f"{stem}.json").is_file(), stem
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))  # nothing half-written
    # the 16-bit and RGBA copies of the field give the detections of the 8-bit RGB original
    assert read_detections_csv(out / "sixteen.csv").tolist() == read_detections_csv(out / "good.csv").tolist()
    assert read_detections_csv(out / "rgba.csv").tolist() == read_detections_csv(out / "good.csv").tolist()


def test_detect_checkpoint_that_does_not_match(tmp_path):
    import shutil

    import torch

    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.save({"fnr.stem1.conv.weight": torch.zeros(2, 2)}, bundle / "models" / "model.pt")
    write_image(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8))
    r = _detect("--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--bundle", str(bundle))
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "model.pt" in line and "does not match" in line
    (bundle / "models" / "model.pt").write_bytes(b"not a checkpoint")
    r = _detect("--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--bundle", str(bundle))
    assert r.returncode == 2 and "not a readable weights file" in r.stderr


def test_evaluate_unreadable_datalist(tmp_path):
    (tmp_path / "d.json").write_text("{not json")
    args = ["evaluate", "--datalist", str(tmp_path / "d.json"), "--pred", str(tmp_path)]
    r = subprocess.run([sys.executable, "-m", "mssn_monai", *args], capture_output=True, text=True)
    assert r.returncode == 2 and "d.json" in r.stderr.strip().splitlines()[-1]

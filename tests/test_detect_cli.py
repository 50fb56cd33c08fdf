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
    from mssn_monai.checkpoints import DEFAULT_BUNDLE, bundle_config, stain_normalizer
    from mssn_monai.data.synthetic import StainStyle
    from mssn_monai.inference import normalize_field

    normalizer = stain_normalizer(bundle_config(DEFAULT_BUNDLE / "configs" / "train.json"))
    assert normalizer is not None
    train_look = generate_field((256, 256), seed=5).image
    shifted = generate_field((256, 256), seed=5, style=StainStyle.shifted(np.random.default_rng(1))).image
    assert normalize_field(None, shifted) is shifted
    out = normalize_field(normalizer, shifted)
    assert out.shape == shifted.shape and out.dtype == np.uint8

    def gap(a):
        return np.abs(a.reshape(-1, 3).mean(0) - train_look.reshape(-1, 3).mean(0)).sum()

    assert gap(out) < gap(shifted)

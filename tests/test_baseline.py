"""The classical baseline detector."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from mssn_monai.baseline import detect_baseline, hematoxylin_density
from mssn_monai.data.synthetic import generate_field
from mssn_monai.io import read_detections_csv, write_image


def _disc_image(
    size=200, centres=((60, 80),), radius=16, dark=(40, 20, 90), nuclei=((150, 150), (150, 50), (50, 160), (100, 170))
):
    """White-pink field, pale ordinary nuclei, and dark purple discs at ``centres``."""
    img = np.full((size, size, 3), (235, 200, 225), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for cx, cy in nuclei:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = (150, 120, 190)
    for cx, cy in centres:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = dark
    return img


def test_hematoxylin_density_orders_colours():
    img = np.array([[[255, 255, 255], [150, 120, 190], [40, 20, 90]]], np.uint8)
    h = hematoxylin_density(img)[0]
    assert h[0] < 0.01 and h[0] < h[1] < h[2]


def test_finds_the_dark_disc_only():
    img = _disc_image(centres=((60, 80),))
    det = detect_baseline(img, spacing=0.25)
    assert det.shape[1] == 3
    assert len(det) == 1
    np.testing.assert_allclose(det[0, :2], (60, 80), atol=2.0)


def test_blank_image_gives_no_detection():
    assert detect_baseline(np.full((64, 64, 3), 240, np.uint8)).shape == (0, 3)


def test_finds_mitoses_but_is_fooled_by_mimics():
    """The benchmark property: darkness + blob shape finds mitoses, and the mimics defeat it."""
    hits = n_gt = fp = n_det = 0
    for seed in (21, 22):
        f = generate_field((768, 768), seed=seed, mitosis_rate=6.0)
        det = detect_baseline(f.image, f.spacing)
        r = 8.0 / f.spacing
        for gx, gy in f.mitoses:
            n_gt += 1
            hits += bool(len(det)) and np.hypot(det[:, 0] - gx, det[:, 1] - gy).min() <= r
        n_det += len(det)
        mimic_hit = [np.hypot(det[:, 0] - mx, det[:, 1] - my).min() <= r for mx, my in f.mimics] if len(det) else []
        fp += int(np.sum(mimic_hit))
    assert n_gt >= 4
    assert hits / n_gt >= 0.75  # finds most mitoses
    assert fp > hits  # more mimics than mitoses among its detections


def test_cli_writes_csv_per_image(tmp_path):
    write_image(tmp_path / "in" / "a.png", _disc_image())
    write_image(tmp_path / "in" / "b.tif", _disc_image(centres=((100, 100), (40, 40))))
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    r = subprocess.run(
        [sys.executable, "-m", "mssn_monai", "baseline", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "broken.png" in r.stderr  # reported, and the others still processed
    assert len(read_detections_csv(tmp_path / "o" / "a.csv")) == 1
    assert len(read_detections_csv(tmp_path / "o" / "b.csv")) == 2
    assert not (tmp_path / "o" / "broken.csv").exists()

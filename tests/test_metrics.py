"""Tests of mssn_monai.metrics (pure maths): exact counts, P/R/F1 conventions, sweeps, counts per mm^2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mssn_monai.io import image_size
from mssn_monai.metrics import (
    DetectionCounts,
    best_threshold,
    count_per_mm2,
    detection_counts,
    image_area_mm2,
    precision_recall_f1,
    prf_arrays,
    select_thresholds,
    sum_counts,
    sweep_counts,
)


def _tif(path: Path, width: int = 32, height: int = 32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((height, width, 3), dtype=np.uint8), photometric="rgb")
    return str(path)


# --- counts and P/R/F1 ------------------------------------------------------------------------------


def test_detection_counts_greedy_vs_optimal():
    gt, det = [[0, 0], [10, 0]], [[4, 0], [-5, 0], [50, 50]]
    assert detection_counts(gt, det, 7, "optimal") == DetectionCounts(tp=2, fp=1, fn=0)
    assert detection_counts(gt, det, 7, "greedy") == DetectionCounts(tp=1, fp=2, fn=1)


@pytest.mark.parametrize(
    "gt, det, expected",
    [([], [[1, 1]], (0, 1, 0)), ([[1, 1]], [], (0, 0, 1)), ([], [], (0, 0, 0))],
    ids=["empty_gt", "empty_det", "both_empty"],
)
def test_detection_counts_empty(gt, det, expected):
    assert detection_counts(gt, det, 5.0) == expected


@pytest.mark.parametrize(
    "counts, expected",
    [
        ((3, 1, 2), (0.75, 0.6, 2 / 3)),
        ((0, 0, 0), (1.0, 1.0, 1.0)),  # nothing to find, nothing found
        ((0, 0, 3), (1.0, 0.0, 0.0)),  # no detections: precision defined as 1
        ((0, 2, 0), (0.0, 1.0, 0.0)),  # no ground truth: recall defined as 1
        ((0, 2, 3), (0.0, 0.0, 0.0)),
        ((4, 0, 0), (1.0, 1.0, 1.0)),
    ],
)
def test_precision_recall_f1(counts, expected):
    assert precision_recall_f1(*counts) == pytest.approx(expected, abs=0, rel=1e-15)


def test_precision_recall_f1_rejects_bad_counts():
    with pytest.raises(ValueError, match="fp must be an integer >= 0, got -1"):
        precision_recall_f1(1, -1, 0)
    with pytest.raises(ValueError, match="tp must be an integer >= 0, got 1.5"):
        precision_recall_f1(1.5, 0, 0)


def test_prf_arrays_equals_precision_recall_f1_elementwise():
    counts = np.array([(3, 1, 2), (0, 0, 0), (0, 0, 3), (0, 2, 0), (0, 2, 3), (4, 0, 0)])
    p, r, f = prf_arrays(counts[:, 0], counts[:, 1], counts[:, 2])
    assert p.shape == r.shape == f.shape == (6,) and f.dtype == np.float64
    for i, c in enumerate(counts.tolist()):
        assert (p[i], r[i], f[i]) == precision_recall_f1(*c)


def test_sum_counts_is_micro():
    assert sum_counts([DetectionCounts(1, 0, 0), (0, 0, 3), (2, 1, 0)]) == DetectionCounts(3, 1, 3)
    assert sum_counts([]) == DetectionCounts(0, 0, 0)


# --- area and density ---------------------------------------------------------------------------------


def test_area_and_density():
    assert image_area_mm2(1000, 1000, 0.25) == 0.0625
    assert count_per_mm2(3, 0.0625) == 48.0
    assert image_area_mm2(2000, 1000, 0.5) == 0.5
    with pytest.raises(ValueError, match="spacing must be a positive number"):
        image_area_mm2(10, 10, 0.0)
    with pytest.raises(ValueError, match="image size must be positive, got width=0"):
        image_area_mm2(0, 10, 0.25)


def test_image_size_reads_width_then_height(tmp_path):
    assert image_size(_tif(tmp_path / "a.tif", width=40, height=30)) == (40, 30)
    Image.new("RGB", (50, 20)).save(tmp_path / "b.png")
    assert image_size(tmp_path / "b.png") == (50, 20)
    with pytest.raises(FileNotFoundError, match="missing.tif: no such image file"):
        image_size(tmp_path / "missing.tif")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: cannot read the image size"):
        image_size(tmp_path / "bad.png")


# --- thresholds and sweeps ----------------------------------------------------------------------------


def test_select_thresholds():
    np.testing.assert_array_equal(select_thresholds([0.5, 0.1, 0.9, 0.5]), [0.1, 0.5, 0.9])
    assert select_thresholds([]).shape == (0,)
    # 1000 distinct scores capped at 11: scores at indices round(linspace(0, 999, 11)) (half to even)
    np.testing.assert_array_equal(
        select_thresholds(np.arange(1000.0)[::-1], max_thresholds=11),
        [0, 100, 200, 300, 400, 500, 599, 699, 799, 899, 999],
    )
    with pytest.raises(ValueError, match="max_thresholds must be >= 2, got 1"):
        select_thresholds([1.0], max_thresholds=1)


def test_best_threshold_ties_go_to_lowest():
    assert best_threshold([0.3, 0.8, 0.9], [2 / 3, 0.4, 2 / 3]) == (0.3, 2 / 3)
    assert best_threshold([0.9, 0.3, 0.8], [2 / 3, 2 / 3, 0.4]) == (0.3, 2 / 3)
    assert best_threshold([], []) == (None, None)


def _sweep_fixture():
    # image a: gt at (0,0) and (100,0); detections: a hit (0.9), a far false positive (0.8), a hit (0.3)
    # image b: no ground truth; one false positive at 0.8. Radius 5 px.
    gts = [np.array([[0.0, 0.0], [100.0, 0.0]]), np.empty((0, 2))]
    dets = [np.array([[1.0, 0.0, 0.9], [200.0, 200.0, 0.8], [101.0, 0.0, 0.3]]), np.array([[5.0, 5.0, 0.8]])]
    return gts, dets


def test_sweep_counts_exact():
    gts, dets = _sweep_fixture()
    tp, fp, fn = sweep_counts(gts, dets, [5.0, 5.0], np.array([0.3, 0.8, 0.9, 0.95]))
    assert tp.tolist() == [2, 1, 1, 0]
    assert fp.tolist() == [2, 2, 0, 0]
    assert fn.tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("method", ["optimal", "greedy"])
@pytest.mark.parametrize("seed", range(10))
def test_sweep_equals_thresholding_each_image(method, seed):
    """The step-function shortcut in sweep_counts must equal re-matching at every threshold."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(3):
        gts.append(rng.integers(0, 30, size=(rng.integers(0, 6), 2)).astype(np.float64))
        n = rng.integers(0, 12)
        xy = rng.integers(0, 30, size=(n, 2)).astype(np.float64)
        dets.append(np.concatenate([xy, rng.integers(0, 5, size=(n, 1)) / 4], axis=1))  # many tied scores
    radii = [4.0, 6.0, 5.0]
    thresholds = np.array([-1.0, 0.0, 0.25, 0.5, 0.6, 0.75, 1.0, 2.0])
    tp, fp, fn = sweep_counts(gts, dets, radii, thresholds, method)
    for i, t in enumerate(thresholds):
        ref = sum_counts(
            detection_counts(g, d[d[:, 2] >= t, :2], r, method) for g, d, r in zip(gts, dets, radii, strict=True)
        )
        assert (tp[i], fp[i], fn[i]) == ref


def test_detection_uncertainty_exact_cases():
    from mssn_monai.metrics import detection_uncertainty

    # at the threshold: 1 each; one logit width away (p = sigmoid(logit(t) +- 1)): 1/e each; per mm2
    t = 0.3
    lt = np.log(t / (1 - t))
    p = 1 / (1 + np.exp(-np.array([lt, lt + 1.0, lt - 1.0])))
    assert detection_uncertainty(p, t, area_mm2=0.5) == pytest.approx((1 + 2 / np.e) / 0.5)
    assert detection_uncertainty(np.array([]), t, 1.0) == 0.0
    sure = detection_uncertainty(np.array([0.0, 1.0, 0.999]), t, 1.0)
    assert 0.0 <= sure < 1e-6  # sure mitoses and sure non-mitoses count (almost) nothing
    assert detection_uncertainty(p, t, 1.0, width=1e6) == pytest.approx(3.0)
    for bad in ({"threshold": 0.0}, {"threshold": 1.0}, {"area_mm2": 0.0}, {"width": -1.0}):
        kwargs = {"probability": p, "threshold": t, "area_mm2": 1.0, **bad}
        with pytest.raises(ValueError):
            detection_uncertainty(**kwargs)
    with pytest.raises(ValueError, match="finite"):
        detection_uncertainty(np.array([np.nan]), t, 1.0)

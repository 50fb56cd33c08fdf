"""find_peaks on hand-made maps with exact expected points, plus a brute-force oracle on random maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mssn_monai.ops.peaks import find_peaks


def _zeros(h: int = 7, w: int = 9) -> np.ndarray:
    return np.zeros((h, w), dtype=np.float32)


def test_single_peak():
    m = _zeros()
    m[3, 2] = 0.8
    np.testing.assert_allclose(find_peaks(m, threshold=0.5, min_distance_px=12), [[8, 12, 0.8]], rtol=1e-6)


def test_two_peaks_closer_than_min_distance_only_higher_survives():
    m = _zeros()
    m[2, 2], m[2, 4] = 0.9, 0.7  # 8 px apart
    np.testing.assert_allclose(find_peaks(m, 0.5, min_distance_px=10), [[8, 8, 0.9]], rtol=1e-6)
    # exactly min_distance_px apart: both stay
    np.testing.assert_allclose(find_peaks(m, 0.5, min_distance_px=8), [[8, 8, 0.9], [16, 8, 0.7]], rtol=1e-6)


def test_diagonal_neighbour_uses_euclidean_distance():
    m = _zeros()
    m[2, 2], m[4, 4] = 0.9, 0.7  # 8 * sqrt(2) = 11.3 px apart; a square 5x5 window would drop the lower
    np.testing.assert_allclose(find_peaks(m, 0.5, min_distance_px=11), [[8, 8, 0.9], [16, 16, 0.7]], rtol=1e-6)
    np.testing.assert_allclose(find_peaks(m, 0.5, min_distance_px=12), [[8, 8, 0.9]], rtol=1e-6)


def test_plateau_gives_one_point_nearest_its_centroid():
    m = _zeros()
    m[1:4, 3:6] = 1.0  # 3x3 plateau: its centre cell
    np.testing.assert_array_equal(find_peaks(m, 0.5, min_distance_px=0), [[16, 8, 1.0]])
    m = _zeros()
    m[2:4, 1:4] = 1.0  # 2x3 plateau, centroid (row 2.5, col 2): (2, 2) and (3, 2) tie, raster order wins
    np.testing.assert_array_equal(find_peaks(m, 0.5, min_distance_px=8), [[8, 8, 1.0]])
    m = _zeros()
    m[1, 1:6] = 1.0
    m[2:6, 1] = 1.0  # symmetric L, centroid (19/9, 19/9) off the plateau: (1, 2) and (2, 1) tie exactly
    np.testing.assert_array_equal(find_peaks(m, 0.5, min_distance_px=4), [[8, 4, 1.0]])
    m[6, 1] = 1.0  # longer vertical arm, centroid (2.5, 2.0): (2, 1) and (3, 1) are nearest, raster order
    np.testing.assert_array_equal(find_peaks(m, 0.5, min_distance_px=4), [[4, 8, 1.0]])


def test_equal_peaks_not_connected_keep_first_in_raster_order():
    m = _zeros()
    m[2, 2] = m[2, 4] = m[5, 1] = 0.8
    m[2, 3] = 0.1
    np.testing.assert_allclose(find_peaks(m, 0.5, min_distance_px=10), [[8, 8, 0.8], [4, 20, 0.8]], rtol=1e-6)


def test_sorted_by_descending_score_with_raster_ties():
    m = _zeros(9, 9)
    m[0, 8], m[4, 4], m[8, 0], m[0, 0] = 0.6, 0.9, 0.6, 0.7
    np.testing.assert_allclose(
        find_peaks(m, 0.5, min_distance_px=4),
        [[16, 16, 0.9], [0, 0, 0.7], [32, 0, 0.6], [0, 32, 0.6]],
        rtol=1e-6,
    )


def test_below_threshold_and_inclusive_threshold():
    m = _zeros()
    m[3, 3] = 0.49
    assert find_peaks(m, 0.5, 12).shape == (0, 3)
    m[3, 3] = 0.5
    np.testing.assert_allclose(find_peaks(m, 0.5, 12), [[12, 12, 0.5]])


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0)])
def test_empty_map(shape):
    out = find_peaks(np.zeros(shape), 0.5, 12)
    assert out.shape == (0, 3) and out.dtype == np.float64


def test_all_zero_map():
    assert find_peaks(_zeros(5, 5), 0.5, 12).shape == (0, 3)
    # with threshold 0 the whole map is one plateau: one point, at its centre
    np.testing.assert_array_equal(find_peaks(_zeros(5, 5), 0.0, 12), [[8, 8, 0.0]])


def test_border_peaks_kept():
    m = _zeros(6, 8)
    m[0, 0], m[5, 7], m[0, 7], m[3, 0] = 0.9, 0.8, 0.7, 0.6
    np.testing.assert_allclose(
        find_peaks(m, 0.5, min_distance_px=8),
        [[0, 0, 0.9], [28, 20, 0.8], [28, 0, 0.7], [0, 12, 0.6]],
        rtol=1e-6,
    )


def test_stride_scales_coordinates():
    m = _zeros()
    m[3, 2] = 0.8
    np.testing.assert_allclose(find_peaks(m, 0.5, min_distance_px=12, stride=2), [[4, 6, 0.8]], rtol=1e-6)


def test_nan_cells_are_ignored():
    m = _zeros()
    m[3, 3], m[3, 4] = 0.8, np.nan
    np.testing.assert_allclose(find_peaks(m, 0.5, 12), [[12, 12, 0.8]], rtol=1e-6)


def test_input_not_mutated_numpy_and_torch():
    m = np.random.default_rng(0).random((12, 15)).astype(np.float32)
    m[4, 4] = np.nan
    before = m.copy()
    ref = find_peaks(m, 0.3, 8)
    np.testing.assert_array_equal(m, before)
    t = torch.from_numpy(before.copy())
    np.testing.assert_array_equal(find_peaks(t, 0.3, 8), ref)
    np.testing.assert_array_equal(t.numpy(), before)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((1, 4, 4)), 0.5, 8), r"shape \(1, 4, 4\)"),
        ((np.zeros(4), 0.5, 8), r"shape \(4,\)"),
        ((np.zeros((4, 4)), 0.5, -1), "min_distance_px"),
        ((np.zeros((4, 4)), 0.5, float("inf")), "min_distance_px"),
        ((np.zeros((4, 4)), float("nan"), 8), "threshold"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        find_peaks(*args)
    with pytest.raises(ValueError, match="stride"):
        find_peaks(np.zeros((4, 4)), 0.5, 8, stride=0)


def _reference_peaks(m: np.ndarray, threshold: float, d: float, stride: int) -> set[tuple[float, float]]:
    """Naive oracle for maps without ties: cells >= threshold strictly above every cell closer than d px."""
    out = set()
    h, w = m.shape
    for r in range(h):
        for c in range(w):
            if m[r, c] < threshold:
                continue
            if all(
                m[r2, c2] < m[r, c]
                for r2 in range(h)
                for c2 in range(w)
                if (r2, c2) != (r, c) and stride * np.hypot(r2 - r, c2 - c) < d
            ):
                out.add((float(stride * c), float(stride * r)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((14, 17))  # continuous values: no ties, so no plateaus
    for d in (0.0, 4.0, 6.0, 8.0, 12.5, 20.0):
        got = find_peaks(m, 0.4, d)
        assert {(x, y) for x, y, _ in got} == _reference_peaks(m, 0.4, d, 4), d
        assert np.all(np.diff(got[:, 2]) <= 0)
        if len(got) > 1:
            dist = np.hypot(got[:, None, 0] - got[None, :, 0], got[:, None, 1] - got[None, :, 1])
            assert dist[~np.eye(len(got), dtype=bool)].min() >= d

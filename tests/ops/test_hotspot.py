"""Exact hotspot search on hand-placed points, against brute force and coarse grids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mssn_monai.ops.hotspot import best_circle, best_square, count_in_circle, count_in_square


def _grid_best_circle(points: np.ndarray, radius: float, step: float) -> int:
    lo, hi = points.min(axis=0) - radius, points.max(axis=0) + radius
    best = 0
    for x in np.arange(lo[0], hi[0] + step, step):
        for y in np.arange(lo[1], hi[1] + step, step):
            best = max(best, len(count_in_circle(points, (x, y), radius)))
    return best


def test_empty():
    hot = best_circle(np.zeros((0, 2)), 5.0)
    assert hot.count == 0 and np.isnan(hot.centre[0]) and hot.inside.shape == (0,)
    assert best_square(np.zeros((0, 3)), 5.0).count == 0


def test_single_point_and_far_points():
    assert best_circle(np.array([[3.0, 4.0]]), 1.0) == (1, (3.0, 4.0), best_circle(np.array([[3.0, 4.0]]), 1.0).inside)
    assert best_circle(np.array([[0, 0], [10, 0], [30, 0]]), 5.0).count == 2  # exactly 2r apart: both on the rim
    assert best_circle(np.array([[0, 0], [10.001, 0]]), 5.0).count == 1


def test_circle_coarse_grid_misses_the_optimum():
    # Only the disk through the two ends of the base (centre (9.95, 0.9987...)) holds all three points.
    pts = np.array([[0.0, 0.0], [19.9, 0.0], [9.95, 10.99]])
    hot = best_circle(pts, 10.0)
    assert hot.count == 3
    assert hot.centre == pytest.approx((9.95, np.sqrt(100 - 9.95**2)))
    assert _grid_best_circle(pts, 10.0, step=1.0) == 2  # a 1-px grid of centres finds 2
    assert _grid_best_circle(pts, 10.0, step=0.25) == 2


def test_circle_ignores_score_column_and_does_not_modify_input():
    pts = np.array([[0.0, 0.0, 0.9], [3.0, 0.0, 0.8], [50.0, 50.0, 0.7]])
    before = pts.copy()
    hot = best_circle(pts, 2.0)
    assert hot.count == 2 and sorted(hot.inside.tolist()) == [0, 1]
    np.testing.assert_array_equal(pts, before)


@pytest.mark.parametrize("seed", range(5))
def test_circle_beats_any_grid_and_reports_its_points(seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 60, size=(25, 2))
    hot = best_circle(pts, 8.0)
    assert hot.count >= _grid_best_circle(pts, 8.0, step=2.0)
    np.testing.assert_array_equal(hot.inside, count_in_circle(pts, hot.centre, 8.0))
    # brute force over every candidate the exact method allows (points, and pair centres) agrees
    best = 1
    for i, j in itertools.combinations(range(len(pts)), 2):
        d = np.linalg.norm(pts[j] - pts[i])
        if d > 16.0:
            continue
        mid, h = (pts[i] + pts[j]) / 2, np.sqrt(max(64.0 - (d / 2) ** 2, 0.0))
        u = np.array([-(pts[j] - pts[i])[1], (pts[j] - pts[i])[0]]) / d
        for c in (mid + h * u, mid - h * u):
            best = max(best, len(count_in_circle(pts, tuple(c), 8.0)))
    assert hot.count == best


def test_square_coarse_grid_misses_the_optimum():
    pts = np.array([[0.3, 0.7], [10.3, 10.7], [5.0, 5.0]])
    hot = best_square(pts, 10.0)
    assert hot.count == 3 and hot.centre == pytest.approx((5.3, 5.7))
    grid = max(
        len(count_in_square(pts, (x, y), 10.0)) for x in np.arange(-10, 11, 1.0) for y in np.arange(-10, 11, 1.0)
    )
    assert grid == 2


@pytest.mark.parametrize("seed", range(3))
def test_square_against_brute_force(seed):
    pts = np.random.default_rng(seed).uniform(0, 40, size=(20, 2))
    hot = best_square(pts, 9.0)
    brute = max(len(count_in_square(pts, (x, y), 9.0)) for x in pts[:, 0] for y in pts[:, 1])
    assert hot.count == brute


def test_bad_sizes():
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        best_circle(np.zeros((1, 2)), 0.0)
    with pytest.raises(ValueError, match="side must be"):
        best_square(np.zeros((1, 2)), float("inf"))

"""Tests of mssn_monai.ops.matching: hand-made point sets with exact answers, plus a brute-force oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mssn_monai.ops import MatchingMethod, PointMatch, match_points, pairwise_distances

METHODS = ["optimal", "greedy"]


def _pairs(m: PointMatch) -> list[tuple[int, int]]:
    return list(zip(m.gt_idx.tolist(), m.det_idx.tolist(), strict=True))


def test_greedy_and_optimal_differ():
    # A=(0,0), B=(10,0); d0=(4,0) is 4 from A and 6 from B, d1=(-5,0) is 5 from A and 15 from B.
    # Greedy: A takes its nearest, d0; B is then left with d1 at 15 > 7: one match.
    # Optimal: A-d1 (5) and B-d0 (6): two matches.
    gt, det = np.array([[0, 0], [10, 0]]), np.array([[4, 0], [-5, 0]])
    opt = match_points(gt, det, radius=7, method="optimal")
    assert _pairs(opt) == [(0, 1), (1, 0)]
    np.testing.assert_array_equal(opt.distance, [5.0, 6.0])
    greedy = match_points(gt, det, radius=7, method="greedy")
    assert _pairs(greedy) == [(0, 0)]
    np.testing.assert_array_equal(greedy.distance, [4.0])


def test_optimal_puts_cardinality_before_distance():
    # A=(0,0), B=(7,0); d0=(0,0), d1=(-7,0), radius 7. {A-d0} costs 0 but leaves B unmatched;
    # {A-d1, B-d0} costs 14 and has two pairs: the optimal rule must pick the latter.
    gt, det = np.array([[0.0, 0.0], [7.0, 0.0]]), np.array([[0.0, 0.0], [-7.0, 0.0]])
    assert _pairs(match_points(gt, det, 7.0, "optimal")) == [(0, 1), (1, 0)]
    assert _pairs(match_points(gt, det, 7.0, "greedy")) == [(0, 0)]


def test_optimal_minimises_distance_among_maximum_matchings():
    # Every pair is within the radius; both perfect matchings have two pairs; the identity is shorter.
    gt, det = np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[1.0, 0.0], [9.0, 0.0]])
    m = match_points(gt, det, 100.0, "optimal")
    assert _pairs(m) == [(0, 0), (1, 1)]
    np.testing.assert_array_equal(m.distance, [1.0, 1.0])


def test_greedy_tie_in_distance_goes_to_lowest_detection_index():
    gt = np.array([[0.0, 0.0]])
    det = np.array([[0.0, 3.0], [3.0, 0.0], [-3.0, 0.0]])  # all at distance 3
    assert _pairs(match_points(gt, det, 5.0, "greedy")) == [(0, 0)]
    assert _pairs(match_points(gt, det[::-1], 5.0, "greedy")) == [(0, 0)]


def test_greedy_visits_ground_truth_in_input_order():
    # one detection exactly between two ground-truth points: the first one listed gets it
    det = np.array([[1.0, 0.0]])
    assert _pairs(match_points([[0.0, 0.0], [2.0, 0.0]], det, 1.0, "greedy")) == [(0, 0)]
    assert _pairs(match_points([[2.0, 0.0], [0.0, 0.0]], det, 1.0, "greedy")) == [(0, 0)]


@pytest.mark.parametrize("method", METHODS)
def test_exactly_at_radius_matches(method):
    gt, det = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])  # distance exactly 5
    m = match_points(gt, det, 5.0, method)
    assert _pairs(m) == [(0, 0)]
    assert m.distance.tolist() == [5.0]
    assert _pairs(match_points(gt, det, np.nextafter(5.0, 0.0), method)) == []


@pytest.mark.parametrize("method", METHODS)
def test_zero_radius_matches_only_coincident_points(method):
    m = match_points([[1.0, 1.0], [2.0, 2.0]], [[2.0, 2.0], [1.0, 1.5]], 0.0, method)
    assert _pairs(m) == [(1, 0)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "gt, det",
    [
        (np.empty((0, 2)), np.array([[1.0, 2.0]])),  # empty ground truth
        (np.array([[1.0, 2.0]]), np.empty((0, 2))),  # empty detections
        (np.empty((0, 2)), np.empty((0, 2))),  # both empty
        ([], []),  # plain empty lists
    ],
    ids=["empty_gt", "empty_det", "both_empty", "empty_lists"],
)
def test_empty_inputs(method, gt, det):
    m = match_points(gt, det, 8.0, method)
    for arr, dtype in zip(m, (np.int64, np.int64, np.float64), strict=True):
        assert arr.shape == (0,)
        assert arr.dtype == dtype


@pytest.mark.parametrize("method", METHODS)
def test_no_pair_within_radius(method):
    m = match_points([[0.0, 0.0]], [[100.0, 0.0], [0.0, 100.0]], 10.0, method)
    assert m.gt_idx.shape == m.det_idx.shape == (0,)


@pytest.mark.parametrize("method", METHODS)
def test_inputs_are_not_modified(method):
    gt = np.array([[0, 0], [10, 0]], dtype=np.int32)
    det = np.array([[4.0, 0.0], [-5.0, 0.0]])
    gt0, det0 = gt.copy(), det.copy()
    match_points(gt, det, 7, method)
    np.testing.assert_array_equal(gt, gt0)
    np.testing.assert_array_equal(det, det0)
    assert gt.dtype == np.int32


def test_method_accepts_enum():
    assert _pairs(match_points([[0, 0]], [[1, 0]], 2, MatchingMethod.GREEDY)) == [(0, 0)]
    assert str(MatchingMethod.OPTIMAL) == "optimal"


def test_pairwise_distances():
    d = pairwise_distances([[0, 0], [3, 0]], [[0, 4], [3, 0], [6, 4]])
    np.testing.assert_array_equal(d, [[4.0, 3.0, np.hypot(6, 4)], [5.0, 0.0, 5.0]])
    assert pairwise_distances(np.empty((0, 2)), [[1, 1]]).shape == (0, 1)


@pytest.mark.parametrize(
    "gt, det, match",
    [
        (np.zeros((3, 3)), np.zeros((1, 2)), r"gt must be an \(N, 2\) array .* got shape \(3, 3\)"),
        (np.zeros((1, 2)), np.zeros(4), r"det must be an \(N, 2\) array .* got shape \(4,\)"),
        (np.zeros((1, 2)), np.zeros((2, 1, 2)), r"det .* got shape \(2, 1, 2\)"),
        (np.zeros((0, 3)), np.zeros((1, 2)), r"gt .* got shape \(0, 3\)"),
        (np.array([[np.nan, 0.0]]), np.zeros((1, 2)), r"gt holds non-finite"),
    ],
)
def test_bad_shapes_name_the_shape(gt, det, match):
    with pytest.raises(ValueError, match=match):
        match_points(gt, det, 1.0)


def test_bad_arguments():
    with pytest.raises(TypeError, match="gt must hold real numbers, got dtype <U1"):
        match_points([["a", "b"]], [[0, 0]], 1.0)
    with pytest.raises(ValueError, match=r"radius must be a finite number >= 0 \(pixels\), got -1.0"):
        match_points([[0, 0]], [[0, 0]], -1)
    with pytest.raises(ValueError, match="radius .* got nan"):
        match_points([[0, 0]], [[0, 0]], float("nan"))
    with pytest.raises(ValueError, match=r"method must be one of \['greedy', 'optimal'\], got 'hungarian'"):
        match_points([[0, 0]], [[0, 0]], 1.0, method="hungarian")


# --- oracle -----------------------------------------------------------------------------------------


def _brute_force(gt: np.ndarray, det: np.ndarray, radius: float) -> tuple[int, float]:
    """Maximum number of pairs, and the smallest total distance among matchings with that many pairs.

    Enumerates, for every ground-truth point, "unmatched" or each detection (tiny sizes only).
    """
    d = np.sqrt(((gt[:, None, :] - det[None, :, :]) ** 2).sum(-1))
    best = (0, 0.0)
    for choice in itertools.product([None, *range(len(det))], repeat=len(gt)):
        used = [j for j in choice if j is not None]
        if len(used) != len(set(used)):
            continue
        if any(j is not None and d[i, j] > radius for i, j in enumerate(choice)):
            continue
        k, total = len(used), sum(d[i, j] for i, j in enumerate(choice) if j is not None)
        if k > best[0] or (k == best[0] and total < best[1]):
            best = (k, total)
    return best


def _reference_greedy(gt: np.ndarray, det: np.ndarray, radius: float) -> list[tuple[int, int]]:
    """The challenge scorers' loop, written naively."""
    used: set[int] = set()
    pairs = []
    for i, g in enumerate(gt):
        best_j, best_d = None, None
        for j, p in enumerate(det):
            dist = float(np.hypot(*(g - p)))
            if j in used or dist > radius:
                continue
            if best_d is None or dist < best_d:
                best_j, best_d = j, dist
        if best_j is not None:
            used.add(best_j)
            pairs.append((i, best_j))
    return pairs


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("radius", [2.0, 4.0, 7.0])
def test_against_brute_force(seed, radius):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        n, m = rng.integers(0, 6, size=2)
        # integer grid points make exact ties and exactly-at-radius pairs common
        gt = rng.integers(0, 12, size=(n, 2)).astype(np.float64)
        det = rng.integers(0, 12, size=(m, 2)).astype(np.float64)
        opt = match_points(gt, det, radius, "optimal")
        greedy = match_points(gt, det, radius, "greedy")
        k_best, total_best = _brute_force(gt, det, radius)
        assert len(opt.gt_idx) == k_best
        assert opt.distance.sum() == pytest.approx(total_best, abs=1e-9)
        assert len(greedy.gt_idx) <= len(opt.gt_idx)
        assert _pairs(greedy) == _reference_greedy(gt, det, radius)
        for res in (opt, greedy):  # one-to-one, within the radius, sorted by ground truth
            assert len(set(res.gt_idx.tolist())) == len(set(res.det_idx.tolist())) == len(res.gt_idx)
            assert np.all(res.distance <= radius)
            assert np.all(np.diff(res.gt_idx) > 0)

"""One-to-one matching of detected points to ground-truth points within a radius.

Points are ``(x, y)`` = (column, row) in pixels, as everywhere in ``mssn_monai``; the radius is in the
same pixels (callers convert micrometres with the image's spacing). A detection *matches* a
ground-truth point when their Euclidean distance is ``<= radius`` (a pair exactly at the radius counts).
Each ground-truth point matches at most one detection and vice versa.

Two rules are offered, because published numbers use both:

- ``optimal``: a maximum-cardinality matching (the most true positives any one-to-one assignment can
  give); among the maximum matchings, one with the smallest total distance. Solved with
  :func:`scipy.optimize.linear_sum_assignment`.
- ``greedy``: the rule of the challenge scorers (ICPR 2012, MITOS-ATYPIA-14, AMIDA13): each
  ground-truth point, in input order, takes its nearest still-unused detection within the radius.
  It can find fewer matches than ``optimal``, never more.

Pure numpy/scipy: no MONAI, no file IO.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["MatchingMethod", "PointMatch", "pairwise_distances", "match_points"]


class MatchingMethod(str, Enum):
    """How :func:`match_points` pairs ground truth with detections."""

    OPTIMAL = "optimal"
    GREEDY = "greedy"

    def __str__(self) -> str:
        return self.value


class PointMatch(NamedTuple):
    """Result of :func:`match_points`: ``K`` matched pairs, sorted by ground-truth index.

    Attributes:
        gt_idx: ``(K,)`` int64 row indices into the ground-truth array.
        det_idx: ``(K,)`` int64 row indices into the detection array.
        distance: ``(K,)`` float64 distance of each pair, in pixels (``<= radius``).
    """

    gt_idx: np.ndarray
    det_idx: np.ndarray
    distance: np.ndarray


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    """Validate an ``(N, 2)`` point array (shape ``(0,)``, e.g. ``[]``, means no points); return a float64 copy."""
    arr = np.asarray(points)
    if arr.shape in ((0,), (0, 2)):
        return np.empty((0, 2), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of (x, y) points, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)  # a copy: the caller's array is never modified
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite coordinates (NaN or inf)")
    return arr


def pairwise_distances(gt: np.ndarray, det: np.ndarray) -> np.ndarray:
    """Euclidean distances between every ground-truth and every detected point.

    Args:
        gt: ``(N, 2)`` points ``(x, y)`` in pixels.
        det: ``(M, 2)`` points ``(x, y)`` in pixels.

    Returns:
        ``(N, M)`` float64 distances in pixels.
    """
    gt = _as_points(gt, "gt")
    det = _as_points(det, "det")
    diff = gt[:, None, :] - det[None, :, :]
    return np.sqrt(np.einsum("nmk,nmk->nm", diff, diff))


def _empty_match() -> PointMatch:
    return PointMatch(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))


def _optimal(dist: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    allowed = dist <= radius
    # Rows and columns with no admissible partner cannot be matched; dropping them keeps the
    # assignment problem small (a detector's far-away false positives cost nothing here).
    rows = np.flatnonzero(allowed.any(axis=1))
    cols = np.flatnonzero(allowed.any(axis=0))
    if rows.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    sub_allowed = allowed[np.ix_(rows, cols)]
    # Cardinality first: an assignment with one more admissible pair saves ``big`` and loses at most
    # ``k * radius`` of distance (k = min(N, M) admissible pairs, each <= radius), so with
    # big > k * radius every minimum-cost assignment is a maximum matching, and among those the
    # total distance is minimal. The +1 keeps big > 0 when radius == 0.
    big = (min(sub_allowed.shape) + 1) * (radius + 1.0)
    cost = np.where(sub_allowed, dist[np.ix_(rows, cols)], big)
    r, c = linear_sum_assignment(cost)
    keep = sub_allowed[r, c]
    return rows[r[keep]].astype(np.int64), cols[c[keep]].astype(np.int64)


def _greedy(dist: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    n_det = dist.shape[1]
    used = np.zeros(n_det, dtype=bool)
    gt_idx: list[int] = []
    det_idx: list[int] = []
    for i, row in enumerate(dist):
        cand = np.where((row <= radius) & ~used, row, np.inf)
        j = int(np.argmin(cand))  # first minimum: ties in distance go to the lowest detection index
        if np.isfinite(cand[j]):
            used[j] = True
            gt_idx.append(i)
            det_idx.append(j)
    return np.asarray(gt_idx, dtype=np.int64), np.asarray(det_idx, dtype=np.int64)


def match_points(
    gt: np.ndarray,
    det: np.ndarray,
    radius: float,
    method: MatchingMethod | str = MatchingMethod.OPTIMAL,
) -> PointMatch:
    """Match detections to ground-truth points one-to-one within ``radius``.

    A pair is admissible when its Euclidean distance is ``<= radius`` (exactly at the radius counts).

    - ``"optimal"``: a maximum number of pairs; among all maximum matchings, one with the smallest
      total distance (remaining exact ties are broken by scipy's solver, deterministically).
    - ``"greedy"``: ground-truth points are visited in input order; each takes the nearest unused
      detection within the radius. Equal distances go to the lowest detection index.

    Args:
        gt: ``(N, 2)`` ground-truth points ``(x, y)`` = (column, row) in pixels. ``N`` may be 0.
        det: ``(M, 2)`` detected points ``(x, y)`` in pixels (drop scores first). ``M`` may be 0.
        radius: match radius in pixels, finite and ``>= 0``.
        method: ``"optimal"`` or ``"greedy"`` (see above).

    Returns:
        :class:`PointMatch` ``(gt_idx, det_idx, distance)``, each of shape ``(K,)``, sorted by
        ``gt_idx``; ``K = 0`` when either input is empty. The inputs are not modified.

    Raises:
        ValueError: ``gt`` or ``det`` is not ``(N, 2)`` or holds NaN/inf; ``radius`` is negative or not
            finite; ``method`` is unknown.
        TypeError: a point array is not numeric.

    Example::

        >>> gt, det = [[0, 0], [10, 0]], [[4, 0], [-5, 0]]
        >>> m = match_points(gt, det, radius=7, method="optimal")
        >>> m.gt_idx.tolist(), m.det_idx.tolist(), m.distance.tolist()
        ([0, 1], [1, 0], [5.0, 6.0])
        >>> match_points(gt, det, radius=7, method="greedy").det_idx.tolist()  # gt 0 takes the nearer det 0
        [0]
    """
    methods = {m.value for m in MatchingMethod}
    method_str = method.value if isinstance(method, MatchingMethod) else method
    if method_str not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    radius = float(radius)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0 (pixels), got {radius!r}")
    gt = _as_points(gt, "gt")
    det = _as_points(det, "det")
    if len(gt) == 0 or len(det) == 0:
        return _empty_match()
    dist = pairwise_distances(gt, det)
    if method_str == MatchingMethod.OPTIMAL.value:
        gi, di = _optimal(dist, radius)
    else:
        gi, di = _greedy(dist, radius)
    order = np.argsort(gi, kind="stable")
    gi, di = gi[order], di[order]
    return PointMatch(gi, di, dist[gi, di])

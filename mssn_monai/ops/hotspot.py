"""The hotspot: the placement of a window of fixed size and shape that holds the most points, found exactly.

Points are ``(x, y)`` in pixels (the package's convention); sizes are in the same pixels (callers convert
millimetres with the slide's spacing). A point counts as inside when it lies in the *closed* window (on
the boundary counts), with a relative tolerance of ``1e-9`` for float rounding.

Exact methods (no grid: the answer is the true maximum over all placements):

- **Circle** of radius ``r`` (:func:`best_circle`). If an optimal disk holds ``k >= 2`` points, it can be
  moved, keeping them inside, until two of them lie on its boundary (translate it towards one point until
  that point is on the boundary, then rotate it about that point until a second one is). Its centre is
  then one of the (at most two) points at distance exactly ``r`` from both, which exist for pairs at
  distance ``<= 2 r``. So the best count is the maximum over those candidate centres (and over the
  points themselves, for ``k = 1``). Pairs are found with a k-d tree; each candidate is counted with a
  tree query: ``O(P log n)`` for ``P`` close pairs.
- **Square** of side ``s``, axis-aligned (:func:`best_square`). An optimal square can be moved right and
  down until a point lies on its left edge and a point on its top edge, so its corner is ``(x_i, y_j)``
  for some points ``i, j``: for each point's ``x`` as the left edge, the points in the strip
  ``[x, x + s]`` are counted in every ``[y, y + s]`` window by a sorted sweep, ``O(n m log m)`` for ``m``
  points per strip.

The window returned is the optimum with the smallest candidate index (deterministic); several
placements may hold the same count.

numpy / scipy only; no IO.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["Hotspot", "best_circle", "best_square", "count_in_circle", "count_in_square"]

_RTOL = 1e-9


class Hotspot(NamedTuple):
    """The best window: ``count`` points inside; ``centre`` ``(x, y)``; ``inside`` the indices of those points."""

    count: int
    centre: tuple[float, float]
    inside: np.ndarray


def _as_points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f"points must be (N, 2+) rows x, y, got shape {pts.shape}.")
    pts = pts[:, :2]
    if not np.isfinite(pts).all():
        raise ValueError("points must be finite.")
    return pts


def _check_size(name: str, value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 px, got {value!r}.")
    return value


def count_in_circle(points: np.ndarray, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Indices of the points in the closed disk (brute force; the oracle of :func:`best_circle`)."""
    pts = _as_points(points)
    d = np.hypot(pts[:, 0] - centre[0], pts[:, 1] - centre[1])
    return np.nonzero(d <= radius * (1 + _RTOL))[0]


def count_in_square(points: np.ndarray, corner: tuple[float, float], side: float) -> np.ndarray:
    """Indices of the points in the closed square ``[x0, x0 + side] x [y0, y0 + side]`` (brute force)."""
    pts = _as_points(points)
    tol = side * _RTOL
    x0, y0 = corner
    in_x = (pts[:, 0] >= x0 - tol) & (pts[:, 0] <= x0 + side + tol)
    ok = in_x & (pts[:, 1] >= y0 - tol) & (pts[:, 1] <= y0 + side + tol)
    return np.nonzero(ok)[0]


def best_circle(points: np.ndarray, radius: float) -> Hotspot:
    """The disk of radius ``radius`` holding the most points (exact; see the module docstring).

    Args:
        points: ``(N, 2+)`` rows ``x, y`` (further columns, e.g. scores, are ignored).
        radius: in the points' pixels, > 0.

    Returns:
        :class:`Hotspot`; with no points, count 0 and centre ``(nan, nan)``.

    Example:
        >>> best_circle(np.array([[0, 0], [10, 0], [30, 0]]), radius=5).count
        2
    """
    pts = _as_points(points)
    r = _check_size("radius", radius)
    n = len(pts)
    if n == 0:
        return Hotspot(0, (float("nan"), float("nan")), np.zeros(0, dtype=np.int64))
    tree = cKDTree(pts)
    pairs = tree.query_pairs(2 * r * (1 + _RTOL), output_type="ndarray")
    centres = [pts]
    if len(pairs):
        a, b = pts[pairs[:, 0]], pts[pairs[:, 1]]
        mid = (a + b) / 2
        half = (b - a) / 2
        d2 = (half**2).sum(axis=1)
        h = np.sqrt(np.clip(r * r - d2, 0.0, None))  # distance of the centres from the midpoint
        norm = np.sqrt(d2)
        norm[norm == 0] = 1.0
        perp = np.stack([-half[:, 1], half[:, 0]], axis=1) / norm[:, None]
        centres += [mid + h[:, None] * perp, mid - h[:, None] * perp]
    cand = np.concatenate(centres)
    counts = tree.query_ball_point(cand, r * (1 + _RTOL), return_length=True)
    best = int(np.argmax(counts))  # the first maximum: deterministic
    centre = (float(cand[best, 0]), float(cand[best, 1]))
    inside = count_in_circle(pts, centre, r)
    return Hotspot(len(inside), centre, inside)


def best_square(points: np.ndarray, side: float) -> Hotspot:
    """The axis-aligned square of side ``side`` holding the most points (exact; see the module docstring).

    Args:
        points: ``(N, 2+)`` rows ``x, y``.
        side: in the points' pixels, > 0.

    Returns:
        :class:`Hotspot` whose ``centre`` is the square's centre; with no points, count 0 and ``(nan, nan)``.
    """
    pts = _as_points(points)
    s = _check_size("side", side)
    if len(pts) == 0:
        return Hotspot(0, (float("nan"), float("nan")), np.zeros(0, dtype=np.int64))
    tol = s * _RTOL
    xs = np.sort(pts[:, 0])
    best_count, best_corner = -1, (0.0, 0.0)
    for x0 in np.unique(xs):
        in_strip = (pts[:, 0] >= x0 - tol) & (pts[:, 0] <= x0 + s + tol)
        ys = np.sort(pts[in_strip, 1])
        if len(ys) <= best_count:
            continue
        # for each point's y as the top edge: how many ys lie in [y, y + s]
        counts = np.searchsorted(ys, ys + s + tol, side="right") - np.searchsorted(ys, ys - tol, side="left")
        j = int(np.argmax(counts))
        if counts[j] > best_count:
            best_count, best_corner = int(counts[j]), (float(x0), float(ys[j]))
    inside = count_in_square(pts, best_corner, s)
    return Hotspot(len(inside), (best_corner[0] + s / 2, best_corner[1] + s / 2), inside)

"""Candidate points from a dense probability map: threshold, local maxima, plateaus, spacing.

The map is the FNR output (``mssn_monai.networks.fnr``): cell ``[row, col]`` scores the patch centred at
pixel ``(x, y) = (stride * col, stride * row)``, ``stride`` = 4 by default. Points come back as
``(x, y, score)`` in those input pixels, the package's convention.

:func:`find_peaks` is built from one-step helpers, in the manner of ``skimage.feature.peak_local_max``:

1. :func:`_peak_mask`: cells with ``score >= threshold`` that equal the maximum of the map over a disk of
   radius ``min_distance_px`` around them (cells outside the map do not count, so border cells can be peaks).
2. :func:`_plateau_representatives`: each 8-connected set of equal-valued peak cells (a plateau, common
   where probabilities saturate at 1.0) gives one point: its cell nearest the plateau's centroid, ties to
   the first in raster order.
3. :func:`_greedy_spacing`: in order of descending score (ties in raster order), a point is kept unless
   it lies closer than ``min_distance_px`` to a point already kept.

Distances are Euclidean, in input pixels, and "closer than" is strict: two outputs are always at least
``min_distance_px`` apart. The disk of step 1 uses the same rule, so a cell is only suppressed by a
higher cell that step 3 would also have let suppress it (a square ``(2r+1)`` window would also drop
diagonal neighbours that are farther than ``min_distance_px``).

numpy / scipy only (torch tensors are read through ``.detach().cpu().numpy()``); no IO.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["find_peaks"]


def _as_map(prob_map: Any) -> np.ndarray:
    """A float64 copy of a ``(h, w)`` array or tensor (the caller's map is never written)."""
    if hasattr(prob_map, "detach"):  # torch.Tensor, without importing torch here
        prob_map = prob_map.detach().cpu().numpy()
    arr = np.array(prob_map, dtype=np.float64)  # always a copy
    if arr.ndim != 2:
        raise ValueError(f"prob_map must be a 2-D (h, w) map, got shape {arr.shape}.")
    return arr


def _disk_footprint(min_distance_px: float, stride: int) -> np.ndarray:
    """Cells ``(dy, dx)`` with ``stride * hypot(dy, dx) < min_distance_px``, plus the centre cell."""
    r = max(math.ceil(min_distance_px / stride) - 1, 0)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    footprint = (dy**2 + dx**2) * stride**2 < min_distance_px**2
    footprint[r, r] = True
    return footprint


def _peak_mask(scores: np.ndarray, threshold: float, footprint: np.ndarray) -> np.ndarray:
    """``(h, w)`` bool: cells at or above ``threshold`` that equal the maximum over ``footprint`` around them.

    NaN cells are never peaks and never suppress others.
    """
    work = np.where(np.isnan(scores), -np.inf, scores)
    local_max = ndimage.maximum_filter(work, footprint=footprint, mode="constant", cval=-np.inf)
    return (work >= threshold) & (work == local_max)


def _plateau_representatives(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One cell per 8-connected group of equal-valued ``mask`` cells.

    Returns:
        ``(rows, cols)``, int64 arrays ``(K,)``, one cell per plateau: the plateau cell nearest to the
        plateau's centroid (compared in exact integer arithmetic), ties to the first in raster order;
        sorted by raster order.
    """
    rows, cols = np.nonzero(mask)  # raster order
    n = rows.size
    if n == 0:
        return rows.astype(np.int64), cols.astype(np.int64)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[rows, cols] = np.arange(n)
    h, w = mask.shape
    src, dst = [], []
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each 8-neighbour pair once
        r2, c2 = rows + dr, cols + dc
        ok = (r2 < h) & (c2 >= 0) & (c2 < w)
        a, r2, c2 = np.nonzero(ok)[0], r2[ok], c2[ok]
        b = index[r2, c2]
        same = (b >= 0) & (scores[rows[a], cols[a]] == scores[r2, c2])
        src.append(a[same])
        dst.append(b[same])
    src_all, dst_all = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(src_all.size, dtype=np.int8), (src_all, dst_all)), shape=(n, n))
    n_groups, label = connected_components(graph, directed=False)
    size = np.bincount(label, minlength=n_groups)
    sum_r = np.bincount(label, weights=rows, minlength=n_groups).astype(np.int64)
    sum_c = np.bincount(label, weights=cols, minlength=n_groups).astype(np.int64)
    if int(size.max()) * max(h, w) < 2**31:  # size^2 * squared distance to the centroid, exact in int64
        dist = (size[label] * rows - sum_r[label]) ** 2 + (size[label] * cols - sum_c[label]) ** 2
    else:  # a plateau of millions of cells: int64 could overflow, compare in float64
        dist = (rows - sum_r[label] / size[label]) ** 2 + (cols - sum_c[label] / size[label]) ** 2
    order = np.lexsort((np.arange(n), dist, label))  # by label, then distance, then raster order
    first = order[np.r_[True, label[order][1:] != label[order][:-1]]]
    first.sort()
    return rows[first].astype(np.int64), cols[first].astype(np.int64)


def _greedy_spacing(points: np.ndarray, min_distance_px: float) -> np.ndarray:
    """Indices of ``points`` ``(N, 2)`` kept by greedy suppression in the given order: a point is dropped
    when it is closer than ``min_distance_px`` to a point kept before it.

    Only pairs closer than ``min_distance_px`` are visited (found with a KD-tree), so the cost grows with
    the number of such pairs, not with ``N ** 2``; after :func:`_peak_mask` only points of equal score
    can form one.
    """
    n = points.shape[0]
    if n < 2 or min_distance_px <= 0:
        return np.arange(n, dtype=np.int64)
    pairs = cKDTree(points).query_pairs(r=min_distance_px, output_type="ndarray")  # distance <= r
    if pairs.size:
        d2 = ((points[pairs[:, 0]] - points[pairs[:, 1]]) ** 2).sum(axis=1)
        pairs = pairs[d2 < min_distance_px**2]  # strict: exactly min_distance_px apart is allowed
    if pairs.size == 0:
        return np.arange(n, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    pairs.sort(axis=1)  # (earlier, later) in the given order
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    for i, j in pairs[order]:
        if keep[i]:
            keep[j] = False
    return np.nonzero(keep)[0]


def find_peaks(prob_map: Any, threshold: float, min_distance_px: float, stride: int = 4) -> np.ndarray:
    """Candidate points: thresholded local maxima of a dense map, one per plateau, at least ``min_distance_px`` apart.

    Args:
        prob_map: ``(h, w)`` numpy array or torch tensor of scores (probabilities); not modified. NaN
            cells are ignored.
        threshold: minimum score of a peak (inclusive: ``score >= threshold``).
        min_distance_px: minimum Euclidean distance between two output points, in input pixels
            (points closer than this suppress the lower one; exactly this far apart both stay). ``0``
            keeps every cell that passes the threshold, except duplicate plateau cells.
        stride: input pixels per map cell (the FNR output stride, 4).

    Returns:
        ``(N, 3)`` float64 array of ``(x, y, score)`` with ``x = stride * col`` and ``y = stride * row``
        in input pixels, sorted by descending score, ties in raster order (row, then column) of the map.
        ``(0, 3)`` when there is no peak.

    Raises:
        ValueError: when ``prob_map`` is not 2-D (the message gives its shape), ``threshold`` is NaN,
            ``min_distance_px`` is negative or not finite, or ``stride`` is not a positive int.

    Example:
        >>> m = np.array([[0.0, 0.1, 0.0, 0.0, 0.0],
        ...               [0.1, 0.9, 0.2, 0.0, 0.8],
        ...               [0.0, 0.2, 0.0, 0.0, 0.0]])
        >>> find_peaks(m, threshold=0.5, min_distance_px=8)
        array([[ 4. ,  4. ,  0.9],
               [16. ,  4. ,  0.8]])
        >>> find_peaks(m, threshold=0.5, min_distance_px=13)  # 12 px apart: only the higher survives
        array([[4. , 4. , 0.9]])
    """
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}.")
    if not (math.isfinite(min_distance_px) and min_distance_px >= 0):
        raise ValueError(f"min_distance_px must be a finite number >= 0, got {min_distance_px!r}.")
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got nan.")
    scores = _as_map(prob_map)
    if scores.size == 0:
        return np.empty((0, 3), dtype=np.float64)
    mask = _peak_mask(scores, float(threshold), _disk_footprint(float(min_distance_px), int(stride)))
    rows, cols = _plateau_representatives(scores, mask)
    values = scores[rows, cols]
    order = np.argsort(-values, kind="stable")  # representatives are in raster order already
    points = np.stack([cols[order] * stride, rows[order] * stride], axis=1).astype(np.float64)
    keep = _greedy_spacing(points, float(min_distance_px))
    return np.column_stack([points[keep], values[order][keep]]).reshape(-1, 3)

"""Detection metrics: true/false positives within a radius in micrometres, precision/recall/F1,
threshold sweeps and mitotic counts per mm^2.

Points are ``(x, y)`` = (column, row) in level-0 pixels. The match radius is given in micrometres and
converted once per image with that image's ``spacing`` (um/px): ``radius_px = radius_um / spacing``.
Matching itself is :func:`mssn_monai.ops.match_points` (a detection matches a ground-truth point at
distance ``<= radius``; one-to-one; ``optimal`` or ``greedy``).

Conventions (chosen so that every quantity is defined, and documented once here):

- Zero division: ``precision = 1`` when there are no detections (``tp + fp == 0``), ``recall = 1`` when
  there is no ground truth (``tp + fn == 0``), and ``F1 = 2 tp / (2 tp + fp + fn)``, which is ``1`` when
  all three counts are 0 (nothing to find, nothing found) and otherwise equals the harmonic mean of
  precision and recall whenever that is defined.
- Aggregation over images is *micro*: TP/FP/FN are summed over the images first, then turned into
  precision/recall/F1, as the ICPR 2012, MITOS-ATYPIA-14 and AMIDA13/TUPAC16 scorers do. Per-image values
  are reported as well.
- Thresholds: a detection is kept when ``score >= threshold``.
- Sweep: the thresholds are the distinct detection scores; when there are more than ``max_thresholds``
  (101 by default) of them, ``max_thresholds`` scores are taken at evenly spaced quantiles of all
  detection scores (always including the lowest and the highest score), then de-duplicated. The sweep
  ignores ``threshold``. Matching is recomputed for every threshold (an optimal matching at one threshold
  is not a subset of the one at a lower threshold), but only over detections within the radius of some
  ground-truth point and only where the threshold changes which of them are kept. The best threshold
  maximises F1; among equal F1 the lowest threshold wins (the one with the highest recall).
- Counts per mm^2: ``area_mm2 = width * height * spacing**2 / 1e6`` with width and height in pixels.

Pure maths: nothing here reads or writes files (:mod:`mssn_monai.evaluation` does, for the
``evaluate`` command and the bundle's ``evaluate.json``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from mssn_monai.ops.matching import MatchingMethod, match_points, pairwise_distances

__all__ = [
    "detection_uncertainty",
    "DetectionCounts",
    "detection_counts",
    "sum_counts",
    "precision_recall_f1",
    "prf_arrays",
    "image_area_mm2",
    "count_per_mm2",
    "select_thresholds",
    "sweep_counts",
    "best_threshold",
]

logger = logging.getLogger(__name__)


class DetectionCounts(NamedTuple):
    """True positives, false positives and false negatives (integers >= 0)."""

    tp: int
    fp: int
    fn: int


def detection_counts(
    gt: np.ndarray, det: np.ndarray, radius: float, method: MatchingMethod | str = MatchingMethod.OPTIMAL
) -> DetectionCounts:
    """Count TP/FP/FN of one image by matching ``det`` to ``gt`` one-to-one within ``radius``.

    Args:
        gt: ``(N, 2)`` ground-truth points ``(x, y)`` in pixels.
        det: ``(M, 2)`` detected points ``(x, y)`` in pixels (already thresholded, scores dropped).
        radius: match radius in pixels (a pair at distance ``<= radius`` matches).
        method: ``"optimal"`` or ``"greedy"``, see :func:`mssn_monai.ops.match_points`.

    Returns:
        ``DetectionCounts(tp=K, fp=M - K, fn=N - K)`` with ``K`` matched pairs.
    """
    m = match_points(gt, det, radius, method)
    k = len(m.gt_idx)
    return DetectionCounts(k, len(np.asarray(det).reshape(-1, 2)) - k, len(np.asarray(gt).reshape(-1, 2)) - k)


def sum_counts(counts: Iterable[DetectionCounts | Sequence[int]]) -> DetectionCounts:
    """Micro aggregation: sum ``(tp, fp, fn)`` over images (feed the result to :func:`precision_recall_f1`)."""
    tp = fp = fn = 0
    for c in counts:
        tp, fp, fn = tp + int(c[0]), fp + int(c[1]), fn + int(c[2])
    return DetectionCounts(tp, fp, fn)


def prf_arrays(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`precision_recall_f1` over arrays of counts (same shapes in and out)."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 1.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
    return precision, recall, f1


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts, defined for zeros.

    ``precision = tp / (tp + fp)``, or 1.0 when there are no detections; ``recall = tp / (tp + fn)``, or 1.0
    when there is no ground truth; ``F1 = 2 tp / (2 tp + fp + fn)``, or 1.0 when all counts are 0.

    Args:
        tp: true positives (matched detections).
        fp: false positives (unmatched detections).
        fn: false negatives (unmatched ground-truth points).

    Raises:
        ValueError: a count is negative or not an integer.

    Example::

        >>> precision_recall_f1(3, 1, 2)
        (0.75, 0.6, 0.6666666666666666)
        >>> precision_recall_f1(0, 0, 0)
        (1.0, 1.0, 1.0)
    """
    for name, v in (("tp", tp), ("fp", fp), ("fn", fn)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    p, r, f = prf_arrays(np.asarray(tp), np.asarray(fp), np.asarray(fn))
    return float(p), float(r), float(f)


def image_area_mm2(width: int, height: int, spacing: float) -> float:
    """Area of a ``width`` x ``height`` pixel field in mm^2 at ``spacing`` um/px: ``W * H * spacing**2 / 1e6``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width!r}, height={height!r}")
    if not math.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"spacing must be a positive number (um/px), got {spacing!r}")
    return float(width) * float(height) * float(spacing) * float(spacing) / 1e6  # inf, not OverflowError


def count_per_mm2(count: int, area_mm2: float) -> float:
    """Density of ``count`` objects over ``area_mm2`` square millimetres."""
    if area_mm2 <= 0:
        raise ValueError(f"area_mm2 must be > 0, got {area_mm2!r}")
    return count / area_mm2


def select_thresholds(scores: np.ndarray, max_thresholds: int = 101) -> np.ndarray:
    """Score thresholds for a sweep: the distinct scores, or at most ``max_thresholds`` of them.

    When there are more than ``max_thresholds`` distinct scores, the scores at ``max_thresholds`` evenly
    spaced quantiles of all detection scores are taken (each one an actual score, the lowest and the
    highest included), then de-duplicated, so consecutive thresholds drop similar numbers of detections.

    Args:
        scores: ``(M,)`` detection scores of all images.
        max_thresholds: cap on the number of thresholds, ``>= 2``.

    Returns:
        ``(T,)`` float64 thresholds, strictly increasing; ``T = 0`` when ``scores`` is empty.
    """
    if max_thresholds < 2:
        raise ValueError(f"max_thresholds must be >= 2, got {max_thresholds!r}")
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    distinct = np.unique(s)
    if len(distinct) <= max_thresholds:
        return distinct
    idx = np.round(np.linspace(0, len(s) - 1, max_thresholds)).astype(np.int64)
    return np.unique(s[idx])


def _tp_at_thresholds(
    gt: np.ndarray, det: np.ndarray, scores: np.ndarray, radius: float, method: str, thresholds: np.ndarray
) -> np.ndarray:
    """True positives of one image at every threshold (detections with ``score >= t`` kept).

    Only detections within ``radius`` of some ground-truth point can ever match, and dropping the others
    changes neither rule's result (greedy keeps the relative order of the rest). The set kept from those
    few changes only at their distinct scores, so the matching is computed once per distinct set that
    some threshold selects: at most ``min(T, distinct scores of matchable detections)`` matchings.

    Args:
        gt: ``(N, 2)`` ground-truth points in pixels.
        det: ``(M, 2)`` detected points in pixels.
        scores: ``(M,)`` detection scores.
        radius: match radius in pixels.
        method: ``"optimal"`` or ``"greedy"``.
        thresholds: ``(T,)`` score thresholds.

    Returns:
        ``(T,)`` int64 true-positive counts.
    """
    tp = np.zeros(len(thresholds), dtype=np.int64)
    if len(gt) == 0 or len(det) == 0:
        return tp
    near = (pairwise_distances(gt, det) <= radius).any(axis=0)
    det, scores = det[near], scores[near]
    levels = np.unique(scores)
    first_kept = np.searchsorted(levels, thresholds, side="left")  # threshold t keeps levels[first_kept:]
    previous = -1
    for k in np.unique(first_kept[first_kept < len(levels)])[::-1]:  # from the highest threshold down
        if method == MatchingMethod.OPTIMAL.value and previous == len(gt):
            n = len(gt)  # a maximum matching cannot shrink when detections are added
        else:
            n = len(match_points(gt, det[scores >= levels[k]], radius, method).gt_idx)
        tp[first_kept == k] = previous = n
    return tp


def sweep_counts(
    gts: Sequence[np.ndarray],
    dets: Sequence[np.ndarray],
    radii: Sequence[float],
    thresholds: np.ndarray,
    method: MatchingMethod | str = MatchingMethod.OPTIMAL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Micro-summed TP/FP/FN over images at every threshold (detections with ``score >= t`` kept).

    Args:
        gts: per image, ``(N_i, 2)`` ground-truth points in pixels.
        dets: per image, ``(M_i, 3)`` detections ``(x, y, score)`` in pixels.
        radii: per image, match radius in pixels.
        thresholds: ``(T,)`` score thresholds.
        method: ``"optimal"`` or ``"greedy"``.

    Returns:
        ``(tp, fp, fn)``, each a ``(T,)`` int64 array. The result equals thresholding each image and
        calling :func:`detection_counts` at every threshold, without redoing the matching for
        thresholds that cannot change it.
    """
    if not len(gts) == len(dets) == len(radii):
        raise ValueError(
            f"gts, dets and radii need one entry per image, got {len(gts)}, {len(dets)} and {len(radii)} entries"
        )
    method_str = str(MatchingMethod(method))
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    tp = np.zeros(len(t), dtype=np.int64)
    fp = np.zeros(len(t), dtype=np.int64)
    fn = np.zeros(len(t), dtype=np.int64)
    for gt, det, radius in zip(gts, dets, radii, strict=True):
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
        det = np.asarray(det, dtype=np.float64).reshape(-1, 3)
        tp_img = _tp_at_thresholds(gt, det[:, :2], det[:, 2], radius, method_str, t)
        kept = len(det) - np.searchsorted(np.sort(det[:, 2]), t, side="left")
        tp += tp_img
        fp += kept - tp_img
        fn += len(gt) - tp_img
    return tp, fp, fn


def best_threshold(thresholds: np.ndarray, f1: np.ndarray) -> tuple[float | None, float | None]:
    """The threshold with the highest F1; among equal F1 the lowest threshold.

    Args:
        thresholds: ``(T,)`` increasing thresholds.
        f1: ``(T,)`` F1 at each threshold.

    Returns:
        ``(threshold, f1)``, or ``(None, None)`` when there are no thresholds.
    """
    thresholds, f1 = np.asarray(thresholds, dtype=np.float64), np.asarray(f1, dtype=np.float64)
    if len(thresholds) == 0:
        return None, None
    order = np.argsort(thresholds, kind="stable")
    i = order[int(np.argmax(f1[order]))]  # argmax takes the first maximum, i.e. the lowest threshold
    return float(thresholds[i]), float(f1[i])


def detection_uncertainty(probability: np.ndarray, threshold: float, area_mm2: float, width: float = 1.0) -> float:
    """How many of a field's candidates the detector is unsure about, per mm²: the active-learning score.

    Each candidate counts ``exp(-(d / width)^2)`` where ``d = logit(p) - logit(threshold)`` is its
    calibrated probability's distance from the operating threshold on the logit scale: 1 at the
    threshold, 0.37 one ``width`` away, nearly 0 for sure mitoses and sure non-mitoses. The sum is
    divided by the field's area, so large and small fields compare.

    Args:
        probability: ``(N,)`` calibrated probabilities of the field's voted candidates, in ``[0, 1]``.
        threshold: the operating threshold, in ``(0, 1)``.
        area_mm2: the field's area in mm² (> 0).
        width: the logit distance at which a candidate counts ``1/e``.

    Returns:
        the uncertainty per mm² (0 for a field without candidates).

    Raises:
        ValueError: a threshold outside ``(0, 1)``, a non-positive area or width, or non-finite probabilities.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if not (area_mm2 > 0 and width > 0):
        raise ValueError(f"area_mm2 and width must be > 0, got {area_mm2!r}, {width!r}")
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(p)):
        raise ValueError("probability must be finite")
    eps = 1e-6
    p = np.clip(p, eps, 1.0 - eps)
    d = np.log(p / (1.0 - p)) - math.log(threshold / (1.0 - threshold))
    return float(np.exp(-((d / width) ** 2)).sum() / area_mm2)

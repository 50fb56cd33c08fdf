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
- Counts per mm^2: ``area_mm2 = width * height * spacing**2 / 1e6`` with width and height in pixels read
  from the image header (no pixel decoding).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from monai.utils import look_up_option

from mssn_monai.io import image_size
from mssn_monai.ops.matching import MatchingMethod, match_points, pairwise_distances

__all__ = [
    "DetectionCounts",
    "detection_counts",
    "sum_counts",
    "precision_recall_f1",
    "image_area_mm2",
    "count_per_mm2",
    "select_thresholds",
    "sweep_counts",
    "best_threshold",
    "evaluate_predictions",
    "format_report",
    "write_evaluation",
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


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    p, r, f = _prf(np.asarray(tp), np.asarray(fp), np.asarray(fn))
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


def _load_section(datalist: str | os.PathLike | Sequence[Mapping[str, Any]], section: str) -> list[Mapping]:
    if not isinstance(datalist, (str, os.PathLike)):
        records = list(datalist)
        where = "the given records"
    else:
        from mssn_monai.data.datalist import load_datalist

        where = f"{datalist}: section {section!r}"
        records = list(load_datalist(datalist, section=section))  # "all" concatenates every section
    if not records:
        raise ValueError(f"{where} is empty: no images to evaluate")
    return records


def _points(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value if value is not None else [], dtype=np.float64)
    if arr.size == 0:
        return np.empty((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise ValueError(f"{what}: expected a list of finite [x, y] points, got shape {arr.shape}")
    return arr


def _detections(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.empty((0, 3))
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"{what}: expected (N, 3) detections x, y, score, got shape {arr.shape}")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: detections hold non-finite values (NaN or inf)")
    return arr


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def evaluate_predictions(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    pred: str | os.PathLike | Mapping[str, np.ndarray],
    section: str = "testing",
    radius_um: float = 8.0,
    matching: MatchingMethod | str = MatchingMethod.OPTIMAL,
    threshold: float | None = None,
    sweep: bool = False,
    max_thresholds: int = 101,
) -> dict[str, Any]:
    """Score detections against the ground truth of a datalist section.

    Args:
        datalist: a datalist JSON file (read with ``mssn_monai.data.datalist.load_datalist``) or the
            records of one section (dicts with ``image``, ``mitoses`` and ``spacing``).
        pred: a folder of ``<image stem>.csv`` (rows ``x,y,score``), a JSON file
            ``{image: [[x, y, score], ...]}`` (see :func:`mssn_monai.io.read_predictions`) or a mapping
            ``{image stem: (N, 3) array}``. Coordinates in pixels.
        section: datalist section to score (``training``, ``validation``, ``testing``) or ``all``.
            Ignored when ``datalist`` is a list of records.
        radius_um: match radius in micrometres, converted per image: ``radius_um / spacing`` pixels.
        matching: ``"optimal"`` (maximum one-to-one matching) or ``"greedy"`` (challenge scorers' rule).
        threshold: keep detections with ``score >= threshold``; ``None`` keeps all.
        sweep: also compute micro precision/recall/F1 at each score threshold (independent of
            ``threshold``, over all detections) and the best threshold.
        max_thresholds: cap on the number of sweep thresholds (see :func:`select_thresholds`).

    Returns:
        A JSON-serialisable report::

            {"settings": {"section", "radius_um", "matching", "threshold"},
             "overall": {"n_images", "n_gt", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1"},
             "per_image": [{"image" (stem), "n_gt", "n_pred", "tp", "fp", "fn", "precision", "recall",
                            "f1", "spacing", "radius_px", "width", "height", "area_mm2",
                            "gt_per_mm2", "pred_per_mm2"}, ...],
             "sweep": {"thresholds", "tp", "fp", "fn", "precision", "recall", "f1", "best_threshold",
                       "best_f1", "best_precision", "best_recall"}}   # only with sweep=True

        ``overall`` is micro-aggregated; ``n_pred`` and ``pred_per_mm2`` count detections kept at
        ``threshold``. An image with no predictions counts as zero detections (one warning lists them);
        predictions for images outside the section are ignored (one warning lists them).

    Raises:
        ValueError: the section is empty; two images share a stem; ``matching``, ``radius_um``,
            ``threshold`` or a record is invalid; an image header cannot be read.
        FileNotFoundError: the datalist, the predictions or an image file is missing.
    """
    try:
        method = look_up_option(matching, MatchingMethod)
    except ValueError as e:
        raise ValueError(f"matching: {' '.join(str(e).split())}") from e
    radius_um = float(radius_um)
    if not math.isfinite(radius_um) or radius_um <= 0:
        raise ValueError(f"radius_um must be a positive number of micrometres, got {radius_um!r}")
    if threshold is not None:
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite score or None, got {threshold!r}")

    records = _load_section(datalist, section)
    if isinstance(pred, Mapping):
        predictions = {Path(str(k)).stem: v for k, v in pred.items()}
        pred_name = "the given predictions"
    else:
        from mssn_monai.io import read_predictions

        predictions = read_predictions(pred)
        pred_name = str(pred)

    stems: dict[str, str] = {}
    for rec in records:
        image = str(rec["image"])
        stem = Path(image).stem
        if stem in stems:
            raise ValueError(f"images {stems[stem]} and {image} share the stem {stem!r}; predictions are keyed by stem")
        stems[stem] = image
    missing = [s for s in stems if s not in predictions]
    if missing:
        logger.warning(
            "%d of %d images have no predictions in %s and count as zero detections: %s",
            len(missing),
            len(stems),
            pred_name,
            _names(missing),
        )
    extra = sorted(s for s in predictions if s not in stems)
    if extra:
        logger.warning(
            "%d prediction entries in %s match no image of section %r and are ignored: %s",
            len(extra),
            pred_name,
            section,
            _names(extra),
        )

    gts, dets, radii, per_image = [], [], [], []
    for rec in records:
        image = str(rec["image"])
        stem = Path(image).stem
        if "mitoses" not in rec:
            raise ValueError(f"{image}: datalist record has no 'mitoses' list")
        gt = _points(rec["mitoses"], f"{image}: 'mitoses'")
        det = _detections(predictions.get(stem, []), f"{pred_name}: {stem}")
        spacing = rec.get("spacing")
        if spacing is None or isinstance(spacing, bool) or not math.isfinite(float(spacing)) or float(spacing) <= 0:
            raise ValueError(f"{image}: 'spacing' must be a positive number of um/px, got {spacing!r}")
        spacing = float(spacing)
        radius_px = radius_um / spacing
        kept = det if threshold is None else det[det[:, 2] >= threshold]
        c = detection_counts(gt, kept[:, :2], radius_px, method)
        p, r, f = precision_recall_f1(*c)
        width, height = image_size(image)
        area = image_area_mm2(width, height, spacing)
        per_image.append(
            {
                "image": stem,
                "n_gt": len(gt),
                "n_pred": len(kept),
                "tp": c.tp,
                "fp": c.fp,
                "fn": c.fn,
                "precision": p,
                "recall": r,
                "f1": f,
                "spacing": spacing,
                "radius_px": radius_px,
                "width": width,
                "height": height,
                # an absurd spacing under- or overflows the area: area and densities are undefined (null)
                "area_mm2": area if 0.0 < area < math.inf else None,
                "gt_per_mm2": count_per_mm2(len(gt), area) if 0.0 < area < math.inf else None,
                "pred_per_mm2": count_per_mm2(len(kept), area) if 0.0 < area < math.inf else None,
            }
        )
        gts.append(gt)
        dets.append(det)
        radii.append(radius_px)

    total = sum_counts((d["tp"], d["fp"], d["fn"]) for d in per_image)
    p, r, f = precision_recall_f1(*total)
    report: dict[str, Any] = {
        "settings": {"section": section, "radius_um": radius_um, "matching": method.value, "threshold": threshold},
        "overall": {
            "n_images": len(per_image),
            "n_gt": sum(d["n_gt"] for d in per_image),
            "n_pred": sum(d["n_pred"] for d in per_image),
            "tp": total.tp,
            "fp": total.fp,
            "fn": total.fn,
            "precision": p,
            "recall": r,
            "f1": f,
        },
        "per_image": per_image,
    }
    if sweep:
        all_scores = np.concatenate([d[:, 2] for d in dets]) if dets else np.empty(0)
        thresholds = select_thresholds(all_scores, max_thresholds)
        tp, fp, fn = sweep_counts(gts, dets, radii, thresholds, method)
        sp, sr, sf = _prf(tp, fp, fn)
        best_t, best_f = best_threshold(thresholds, sf)
        best_i = int(np.flatnonzero(thresholds == best_t)[0]) if best_t is not None else None
        report["sweep"] = {
            "thresholds": thresholds.tolist(),
            "tp": tp.tolist(),
            "fp": fp.tolist(),
            "fn": fn.tolist(),
            "precision": sp.tolist(),
            "recall": sr.tolist(),
            "f1": sf.tolist(),
            "best_threshold": best_t,
            "best_f1": best_f,
            "best_precision": float(sp[best_i]) if best_i is not None else None,
            "best_recall": float(sr[best_i]) if best_i is not None else None,
        }
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """Render a report from :func:`evaluate_predictions` as a per-image table, the overall line and
    the sweep summary (when present)."""
    rows = report.get("per_image", [])
    name_w = max([5] + [len(str(d["image"])) for d in rows])
    header = (
        f"{'image':<{name_w}} {'n_gt':>5} {'n_pred':>6} {'tp':>5} {'fp':>5} {'fn':>5} "
        f"{'prec':>6} {'recall':>6} {'f1':>6} {'gt/mm2':>8} {'pred/mm2':>8}"
    )
    lines = [header, "-" * len(header)]
    for d in rows:
        lines.append(
            f"{d['image']:<{name_w}} {d['n_gt']:>5d} {d['n_pred']:>6d} {d['tp']:>5d} {d['fp']:>5d} {d['fn']:>5d} "
            f"{d['precision']:>6.3f} {d['recall']:>6.3f} {d['f1']:>6.3f} "
            + " ".join("     n/a" if d[k] is None else f"{d[k]:>8.2f}" for k in ("gt_per_mm2", "pred_per_mm2"))
        )
    s, o = report.get("settings", {}), report["overall"]
    thr = "all detections" if s.get("threshold") is None else f"score >= {s['threshold']:g}"
    lines.append(
        f"overall (micro, {o.get('n_images', len(rows))} images, {s.get('matching', '?')} matching within "
        f"{s.get('radius_um', float('nan')):g} um, {thr}): TP {o['tp']} FP {o['fp']} FN {o['fn']}  "
        f"precision {o['precision']:.3f} recall {o['recall']:.3f} F1 {o['f1']:.3f}"
    )
    sw = report.get("sweep")
    if sw is not None:
        if sw["best_threshold"] is None:
            lines.append("sweep: no detections, no thresholds")
        else:
            lines.append(
                f"sweep over {len(sw['thresholds'])} thresholds: best F1 {sw['best_f1']:.3f} at score >= "
                f"{sw['best_threshold']:.6g} (precision {sw['best_precision']:.3f}, "
                f"recall {sw['best_recall']:.3f})"
            )
    return "\n".join(lines)


def write_evaluation(
    datalist: str | os.PathLike,
    pred: str | os.PathLike,
    out_json: str | os.PathLike,
    out_png: str | os.PathLike | None = None,
    section: str = "testing",
    radius_um: float = 8.0,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Score a folder of detections, write the report as JSON and a precision-recall curve as PNG.

    The bundle's ``evaluate.json`` calls this after writing every field's detections with all voted
    candidates (operating threshold 0), so the curve covers every threshold and ``overall`` gives the
    numbers at the detector's own operating ``threshold``.

    Args:
        datalist: labelled datalist JSON.
        pred: folder of ``<image stem>.csv`` rows ``x,y,score``.
        out_json: report file (:func:`evaluate_predictions` with ``sweep=True``).
        out_png: precision-recall curve picture (``None``: none).
        section: the datalist section.
        radius_um: match radius in micrometres.
        threshold: the operating threshold the ``overall`` numbers use (``None``: every detection).

    Returns:
        the report.
    """
    from mssn_monai.io import write_image, write_json

    report = evaluate_predictions(datalist, pred, section=section, radius_um=radius_um, threshold=threshold, sweep=True)
    write_json(out_json, report)
    logger.info("%s", format_report(report))
    if out_png is not None:
        from mssn_monai.visualize import draw_pr_curve

        sw, overall = report["sweep"], report["overall"]
        picture = draw_pr_curve(
            sw["recall"],
            sw["precision"],
            marker=(overall["recall"], overall["precision"]),
            title=f"F1 {overall['f1']:.3f} at the operating threshold (red)",
        )
        write_image(out_png, picture)
    return report

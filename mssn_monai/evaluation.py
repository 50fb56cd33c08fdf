"""Evaluation: detections on disk scored against a labelled datalist (the ``evaluate`` command, ``evaluate.json``).

Reads the datalist, the prediction files and the image headers (for the area), then applies the
maths of :mod:`mssn_monai.metrics` (its docstring states every convention: matching, zero division,
micro aggregation, sweeps, counts per mm^2) and formats or writes the report.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import look_up_option

from mssn_monai.constants import MATCH_RADIUS_UM
from mssn_monai.io import image_size
from mssn_monai.keys import DatalistKeys
from mssn_monai.metrics import (
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
from mssn_monai.ops.matching import MatchingMethod

__all__ = ["evaluate_predictions", "format_report", "write_evaluation", "score_bundle"]

logger = logging.getLogger(__name__)


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
    radius_um: float = MATCH_RADIUS_UM,
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
        image = str(rec[DatalistKeys.IMAGE])
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
        image = str(rec[DatalistKeys.IMAGE])
        stem = Path(image).stem
        if "mitoses" not in rec:
            raise ValueError(f"{image}: datalist record has no 'mitoses' list")
        gt = _points(rec[DatalistKeys.MITOSES], f"{image}: '{DatalistKeys.MITOSES}'")
        det = _detections(predictions.get(stem, []), f"{pred_name}: {stem}")
        spacing = rec.get(DatalistKeys.SPACING)
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
        sp, sr, sf = prf_arrays(tp, fp, fn)
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
    radius_um: float = MATCH_RADIUS_UM,
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


def score_bundle(
    bundle: str | os.PathLike | None,
    datalist: str | os.PathLike,
    section: str = "testing",
    device: str | None = None,
    stage1_bf16: bool = False,
    int8: bool = False,
) -> dict[str, Any]:
    """A bundle's detector on a labelled datalist section: stage 1 and the final detections in one pass.

    Runs the bundle's ``FieldDetector`` once per field with every voted candidate kept, then scores:
    stage-1 recall and candidates per field, precision / recall / F1 at the bundle's own operating
    threshold, and the best F1 over thresholds in hindsight (what calibration costs). ``stage1_bf16``
    runs stage 1 in bfloat16, ``int8`` both stages in 8-bit integers
    (:class:`~mssn_monai.networks.detector.FieldDetector`).

    Returns:
        ``{"fields", "mitoses", "stage1_recall", "candidates_per_field", "precision", "recall", "f1",
        "best_f1", "operating_threshold", "candidate_threshold"}``.
    """
    import torch

    from mssn_monai.checkpoints import load_detector
    from mssn_monai.data.datalist import load_datalist
    from mssn_monai.io import read_image_rgb
    from mssn_monai.keys import DetectionKeys

    fields = load_detector(
        bundle,
        "cpu" if int8 else device or ("cuda" if torch.cuda.is_available() else "cpu"),
        stage1_bf16=stage1_bf16,
        int8=int8,
    )
    operating = float(fields.detector.operating_threshold())
    fields.detector.threshold_override = 0.0  # every voted candidate, for the sweep
    records = load_datalist(datalist, section)
    candidates, voted = {}, {}
    for rec in records:
        res = fields(read_image_rgb(rec[DatalistKeys.IMAGE]), float(rec[DatalistKeys.SPACING]))
        stem = Path(rec[DatalistKeys.IMAGE]).stem
        candidates[stem], voted[stem] = res[DetectionKeys.CANDIDATES], res[DetectionKeys.DETECTIONS]
    stage1 = evaluate_predictions(records, candidates)["overall"]
    final = evaluate_predictions(records, voted, threshold=operating)["overall"]
    sweep = evaluate_predictions(records, voted, sweep=True)["sweep"]
    return {
        "fields": len(records),
        "mitoses": stage1["n_gt"],
        "stage1_recall": stage1["recall"],
        "candidates_per_field": (stage1["tp"] + stage1["fp"]) / len(records),
        "precision": final["precision"],
        "recall": final["recall"],
        "f1": final["f1"],
        "best_f1": sweep["best_f1"],
        "operating_threshold": operating,
        "candidate_threshold": float(fields.detector.candidate_threshold),
    }

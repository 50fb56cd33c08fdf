"""Stage-2 report: false positives of the FNR alone vs FNR + FPR, final precision / recall / F1,
and a 2-D projection of the Siamese embeddings of the three patch classes (paper Figs. 10 and 7).

Usage::

    .venv/bin/python scripts/fpr_report.py --datalist bench/datalist.json --section testing \\
        [--embedding-png docs/images/fpr_embedding.png] [--out report.json]
"""

from __future__ import annotations

from pathlib import Path

import fire
import numpy as np
import torch

from mssn_monai.checkpoints import load_detector
from mssn_monai.constants import MATCH_RADIUS_UM
from mssn_monai.data.datalist import load_datalist
from mssn_monai.evaluation import evaluate_predictions
from mssn_monai.handlers import false_positive_points
from mssn_monai.io import read_image_rgb, write_image, write_json
from mssn_monai.keys import DatalistKeys, DetectionKeys, PatchClass
from mssn_monai.ops.patches import extract_patches

_COLOURS = {PatchClass.BACKGROUND: (120, 120, 120), PatchClass.MITOSIS: (0, 170, 0), PatchClass.MIMIC: (255, 120, 0)}
_NAMES = {PatchClass.BACKGROUND: "background / nuclei", PatchClass.MITOSIS: "mitosis", PatchClass.MIMIC: "hard mimic"}


def main(
    datalist: str,
    section: str = "testing",
    bundle: str | None = None,
    radius_um: float = MATCH_RADIUS_UM,
    embedding_png: str | None = None,
    out: str | None = None,
    normalize: bool = True,
) -> None:
    """Print the FNR-alone vs two-stage table; optionally draw the embedding projection.

    ``normalize`` applies the bundle's stain normalisation (when its config enables it) as ``detect`` does.
    """
    fields = load_detector(bundle, "cpu", normalize=normalize)
    fpr = fields.detector.fpr
    records = load_datalist(datalist, section)
    candidates, voted, detections, embed_points = {}, {}, {}, []
    for rec in records:
        image = read_image_rgb(rec[DatalistKeys.IMAGE])
        res = fields(image, float(rec[DatalistKeys.SPACING]))
        cand, keep = res[DetectionKeys.CANDIDATES], res[DetectionKeys.VOTED]
        stem = Path(rec[DatalistKeys.IMAGE]).stem
        candidates[stem], detections[stem] = cand, res[DetectionKeys.DETECTIONS]
        voted[stem] = np.column_stack([cand[keep, :2], res[DetectionKeys.PROBABILITY][keep]])
        if embedding_png:
            embed_points.append((fields.prepare(image).cpu(), rec, cand))
    stage1 = evaluate_predictions(records, candidates, radius_um=radius_um)["overall"]
    vote = evaluate_predictions(records, voted, radius_um=radius_um)["overall"]
    both = evaluate_predictions(records, detections, radius_um=radius_um)["overall"]
    operating = float(fpr.operating_threshold)
    print(
        f"{len(records)} images, {stage1['n_gt']} mitoses, match radius {radius_um} um, "
        f"stain normalisation {'on' if fields.normalizer is not None else 'off'}"
    )
    print(f"{'stage':>11} {'TP':>5} {'FP':>5} {'FN':>5} {'precision':>9} {'recall':>7} {'F1':>6}")
    for name, r in (("FNR", stage1), ("+FPR vote", vote), (f"+p>={operating:.2f}", both)):
        print(
            f"{name:>11} {r['tp']:>5} {r['fp']:>5} {r['fn']:>5} "
            f"{r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f}"
        )
    removed = 1.0 - both["fp"] / stage1["fp"] if stage1["fp"] else 0.0
    print(
        f"false positives removed by FPR: {removed:.1%}; recall change {both['recall'] - stage1['recall']:+.3f} "
        f"(operating threshold {operating:.3f} on the calibrated probability, chosen on validation fields)"
    )
    report = {
        "fnr": stage1,
        "fnr_fpr_vote": vote,
        "fnr_fpr": both,
        "operating_threshold": operating,
        "fp_removed_fraction": removed,
    }
    if embedding_png:
        _embedding_plot(fpr, embed_points, radius_um, embedding_png)
        report["embedding_png"] = embedding_png
    if out:
        write_json(out, report)
        print(f"wrote {out}")


def _embedding_plot(fpr: torch.nn.Module, items, radius_um: float, path: str, per_class: int = 300) -> None:
    """Embed patches of the three classes, project on the first two principal axes, draw a scatter PNG."""
    rng = np.random.default_rng(0)
    embeddings, classes = [], []
    size = int(fpr.patch_size)
    for field, rec, cand in items:
        h, w = field.shape[-2:]
        spacing = float(rec[DatalistKeys.SPACING])
        gt = np.asarray(rec[DatalistKeys.MITOSES], dtype=np.float64).reshape(-1, 2)
        mimics = np.asarray(rec.get(DatalistKeys.MIMICS, []), dtype=np.float64).reshape(-1, 2)
        fps = false_positive_points(cand, gt, radius_um / spacing)
        background = rng.uniform([0, 0], [w, h], size=(20, 2))
        if len(gt):
            far = np.hypot(background[:, None, 0] - gt[None, :, 0], background[:, None, 1] - gt[None, :, 1]).min(1)
            background = background[far > radius_um / spacing]
        for pts, cls in (
            (gt, PatchClass.MITOSIS),
            (np.concatenate([mimics, fps]), PatchClass.MIMIC),
            (background, PatchClass.BACKGROUND),
        ):
            if len(pts):
                with torch.inference_mode():
                    embeddings.append(fpr(extract_patches(field, pts, size)).float().numpy())
                classes.append(np.full(len(pts), int(cls)))
    emb, cls = np.concatenate(embeddings), np.concatenate(classes)
    keep = np.concatenate([rng.permutation(np.flatnonzero(cls == c))[:per_class] for c in _COLOURS])
    emb, cls = emb[keep], cls[keep]
    centred = emb - emb.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    write_image(path, _scatter(xy, cls))
    print(
        f"wrote {path} ({len(cls)} patches: "
        + ", ".join(f"{_NAMES[c]} {int((cls == c).sum())}" for c in _COLOURS)
        + ")"
    )


def _scatter(xy: np.ndarray, cls: np.ndarray, size: int = 640, margin: int = 40) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size + 60), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    lo, hi = xy.min(0), xy.max(0)
    scale = (size - 2 * margin) / np.maximum(hi - lo, 1e-9)
    pix = (xy - lo) * scale + margin
    order = np.argsort(cls == PatchClass.MITOSIS)  # mitoses drawn last, on top
    for (x, y), c in zip(pix[order], cls[order], strict=True):
        draw.ellipse([x - 3, size - y - 3, x + 3, size - y + 3], fill=_COLOURS[PatchClass(c)])
    for i, c in enumerate(_COLOURS):
        draw.rectangle([margin + i * 200, size + 20, margin + i * 200 + 12, size + 32], fill=_COLOURS[c])
        draw.text((margin + i * 200 + 18, size + 20), _NAMES[c], fill=(0, 0, 0))
    draw.text((margin, 10), "Siamese embeddings, first two principal axes (held-out patches)", fill=(0, 0, 0))
    return np.asarray(im)


if __name__ == "__main__":
    fire.Fire(main)

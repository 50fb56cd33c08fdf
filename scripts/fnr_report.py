"""Stage-1 report: candidate recall, candidates per field, and the single sub-model vs fused ablation.

Runs stage 1 of the bundle's detector (``MSSNDetector.stage1_maps``, the code ``detect`` runs, stain
normalisation included) over every image of a datalist section, then for each sub-model map and the
fused map counts the mitoses missed (no candidate within the match radius; one-to-one) at each threshold.
This is the paper's Fig. 9 comparison: the fused FNR must miss fewer mitoses than the best single one.

Usage::

    .venv/bin/python scripts/fnr_report.py --datalist bench/datalist.json --section testing \\
        [--bundle bundle] [--thresholds 0.3,0.5,0.7] [--out report.json]
"""

from __future__ import annotations

import time

import fire
import numpy as np
import torch

from mssn_monai.checkpoints import load_detector
from mssn_monai.constants import MATCH_RADIUS_UM
from mssn_monai.data.datalist import load_datalist
from mssn_monai.io import read_image_rgb, write_json
from mssn_monai.keys import DatalistKeys
from mssn_monai.ops.matching import match_points


def main(
    datalist: str,
    section: str = "testing",
    bundle: str | None = None,
    thresholds: tuple[float, ...] | None = None,
    radius_um: float = MATCH_RADIUS_UM,
    out: str | None = None,
    normalize: bool = True,
) -> None:
    """Print recall / misses / candidates per field for each sub-model and the fused map.

    ``normalize`` maps each field onto the training stains first (the bundle's ``stain_normalization``,
    when its config enables it), as training and ``detect`` do.
    """
    fields = load_detector(bundle, "cpu", normalize=normalize)
    detector = fields.detector
    operating = float(detector.candidate_threshold)
    if thresholds is None:
        thresholds = tuple(sorted({0.1, 0.2, 0.3, 0.5, 0.7, 0.9, operating}))
    elif isinstance(thresholds, (int, float)):
        thresholds = (float(thresholds),)
    records = load_datalist(datalist, section)
    stats: dict[tuple[str, float], list[int]] = {}
    n_gt = 0
    seconds = []
    for rec in records:
        spacing = float(rec[DatalistKeys.SPACING])
        field = fields.prepare(read_image_rgb(rec[DatalistKeys.IMAGE]))
        t0 = time.perf_counter()
        with torch.inference_mode():
            maps = detector.stage1_maps(field)
        seconds.append(time.perf_counter() - t0)
        gt = np.asarray(rec[DatalistKeys.MITOSES], dtype=np.float64).reshape(-1, 2)
        n_gt += len(gt)
        for t in thresholds:
            detector.candidate_threshold = float(t)
            for name, prob_map in maps.items():
                cand = detector.peaks(prob_map, spacing).numpy()
                hit = len(match_points(gt, cand[:, :2], radius_um / spacing).gt_idx)
                s = stats.setdefault((name, t), [0, 0])
                s[0] += len(gt) - hit
                s[1] += len(cand)
        detector.candidate_threshold = operating
    names = list(dict.fromkeys(name for name, _ in stats))
    print(f"{len(records)} images, {n_gt} mitoses, match radius {radius_um} um, operating threshold {operating}")
    print(f"stage 1: {np.mean(seconds):.3f} s per image on average (image sizes as in the datalist)")
    header = f"{'map':>12} {'threshold':>9} {'missed':>7} {'recall':>7} {'cand/field':>10}"
    print(header)
    print("-" * len(header))
    report = {
        "n_images": len(records),
        "n_gt": n_gt,
        "radius_um": radius_um,
        "operating_threshold": operating,
        "rows": [],
    }
    for t in thresholds:
        for name in names:
            missed, n_cand = stats[(name, t)]
            recall = 1.0 - missed / n_gt if n_gt else 1.0
            mark = " *" if t == operating else ""
            print(f"{name:>12} {t:>9.2f} {missed:>7d} {recall:>7.3f} {n_cand / len(records):>10.1f}{mark}")
            report["rows"].append(
                {
                    "map": name,
                    "threshold": t,
                    "missed": missed,
                    "recall": recall,
                    "candidates_per_image": n_cand / len(records),
                }
            )
    if out:
        write_json(out, report)
        print(f"wrote {out}")


if __name__ == "__main__":
    fire.Fire(main)

"""Leave-one-style-out: train on all synthetic looks but one, test on the held-out one (MIDOG's unseen scanner).

For every look of ``mssn_monai.data.synthetic.STYLES`` (``random`` excepted) this renders training,
validation and test fields, then for each held-out look trains ``configs/train.json`` on the training
and validation fields of the *other* looks (settings are chosen on those validation fields only) and
scores the held-out look's test fields: stage-1 recall and candidates per field, final precision /
recall / F1 at the operating threshold fitted on validation, and F1 at the best threshold in hindsight
(what calibration costs). Prints the table and writes ``DIR/loso.json``.

Usage::

    python scripts/loso.py data --out runs/loso --train 16 --val 4 --test 10 --size 768
    python scripts/loso.py train --out runs/loso --holdout pale [--epochs 4 --fpr-epochs 15] \\
        [--extra "samples_per_epoch=1024 normalize_stain=false"]   # more train.json overrides
    python scripts/loso.py table --out runs/loso
    python scripts/loso.py styles --out runs/loso [--bundle B --name N]   # one bundle on every look's test fields

``all`` does the three steps, training the folds ``--parallel`` at a time (each fold is one
``python -m monai.bundle run training`` process). Cost seen on a 16-core H200 machine with six folds at
once and one loader worker each: about 22 s per stage-2 epoch of 2048 patches (the CPU data pipeline is
the bound, not the GPU), so the defaults need about 10 minutes there; on a 2-core CPU a fold takes
about 30 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fire
import numpy as np

from mssn_monai.evaluation import score_bundle

ROOT = Path(__file__).resolve().parents[1]


def _styles() -> list[str]:
    from mssn_monai.data.synthetic import STYLES

    return [s for s in STYLES if s != "random"]


def data(out: str, train: int = 16, val: int = 4, test: int = 10, size: int = 768, seed: int = 100) -> None:
    """Render ``train + val + test`` fields of every look under ``OUT/data/<style>/`` with one datalist each."""
    from mssn_monai.data.datalist import write_datalist
    from mssn_monai.data.formats import read_mitos_atypia14
    from mssn_monai.data.synthetic import generate_dataset

    for i, style in enumerate(_styles()):
        root = Path(out) / "data" / style
        if (root / "datalist.json").is_file():
            continue
        n = train + val + test
        generate_dataset(root / "fields", n_images=n, size=(size, size), seed=seed + i, frames_per_slide=1, style=style)
        records = sorted(read_mitos_atypia14(root / "fields"), key=lambda r: r["image"])
        sections = {"training": records[:train], "validation": records[train : train + val]}
        write_datalist({**sections, "testing": records[train + val :]}, root / "datalist.json")
        print(f"{style}: {n} fields of {size}x{size}")


def _fold_datalist(out: Path, holdout: str) -> Path:
    from mssn_monai.data.datalist import load_datalist, write_datalist

    fold = out / "folds" / holdout
    sections: dict[str, list] = {"training": [], "validation": [], "testing": []}
    for style in _styles():
        dl = out / "data" / style / "datalist.json"
        if style == holdout:
            sections["testing"] += load_datalist(dl, "testing")
        else:
            sections["training"] += load_datalist(dl, "training")
            sections["validation"] += load_datalist(dl, "validation")
    write_datalist(sections, fold / "datalist.json")
    return fold


def train(out: str, holdout: str, epochs: int = 4, fpr_epochs: int = 15, workers: int = 1, extra: str = "") -> float:
    """Train one fold (all looks but ``holdout``) into ``OUT/folds/<holdout>/bundle``; returns seconds."""
    fold = _fold_datalist(Path(out).resolve(), holdout)
    bundle = fold / "bundle"
    if (bundle / "models" / "model.pt").is_file():
        return 0.0
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(bundle / "configs" / "train.json"),
        "--bundle_root", str(bundle), "--dataset_dir", str(fold),
        "--epochs", str(epochs), "--mining_epoch", str(max(1, epochs // 2)), "--val_interval", str(epochs),
        "--fpr_epochs", str(fpr_epochs), "--fpr_val_interval", str(fpr_epochs), "--num_workers", str(workers),
    ] + [a for kv in str(extra or "").split() for a in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]  # fmt: skip
    t0 = time.perf_counter()
    with open(fold / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=fold)
    seconds = time.perf_counter() - t0
    (fold / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def table(out: str) -> list[dict]:
    """Score every trained fold on its held-out look; print the table and write ``OUT/loso.json``."""
    rows = []
    for style in _styles():
        fold = Path(out) / "folds" / style
        if not (fold / "bundle" / "models" / "model.pt").is_file():
            continue
        row = {"holdout": style, **score_bundle(fold / "bundle", fold / "datalist.json")}
        secs = fold / "train_seconds.txt"
        row["train_seconds"] = float(secs.read_text()) if secs.is_file() else None
        rows.append(row)
    _print(rows)
    Path(out, "loso.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def styles(out: str, bundle: str | None = None, name: str = "shipped") -> list[dict]:
    """One bundle (default: the shipped one) on every look's test fields: the table, and ``OUT/<name>.json``.

    For the shipped weights every look but ``default`` is unseen (the "before" of the leave-one-style-out
    table); for a bundle trained on the whole family none is.
    """
    rows = [
        {"holdout": style, **score_bundle(bundle, Path(out) / "data" / style / "datalist.json")} for style in _styles()
    ]
    _print(rows)
    Path(out, f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _print(rows: list[dict]) -> None:
    head = ("look", "mitoses", "S1 recall", "cand/field", "P", "R", "F1", "best F1")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (9, 7, 9, 10, 6, 6, 6, 7), strict=True)))
    for r in rows:
        cells = [r["stage1_recall"], r["candidates_per_field"], r["precision"], r["recall"], r["f1"], r["best_f1"]]
        shown = ["n/a" if v is None else f"{v:.{1 if i == 1 else 3}f}" for i, v in enumerate(cells)]
        print(
            f"{r['holdout']:>9} {r['mitoses']:>7} "
            + " ".join(f"{c:>{w}}" for c, w in zip(shown, (9, 10, 6, 6, 6, 7), strict=True))
        )
    if rows:
        means = [np.mean([r[k] or 0.0 for r in rows]) for k in ("stage1_recall", "f1", "best_f1")]
        print(f"{'mean':>9} {'':>7} {means[0]:>9.3f} {'':>10} {'':>6} {'':>6} {means[1]:>6.3f} {means[2]:>7.3f}")


def all(  # noqa: A001 - the fire command name
    out: str, train_fields: int = 16, val: int = 4, test: int = 10, size: int = 768, epochs: int = 4,
    fpr_epochs: int = 15, parallel: int = 6, extra: str = "",
) -> None:  # fmt: skip
    """Render the data, train every fold (``parallel`` at a time), print the table."""
    data(out, train_fields, val, test, size)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with ThreadPoolExecutor(parallel) as pool:
        jobs = {s: pool.submit(train, out, s, epochs, fpr_epochs, 1, extra) for s in _styles()}
        for s, job in jobs.items():
            try:
                print(f"fold {s}: trained in {job.result():.0f} s", flush=True)
            except subprocess.CalledProcessError as e:
                print(f"fold {s}: training failed ({e}); see {Path(out) / 'folds' / s / 'train.log'}", flush=True)
    table(out)


if __name__ == "__main__":
    fire.Fire({"data": data, "train": train, "table": table, "styles": styles, "all": all, "score": score_bundle})

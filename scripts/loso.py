"""Leave-one-style-out: train on all synthetic looks but one, test on the held-out one (MIDOG's unseen scanner).

For every look of ``mssn_monai.data.synthetic.LOOKS`` (the named styles) this renders training,
validation and test fields, then for each held-out look trains ``configs/train.json`` on the training
and validation fields of the *other* looks (settings are chosen on those validation fields only) and
scores the held-out look's test fields: stage-1 recall and candidates per field, final precision /
recall / F1 at the operating threshold fitted on validation, and F1 at the best threshold in hindsight
(what calibration costs). Prints the table and writes ``DIR/loso.json``.

Usage::

    python scripts/loso.py data --out runs/loso     # 8 training, 2 validation, 16 test fields of 1024x1024 per look
    python scripts/loso.py train --out runs/loso --holdout pale [--epochs 6 --fpr-epochs 60] \\
        [--extra "samples_per_epoch=1024 normalize_stain=false"]   # more train.json overrides
        [--family-fields 40 [--family-style blend|mix]]   # + 40 fields of the family without the held-out look
    python scripts/loso.py table --out runs/loso
    python scripts/loso.py refit --out runs/loso      # folds trained before 0.10: threshold refit per look
    python scripts/loso.py family --out runs/loso     # every look + random draws: the shipped weights' data
    python scripts/loso.py styles --out runs/loso [--bundle B --name N]   # one bundle on every look's test fields
    python scripts/loso.py adapt --out runs/loso [--k 4 --epochs 2] [--joint]  # adapt each fold to its held-out look
    python scripts/loso.py align --out runs/loso [--fields 8]      # no label: stage 1 aligned to the held-out look
    python scripts/loso.py align --out runs/loso --bundle bundle    # the same for one bundle on every look

``all`` does the three steps, training the folds ``--parallel`` at a time (each fold is one
``python -m monai.bundle run training`` process, 6 stage-1 and 60 stage-2 epochs of 2048 patches).
The fields are read and stain-normalised once per stage (``PatchSampleDataset.preload`` before the
loader workers start), so a stage-2 epoch costs about 8 s on the 2-core CPU and a fold about 11
minutes alone; two folds at a time take about 22 minutes per pair.
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
    from mssn_monai.data.synthetic import LOOKS

    return list(LOOKS)


def _render(root: Path, n: int, size: int, seed: int, style: str, exclude: tuple[str, ...] = ()) -> list[dict]:
    """Render ``n`` fields of ``style`` (one per slide) under ``root/fields``; their records, sorted by image."""
    from mssn_monai.data.formats import read_mitos_atypia14
    from mssn_monai.data.synthetic import generate_dataset

    generate_dataset(
        root / "fields", n_images=n, size=(size, size), seed=seed, frames_per_slide=1, style=style, exclude=exclude
    )
    return sorted(read_mitos_atypia14(root / "fields"), key=lambda r: r["image"])


def data(out: str, train: int = 8, val: int = 2, test: int = 16, size: int = 1024, seed: int = 100) -> None:
    """Render ``train + val + test`` fields of every look under ``OUT/data/<style>/`` with one datalist each."""
    from mssn_monai.data.datalist import write_datalist

    for i, style in enumerate(_styles()):
        root = Path(out) / "data" / style
        if (root / "datalist.json").is_file():
            continue
        records = _render(root, train + val + test, size, seed + i, style)
        sections = {"training": records[:train], "validation": records[train : train + val]}
        write_datalist({**sections, "testing": records[train + val :]}, root / "datalist.json")
        print(f"{style}: {train + val + test} fields of {size}x{size}")


def family(
    out: str, random_train: int = 60, random_val: int = 8, look_val: int = 4, size: int = 1024,
    family_style: str = "random",
) -> Path:  # fmt: skip
    """The whole family in one datalist, ``OUT/family/datalist.json``: what the shipped weights train on.

    Training: every look's training and validation fields (from :func:`data`) plus ``random_train``
    fields of the ``random`` style (each slide a fresh draw from the whole family; with
    ``--family-style blend`` of the ``blend`` style instead, in ``OUT/family_blend/datalist.json``; ``mix``: the first
    half of the ``random`` draws and the first half of the ``blend`` draws, ``OUT/family_mix/``). Validation (where
    the operating threshold and every setting are chosen): ``look_val`` new fields of every look and
    ``random_val`` other ``random`` fields, so the threshold is chosen on several looks at once and on
    looks no named style pins down. The looks' test fields stay out.
    """
    from mssn_monai.data.datalist import load_datalist, write_datalist

    root = Path(out)
    shares = _family_shares(family_style, random_train)
    sets = {f"{drawn}_train": (random_train, 400, drawn) for drawn, _ in shares}
    sets.update({"random": (random_val, 300, "random")})
    sets.update({f"{style}_val": (look_val, 700 + i, style) for i, style in enumerate(_styles())})
    for name, (n, seed, style) in sets.items():
        if not (root / "data" / name / "datalist.json").is_file():
            records = _render(root / "data" / name, n, size, seed, style)
            section = "training" if name.endswith("_train") else "validation"
            write_datalist({section: records}, root / "data" / name / "datalist.json")
    training = []
    for style in _styles():
        dl = root / "data" / style / "datalist.json"
        training += _with_domain(load_datalist(dl, "training") + load_datalist(dl, "validation"), style)
    for drawn, take in shares:
        training += _with_domain(
            load_datalist(root / "data" / f"{drawn}_train" / "datalist.json", "training")[:take], drawn
        )
    validation = []
    for name in [f"{style}_val" for style in _styles()] + ["random"]:
        look = name.removesuffix("_val")
        validation += _with_domain(load_datalist(root / "data" / name / "datalist.json", "validation"), look)
    path = root / ("family" if family_style == "random" else f"family_{family_style}") / "datalist.json"
    write_datalist({"training": training, "validation": validation}, path)
    n_mitoses = sum(len(r["mitoses"]) for r in training)
    print(f"{path}: {len(training)} training fields ({n_mitoses} mitoses), {len(validation)} validation fields")
    return path


DRAWN_STYLES = ("random", "blend")
"""The styles family fields are rendered in (``synth --style``)."""

FAMILY_STYLES = DRAWN_STYLES + ("mix",)
"""The family recipes of ``--family-style``: one drawn style, or ``mix``, half ``random`` and half ``blend``."""


def _check_family_style(style: str, allowed: tuple[str, ...] = FAMILY_STYLES) -> str:
    if style not in allowed:
        raise ValueError(f"--family-style must be one of {', '.join(allowed)}, got {style!r}")
    return style


def _family_shares(style: str, n: int) -> list[tuple[str, int]]:
    """``[(drawn style, how many of its fields), ...]`` for ``n`` family fields of ``--family-style style``:
    ``mix`` takes the first ``n - n // 2`` of ``n`` ``random`` draws and the first ``n // 2`` of ``n`` ``blend``
    draws (each set rendered whole, so the fields are those of the single-style recipes)."""
    if _check_family_style(style) == "mix":
        return [("random", n - n // 2), ("blend", n // 2)]
    return [(style, n)]


def _with_domain(records: list[dict], look: str) -> list[dict]:
    """The records, each naming its look as its ``domain``: on validation records the operating threshold
    then weighs every look the same (:func:`mssn_monai.handlers.best_operating_threshold`); on training
    records it is what ``domain_adversarial_weight`` > 0 hides from stage 2's embedding."""
    return [{**r, "domain": look} for r in records]


def family_without(out: str | Path, holdout: str, n: int, size: int = 1024, style: str = "random") -> Path:
    """``n`` fields of the family with no parameter of ``holdout`` (``synth --style random --exclude``; or
    ``--style blend``: values between the other looks'), ``OUT/data/<style>_without_<holdout>/datalist.json``:
    domain randomisation for the fold of ``holdout``."""
    from mssn_monai.data.datalist import write_datalist

    root = Path(out) / "data" / f"{_check_family_style(style, DRAWN_STYLES)}_without_{holdout}"
    if not (root / "datalist.json").is_file():
        records = _render(root, n, size, 900 + _styles().index(holdout), style, exclude=(holdout,))
        write_datalist({"training": records}, root / "datalist.json")
    return root / "datalist.json"


def _fold_datalist(out: Path, holdout: str, family_fields: int = 0, family_style: str = "random") -> Path:
    from mssn_monai.data.datalist import load_datalist, write_datalist

    fold = out / "folds" / holdout
    sections: dict[str, list] = {"training": [], "validation": [], "testing": []}
    for drawn, take in _family_shares(family_style, family_fields) if family_fields else []:
        drawn_fields = load_datalist(family_without(out, holdout, family_fields, style=drawn), "training")
        if len(drawn_fields) != family_fields:
            raise ValueError(
                f"{out}/data/{drawn}_without_{holdout} holds {len(drawn_fields)} fields, not {family_fields}"
            )
        sections["training"] += _with_domain(drawn_fields[:take], drawn)
    for style in _styles():
        dl = out / "data" / style / "datalist.json"
        if style == holdout:
            sections["testing"] += load_datalist(dl, "testing")
        else:
            sections["training"] += _with_domain(load_datalist(dl, "training"), style)
            sections["validation"] += _with_domain(load_datalist(dl, "validation"), style)
    write_datalist(sections, fold / "datalist.json")
    return fold


def _family_fields_of(datalist: Path) -> tuple[int, str]:
    """``(N, style)`` of the family fields a fold's datalist trains on (``(0, "random")`` when none, or no
    datalist yet), so that writing the fold's datalist again keeps them."""
    from mssn_monai.data.datalist import load_datalist

    if not datalist.is_file():
        return 0, "random"
    domains = [r.get("domain") for r in load_datalist(datalist, "training")]
    counts = {drawn: domains.count(drawn) for drawn in DRAWN_STYLES if drawn in domains}
    if not counts:
        return 0, "random"
    if len(counts) > 1:
        return sum(counts.values()), "mix"
    ((style, n),) = counts.items()
    return n, style


def train(
    out: str, holdout: str, epochs: int = 6, fpr_epochs: int = 60, workers: int = 1, extra: str = "",
    family_fields: int = 0, family_style: str = "random",
) -> float:  # fmt: skip
    """Train one fold (all looks but ``holdout``) into ``OUT/folds/<holdout>/bundle``; returns seconds.

    With ``family_fields`` N > 0 the fold also trains on N fields drawn from the family without the
    held-out look (:func:`family_without`): every combination of the other looks' parameters
    (``family_style="random"``), values between them (``"blend"``), or half of each (``"mix"``).
    """
    fold = _fold_datalist(Path(out).resolve(), holdout, family_fields, family_style)
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


def refit(out: str, holdouts: str | tuple[str, ...] | None = None) -> list[dict]:
    """Refit each trained fold's calibration and operating threshold as training now fits them, then ``table``.

    The fold's datalist is written again (its validation records naming their look as ``domain``, so
    every look weighs the same in the threshold's F1) and :class:`mssn_monai.handlers.FitOperatingPoint`
    runs on those validation fields (:func:`mssn_monai.handlers.refit_operating_point`); the weights and
    the reference bank stay. The fold's bundle before
    the first refit is kept as ``OUT/folds/<look>/bundle_pooled`` and ``OUT/loso.json`` as
    ``OUT/loso_pooled.json``. Nothing of the held-out look is read before ``table``.
    """
    from mssn_monai.constants import MODEL_FILE
    from mssn_monai.data.datalist import load_datalist
    from mssn_monai.handlers import refit_operating_point

    root = Path(out).resolve()
    if (root / "loso.json").is_file() and not (root / "loso_pooled.json").is_file():
        shutil.copy2(root / "loso.json", root / "loso_pooled.json")
    for style in _wanted(holdouts):
        bundle = root / "folds" / style / "bundle"
        if not (bundle / "models" / MODEL_FILE).is_file():
            continue
        if not (root / "folds" / style / "bundle_pooled").is_dir():
            shutil.copytree(bundle, root / "folds" / style / "bundle_pooled")
        fold = _fold_datalist(root, style, *_family_fields_of(root / "folds" / style / "datalist.json"))
        results = refit_operating_point(bundle, load_datalist(fold / "datalist.json", "validation"))
        threshold, f1 = results["fields_operating_threshold"], results["fields_f1"]
        print(f"fold {style}: operating threshold {threshold:.3f}, validation F1 {f1:.3f}", flush=True)
    return table(out)


def table(out: str, int8: bool = False) -> list[dict]:
    """Score every trained fold on its held-out look; print the table and write ``OUT/loso.json``.

    With ``--int8`` each fold's bundle first gets its int8 calibration on the fold's own training
    fields (``quantize --datalist FOLD/datalist.json``; never the held-out look's), then is scored with
    both stages in int8; the table goes to ``OUT/loso_int8.json``.
    """
    from mssn_monai.quantize import quantize_bundle

    rows = []
    for style in _styles():
        fold = Path(out) / "folds" / style
        if not (fold / "bundle" / "models" / "model.pt").is_file():
            continue
        if int8:
            quantize_bundle(fold / "bundle", fold / "datalist.json", "training")
        row = {"holdout": style, **score_bundle(fold / "bundle", fold / "datalist.json", int8=bool(int8))}
        secs = fold / "train_seconds.txt"
        row["train_seconds"] = float(secs.read_text()) if secs.is_file() else None
        rows.append(row)
    _print(rows)
    Path(out, "loso_int8.json" if int8 else "loso.json").write_text(json.dumps(rows, indent=2) + "\n")
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


def align(
    out: str, fields: int = 8, holdouts: str | tuple[str, ...] | None = None, bundle: str | None = None,
    name: str = "shipped",
) -> list[dict]:  # fmt: skip
    """The row without labels: each fold's bundle, stage 1 aligned (``adapt --unlabelled``) to ``fields``
    training fields of its held-out look with their annotations removed, scored on that look's test
    fields. The fold's own training fields are the source look. Prints the table (as ``table``) and
    writes ``OUT/loso_align.json``; each fold's row also goes to ``OUT/folds/<look>/align/row.json``.

    With ``--bundle B`` one bundle (its ``samples/`` as the source look) is aligned to each look in
    turn instead of the folds: rows in ``OUT/aligned_<name>/<look>/row.json``, table in
    ``OUT/aligned_<name>.json``.
    """
    from mssn_monai.adapt import adapt_bundle
    from mssn_monai.data.datalist import load_datalist, write_datalist

    root, rows = Path(out), []
    wanted = _wanted(holdouts)
    for style in _styles():
        fold = root / "folds" / style
        work = fold / "align" if bundle is None else root / f"aligned_{name}" / style
        source = (fold / "bundle") if bundle is None else Path(bundle)
        scored = (fold / "datalist.json") if bundle is None else (root / "data" / style / "datalist.json")
        if style not in wanted or not (source / "models" / "model.pt").is_file():
            if (work / "row.json").is_file():
                rows.append(json.loads((work / "row.json").read_text()))
            continue
        target = [
            {key: r[key] for key in ("image", "spacing", "group") if key in r}
            for r in load_datalist(root / "data" / style / "datalist.json", "training")[:fields]
        ]
        write_datalist({"training": target}, work / "unlabelled.json")
        t0 = time.perf_counter()
        adapt_bundle(
            work / "unlabelled.json", work / "bundle", bundle=source,
            replay=(fold / "datalist.json") if bundle is None else None, unlabelled=True, overwrite=True,
        )  # fmt: skip
        row = {"holdout": style, "seconds_align": time.perf_counter() - t0}
        row.update(score_bundle(work / "bundle", scored))
        (work / "row.json").write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
    _print(rows)
    table_file = "loso_align.json" if bundle is None else f"aligned_{name}.json"
    Path(out, table_file).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _wanted(holdouts: str | tuple[str, ...] | None) -> list[str]:
    if holdouts is None:
        return _styles()
    return list(holdouts.split(",") if isinstance(holdouts, str) else holdouts)


def adapt(
    out: str, k: int = 4, epochs: int = 2, forget_style: str = "default", forget_fields: int = 8,
    holdouts: str | tuple[str, ...] | None = None, align: bool = True, joint: bool = False,
) -> list[dict]:  # fmt: skip
    """``adapt`` each trained fold's bundle to its held-out look with ``k`` labelled fields of that look.

    The labelled fields are the held-out look's first ``k`` *training* fields holding a mitosis (never
    seen by that fold); the test fields are the held-out look's test section. Two runs per fold:
    steps 1+2 (reference bank and calibration, no gradient step) and 1+2+3 (plus ``epochs`` of
    fine-tuning with the fold's own training fields as replay). Forgetting: F1 on ``forget_fields`` test
    fields of ``forget_style`` (``shifted`` for the fold that holds that look out) after 1+2+3 minus before.
    ``holdouts`` limits the run to those folds (comma-separated); each fold's row is also written to
    ``OUT/folds/<look>/adapt_k<k>/row.json`` (``adapt_k<k>_noalign`` with ``--noalign``: ``adapt``
    without its stage-1 alignment; ``_joint`` appended with ``--joint``: ``adapt --joint-threshold``), and
    the table gathers every fold's row found. Prints the table and writes ``OUT/loso_adapt_k<k><suffix>.json``.
    """
    from mssn_monai.adapt import adapt_bundle
    from mssn_monai.data.datalist import load_datalist, write_datalist

    root = Path(out)
    wanted = _wanted(holdouts)
    suffix = ("" if align else "_noalign") + ("_joint" if joint else "")
    for style in _styles():
        fold = root / "folds" / style
        work = fold / f"adapt_k{k}{suffix}"
        if style not in wanted or not (fold / "bundle" / "models" / "model.pt").is_file():
            continue
        labelled = [r for r in load_datalist(root / "data" / style / "datalist.json", "training") if r["mitoses"]][:k]
        write_datalist({"training": labelled}, work / "labelled.json")
        keep = forget_style if style != forget_style else "shifted"
        forget = load_datalist(root / "data" / keep / "datalist.json", "testing")[:forget_fields]
        write_datalist({"testing": forget}, work / "forget.json")
        row = {"holdout": style, "k": k, "labelled_mitoses": sum(len(r["mitoses"]) for r in labelled)}
        table_rows = json.loads((root / "loso.json").read_text()) if (root / "loso.json").is_file() else []
        known = [r["f1"] for r in table_rows if r["holdout"] == style]  # the table's score of this fold
        row["f1_before"] = known[0] if known else score_bundle(fold / "bundle", fold / "datalist.json")["f1"]
        forget_before = score_bundle(fold / "bundle", work / "forget.json")["f1"]
        for name, ep in (("bank", 0), ("finetune", epochs)):
            t0 = time.perf_counter()
            adapt_bundle(
                work / "labelled.json", work / name, bundle=fold / "bundle", epochs=ep,
                replay=fold / "datalist.json", overwrite=True, align=align, joint_threshold=joint,
            )  # fmt: skip
            row[f"seconds_{name}"] = time.perf_counter() - t0
            row[f"f1_{name}"] = score_bundle(work / name, fold / "datalist.json")["f1"]
        row["forgetting"] = score_bundle(work / "finetune", work / "forget.json")["f1"] - forget_before
        row["forget_style"] = keep
        (work / "row.json").write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), flush=True)
    # every fold's row as it is now, read at the end: another `adapt` run on other folds may have finished
    rows = [
        json.loads(path.read_text())
        for path in (root / "folds" / s / f"adapt_k{k}{suffix}" / "row.json" for s in _styles())
        if path.is_file()
    ]
    print(f"{'held out':>9} {'F1 before':>9} {'bank':>6} {'+ft':>6} {'s (ft)':>7} {'forget':>7}")
    for r in rows:
        print(
            f"{r['holdout']:>9} {r['f1_before']:>9.3f} {r['f1_bank']:>6.3f} {r['f1_finetune']:>6.3f} "
            f"{r['seconds_finetune']:>7.0f} {r['forgetting']:>+7.3f}"
        )
    Path(out, f"loso_adapt_k{k}{suffix}.json").write_text(json.dumps(rows, indent=2) + "\n")
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
    out: str, train_fields: int = 8, val: int = 2, test: int = 16, size: int = 1024, epochs: int = 6,
    fpr_epochs: int = 60, parallel: int = 2, extra: str = "", family_fields: int = 0, family_style: str = "random",
) -> None:  # fmt: skip
    """Render the data, train every fold (``parallel`` at a time; ``--family-fields N [--family-style S]``: see
    :func:`train`), print the table."""
    data(out, train_fields, val, test, size)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with ThreadPoolExecutor(parallel) as pool:
        jobs = {
            s: pool.submit(train, out, s, epochs, fpr_epochs, 1, extra, family_fields, family_style) for s in _styles()
        }
        for s, job in jobs.items():
            try:
                print(f"fold {s}: trained in {job.result():.0f} s", flush=True)
            except subprocess.CalledProcessError as e:
                print(f"fold {s}: training failed ({e}); see {Path(out) / 'folds' / s / 'train.log'}", flush=True)
    table(out)


if __name__ == "__main__":
    fire.Fire(
        {
            "data": data,
            "family": family,
            "train": train,
            "table": table,
            "refit": refit,
            "styles": styles,
            "adapt": adapt,
            "align": align,
            "all": all,
            "score": score_bundle,
        }
    )

"""``adapt`` on looks the bundle never saw: F1 against the number of labelled fields, time, and forgetting.

For each held-out look it renders a pool of labelled fields (what a user would annotate) and a
separate test set, then scores on the test set: the bundle as shipped (0 fields), ``adapt`` with
``k`` pool fields and no gradient step (reference bank + calibration), and ``adapt`` with fine-tuning
(``--fine_tune_ks`` fields, ``--epochs`` epochs, ``--replay`` fields of the original look mixed in).
Forgetting is the bundle fine-tuned on the most fields: its F1 on ``--original`` (fields of the original
look) minus the shipped bundle's. Prints the table and writes ``OUT/adapt_benchmark.json``.

Usage::

    python scripts/adapt_benchmark.py --out runs/adapt --styles pale,dark --original bench/datalist.json \\
        --replay replay/datalist.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire

from mssn_monai.adapt import adapt_bundle
from mssn_monai.data.datalist import load_datalist, write_datalist
from mssn_monai.data.formats import read_mitos_atypia14
from mssn_monai.data.synthetic import generate_dataset
from mssn_monai.evaluation import score_bundle


def _render(root: Path, style: str, n: int, size: int, seed: int) -> list[dict]:
    if not (root / "datalist.json").is_file():
        generate_dataset(root / "fields", n_images=n, size=(size, size), seed=seed, frames_per_slide=1, style=style)
        records = sorted(read_mitos_atypia14(root / "fields"), key=lambda r: r["image"])
        write_datalist({"training": records, "validation": [], "testing": records}, root / "datalist.json")
    return load_datalist(root / "datalist.json", "training")


def main(
    out: str,
    styles: str | tuple[str, ...] = ("shifted", "pale", "dark", "magenta", "faded"),
    ks: tuple[int, ...] = (1, 2, 4, 8),
    fine_tune_ks: int | tuple[int, ...] = (4,),
    epochs: int = 2,
    pool: int = 12,
    test: int = 10,
    size: int = 768,
    original: str | None = None,
    replay: str | None = None,
    bundle: str | None = None,
) -> None:
    """Run the benchmark; see the module docstring."""
    styles = styles.split(",") if isinstance(styles, str) else list(styles)
    out_p = Path(out)
    base_original = score_bundle(bundle, original) if original else None
    rows = []
    for i, style in enumerate(styles):
        # a user labels fields that hold mitoses: the first pool fields with at least one
        pool_records = [r for r in _render(out_p / style / "pool", style, pool, size, 500 + i) if r["mitoses"]]
        _render(out_p / style / "test", style, test, size, 900 + i)
        test_dl = out_p / style / "test" / "datalist.json"
        row = {"style": style, "test_mitoses": None, "f1": {}, "seconds": {}}
        shipped = score_bundle(bundle, test_dl)
        row["test_mitoses"] = shipped["mitoses"]
        row["f1"]["0"] = shipped["f1"]
        row["stage1_recall_shipped"] = shipped["stage1_recall"]
        ft_ks = [int(k) for k in (fine_tune_ks if isinstance(fine_tune_ks, (tuple, list)) else (fine_tune_ks,))]
        plans = [(k, 0) for k in ks] + ([(k, epochs) for k in ft_ks] if epochs else [])
        for k, ep in plans:
            sub = out_p / style / f"k{k}_e{ep}"
            write_datalist({"training": pool_records[:k], "validation": [], "testing": []}, sub / "labelled.json")
            t0 = time.perf_counter()
            report = adapt_bundle(
                sub / "labelled.json", sub / "bundle", bundle=bundle, epochs=ep, replay=replay, overwrite=True
            )
            seconds = time.perf_counter() - t0
            score = score_bundle(sub / "bundle", test_dl)
            key = f"{k}" if ep == 0 else f"{k}+ft"
            row["f1"][key] = score["f1"]
            row["seconds"][key] = seconds
            row.setdefault("labelled_mitoses", {})[key] = report["mitoses"]
            if ep and original and k == max(ft_ks):  # forgetting: the bundle fine-tuned on the most fields
                row["forgetting"] = score_bundle(sub / "bundle", original)["f1"] - base_original["f1"]
                row["forgetting_k"] = k
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = list(rows[0]["f1"]) if rows else []
    print(f"{'style':>8} {'mitoses':>7} " + " ".join(f"{'F1@' + k:>9}" for k in keys) + f" {'s (ft)':>7} {'forget':>7}")
    for r in rows:
        ft = [v for k, v in r["seconds"].items() if k.endswith("+ft")]
        print(
            f"{r['style']:>8} {r['test_mitoses']:>7} "
            + " ".join(f"{r['f1'][k]:>9.3f}" for k in keys)
            + f" {(max(ft) if ft else float('nan')):>7.0f} {r.get('forgetting', float('nan')):>+7.3f}"
        )
    (out_p / "adapt_benchmark.json").write_text(json.dumps({"original": base_original, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    fire.Fire(main)

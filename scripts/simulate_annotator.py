"""A simulated annotator against a real MONAI Label server: active learning by uncertainty vs random.

For each strategy (``mitosis_uncertainty``, ``random``) a fresh server (``apps/monailabel``, started from
the environment of ``make label-venv``) serves a pool of generated fields of one look (``--style``,
default ``pale``, which the 0.4.0 weights never saw; the 0.10.0 weights are trained on every look of the
family, new fields of it), starting from the shipped bundle. Each round:

1. the strategy picks ``--per_round`` fields (``POST /activelearning/<strategy>``, one at a time: a picked
   field is labelled before the next pick, so the second pick is the next field by the same scores);
2. their ground truth goes in as a pathologist's labels would: a QuPath-style GeoJSON of points
   ("Mitotic figure"; the generator's look-alikes as "Non-mitotic figure" unless ``--mimics false``),
   ``PUT /datastore/label?image=ID&tag=final``;
3. the server trains (``POST /train/mssn_mitosis`` with ``--epochs`` and ``--samples_per_epoch``; waits
   until done) on every field labelled so far and serves the new version;
4. F1 at 8 um is measured on a fixed test set of ``--test`` other fields of the look, with the version the
   server now serves (``versions/vNNNN``, scored by :func:`mssn_monai.evaluation.score_bundle`, the
   detector ``/infer`` runs: ``tests/integration/test_apps.py`` checks that ``/infer`` after ``/train``
   equals ``detect --bundle vNNNN``).

Writes ``OUT/simulate_annotator.json`` (after every round) and ``OUT/simulate_annotator.png`` (F1 against
labelled fields, one curve per strategy; matplotlib when installed, else Pillow). Usage::

    python scripts/simulate_annotator.py --out runs/annotator                      # pale, 4 rounds of 2
    python scripts/simulate_annotator.py --out runs/annotator --plot_only          # redraw the PNG
    # the kept versions scored again on 20 other fields of 1024x1024 (no retraining)
    python scripts/simulate_annotator.py --out runs/annotator --rescore --test 20 --test_size 1024
    # the two strategies at once (each /train then shares the 2 cores with the other run's work):
    python scripts/simulate_annotator.py --out runs/annotator_u --strategies mitosis_uncertainty &
    python scripts/simulate_annotator.py --out runs/annotator_r --strategies random; wait
    python scripts/simulate_annotator.py --out runs/annotator \\
        --merge runs/annotator_u/simulate_annotator.json,runs/annotator_r/simulate_annotator.json

``random`` is MONAI Label's own strategy (unseeded: its picks differ between runs; they are recorded).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import fire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_client import ROOT, datastore_images, get_json, label_server, next_image, put_label, train  # noqa: E402

from mssn_monai.cli_args import as_flag  # noqa: E402

COLORS = {"mitosis_uncertainty": (31, 119, 180), "random": (255, 127, 14)}


def _render(root: Path, style: str, n: int, size: int, seed: int) -> list[dict[str, Any]]:
    """``n`` generated fields of ``style`` under ``root`` (once): their datalist records, sorted by image."""
    from mssn_monai.data.datalist import load_datalist, write_datalist
    from mssn_monai.data.formats import read_mitos_atypia14
    from mssn_monai.data.synthetic import generate_dataset

    if not (root / "datalist.json").is_file():
        generate_dataset(root / "fields", n_images=n, size=(size, size), seed=seed, frames_per_slide=1, style=style)
        records = sorted(read_mitos_atypia14(root / "fields"), key=lambda r: r["image"])
        write_datalist({"training": records, "validation": [], "testing": records}, root / "datalist.json")
    return load_datalist(root / "datalist.json", "testing")


def _geojson(record: dict[str, Any], mimics: bool) -> bytes:
    """The ground truth of one field as a QuPath GeoJSON export of points."""

    def point(xy, name):
        return {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [float(xy[0]), float(xy[1])]},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }

    features = [point(p, "Mitotic figure") for p in record["mitoses"]]
    features += [point(p, "Non-mitotic figure") for p in record.get("mimics", [])] if mimics else []
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def _score(bundle: Path | None, test_datalist: Path) -> dict[str, Any]:
    from mssn_monai.evaluation import score_bundle

    s = score_bundle(str(bundle) if bundle else None, test_datalist, device="cpu")
    return {k: s[k] for k in SCORE_KEYS}


def _run_strategy(
    result: dict[str, Any],
    out: Path,
    pool: dict[str, dict[str, Any]],
    test_datalist: Path,
    start: dict[str, Any],
    params: dict[str, Any],
    rounds: int,
    per_round: int,
    mimics: bool,
    save,
) -> None:
    strategy = result["strategy"]
    run = out / strategy
    shutil.rmtree(run, ignore_errors=True)
    studies, versions = run / "studies", run / "versions"
    studies.mkdir(parents=True)
    for image_id, rec in pool.items():
        shutil.copy(rec["image"], studies / f"{image_id}.png")
    result["rounds"] = [{"round": 0, "labelled": 0, "picked": [], **start}]
    result["versions_dir"] = str(versions)
    conf = {"versions_dir": str(versions)}
    with label_server(studies, run / "server.log", conf) as (url, _):
        labelled: list[str] = []
        for r in range(1, rounds + 1):
            picked = []
            for _ in range(per_round):
                t0 = time.monotonic()
                pick = next_image(url, strategy)
                if pick is None:
                    break
                image_id = pick["id"]
                status, body = put_label(url, image_id, f"{image_id}.geojson", _geojson(pool[image_id], mimics))
                if status != 200:
                    raise RuntimeError(f"label of {image_id} refused (HTTP {status}): {body}")
                labelled.append(image_id)
                picked.append(
                    {
                        "id": image_id,
                        "uncertainty": pick.get("uncertainty"),
                        "mitoses": len(pool[image_id]["mitoses"]),
                        "pick_seconds": round(time.monotonic() - t0, 1),
                    }
                )
            task = train(url, params)
            row = {
                "round": r,
                "labelled": len(labelled),
                "labelled_mitoses": sum(len(pool[i]["mitoses"]) for i in labelled),
                "picked": picked,
                "train_status": task.get("status"),
                "train_seconds": round(task["seconds"], 1),
            }
            if task.get("status") == "DONE":
                version = get_json(url, "/info/")["train_stats"]["mssn_mitosis"]["version"]
                row["version"] = version
                row.update(_score(versions / version, test_datalist))
            else:  # the server keeps serving the previous version
                row["error"] = "\n".join(task.get("details", []))[-2000:]
                prev = result["rounds"][-1]
                row.update({k: prev.get(k) for k in ("f1", "precision", "recall", "best_f1", "version")})
            result["rounds"].append(row)
            print(json.dumps({"strategy": strategy, **row}), flush=True)
            save()
        result["datastore_labelled"] = sorted(k for k, v in datastore_images(url).items() if v.get("labels"))


SCORE_KEYS = ("f1", "precision", "recall", "best_f1", "operating_threshold", "candidate_threshold")


def rescore_versions(results: dict[str, Any], out: Path, test: int, test_size: int, seed: int = 900) -> dict[str, Any]:
    """Score the shipped bundle and every round's served version again on another test set (``test`` fields of
    ``test_size``; no retraining: the versions are kept under each strategy's ``versions_dir``). The earlier
    scores move to ``earlier_test`` (per round and for the test set)."""
    root = out / f"test_{test}x{test_size}_seed{seed}"
    records = _render(root, results["style"], test, test_size, seed)
    datalist = root / "datalist.json"
    earlier = {k: results.get(k) for k in ("test_fields", "test_mitoses", "test_size", "size")}
    results.setdefault("earlier_test", earlier)
    results.update(test_fields=len(records), test_mitoses=sum(len(r["mitoses"]) for r in records), test_size=test_size)
    shipped = _score(ROOT / "bundle", datalist)
    results["shipped"] = {**shipped, "earlier_test": {k: results["shipped"].get(k) for k in SCORE_KEYS}}
    for strat in results["strategies"]:
        versions = Path(strat.get("versions_dir") or out / strat["strategy"] / "versions")
        for row in strat["rounds"]:
            row["earlier_test"] = {k: row.get(k) for k in SCORE_KEYS}
            row.update(_score(versions / row["version"], datalist) if row.get("version") else shipped)
            print(json.dumps({"strategy": strat["strategy"], "round": row["round"], "f1": row["f1"]}), flush=True)
    return results


def plot(results: dict[str, Any], path: Path) -> Path:
    """F1 on the test set against the number of labelled fields, one curve per strategy (PNG)."""
    series = {
        s["strategy"]: [(row["labelled"], row["f1"]) for row in s["rounds"] if row.get("f1") is not None]
        for s in results["strategies"]
    }
    side = results.get("test_size") or results.get("size")
    title = (
        f"simulated annotator, look '{results['style']}': F1 on {results['test_fields']} test fields"
        + (f" of {side}x{side}" if side else "")
        + f" ({results['test_mitoses']} mitoses)"
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for name, pts in series.items():
            c = tuple(v / 255 for v in COLORS.get(name, (0, 0, 0)))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=name)
        ax.axhline(0.85, color="grey", ls="--", lw=0.8, label="goal 0.85")
        ax.set(xlabel="labelled fields", ylabel="F1 (8 um)", ylim=(0, 1), title=title)
        ax.title.set_fontsize(8)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
    except ImportError:
        pass
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 640, 400, 60, 20, 40, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xmax = max((p[0] for pts in series.values() for p in pts), default=1) or 1

    def xy(x, y):
        return left + x / xmax * (w - left - right), top + (1 - y) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, py = xy(0, v)
        d.line([left - 4, py, left, py], fill="black")
        d.text((left - 36, py - 6), f"{v:.2f}", fill="black")
    for x in sorted({p[0] for pts in series.values() for p in pts}):
        px, _ = xy(x, 0)
        d.line([px, h - bottom, px, h - bottom + 4], fill="black")
        d.text((px - 3, h - bottom + 8), str(x), fill="black")
    gy = xy(0, 0.85)[1]
    for x0 in range(left, w - right, 10):
        d.line([x0, gy, min(x0 + 5, w - right), gy], fill=(150, 150, 150))
    d.text((left + 6, gy + 3), "goal 0.85", fill=(120, 120, 120))
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS.get(name, (0, 0, 0))
        coords = [xy(x, y) for x, y in pts]
        if len(coords) > 1:
            d.line(coords, fill=color, width=2)
        for px, py in coords:
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
        d.rectangle([left + 10, top + 10 + 16 * i, left + 22, top + 20 + 16 * i], fill=color)
        d.text((left + 28, top + 9 + 16 * i), name, fill="black")
    d.text((left, 12), title, fill="black")
    d.text((w // 2 - 40, h - 22), "labelled fields", fill="black")
    d.text((6, top - 20), "F1 (8 um)", fill="black")
    img.save(path, optimize=True)
    return path


def main(
    out: str = "runs/annotator",
    style: str = "pale",
    pool: int = 12,
    test: int = 20,
    size: int = 1024,
    test_size: int | None = None,
    rounds: int = 4,
    per_round: int = 2,
    epochs: int = 2,
    samples_per_epoch: int = 1024,
    strategies: str | tuple[str, ...] = ("mitosis_uncertainty", "random"),
    mimics=True,
    plot_only=False,
    merge: str | tuple[str, ...] | None = None,
    rescore=False,
    seed: int = 0,
) -> None:
    """Run the simulation; see the module docstring.

    Args:
        out: output folder (the generated fields, one server run per strategy, JSON and PNG).
        style: the look of the pool and the test fields (``synth --style``; the shipped weights know
            ``default`` only).
        pool: generated fields the strategies pick from; test: other fields F1 is measured on; size: their
            width and height in pixels (``test_size``: of the test fields, default ``size``).
        rounds, per_round: rounds of picking, labelling and training; fields labelled per round.
        epochs, samples_per_epoch: the ``/train`` request (fine-tuning epochs of ``adapt``; 0 = reference
            bank and calibration only).
        strategies: active-learning strategies of the server to compare.
        mimics: also label the generator's look-alikes as "Non-mitotic figure".
        plot_only: redraw the PNG from ``OUT/simulate_annotator.json``.
        merge: JSON files of runs with one strategy each (same pool and test set, e.g. run in parallel):
            combined into ``OUT/simulate_annotator.json`` and drawn.
        rescore: score the kept versions of ``OUT/simulate_annotator.json`` again on ``test`` new fields of
            ``test_size`` (:func:`rescore_versions`), then draw.
        seed: draw of the pool and the test fields (0: the documented run; the rescore set moves with it),
            and of the server's fine-tuning.
    """
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_p / "simulate_annotator.json", out_p / "simulate_annotator.png"
    if merge:  # runs of single strategies (e.g. in parallel) on the same pool and test set: one JSON, one PNG
        sources = merge.split(",") if isinstance(merge, str) else list(merge)
        runs = [json.loads(Path(p).read_text()) for p in sources]
        merged = {**runs[0], "strategies": [s for r in runs for s in r["strategies"]], "merged_from": sources}
        json_path.write_text(json.dumps(merged, indent=1) + "\n")
        plot_only = True
    if as_flag(rescore, "rescore"):
        results = rescore_versions(
            json.loads(json_path.read_text()), out_p, int(test), int(test_size or size), 900 + 1000 * int(seed)
        )
        json_path.write_text(json.dumps(results, indent=1) + "\n")
        plot_only = True
    if as_flag(plot_only, "plot_only"):
        print(plot(json.loads(json_path.read_text()), png_path))
        return
    strategies = strategies.split(",") if isinstance(strategies, str) else list(strategies)
    from mssn_monai.data.datalist import write_datalist

    pool_records = _render(out_p / "pool", style, pool, size, 700 + 1000 * int(seed))
    test_records = _render(out_p / "test", style, test, int(test_size or size), 800 + 1000 * int(seed))
    test_dl = out_p / "test" / "datalist.json"
    write_datalist({"training": [], "validation": [], "testing": test_records}, test_dl)
    pool_by_id = {Path(r["image"]).stem: r for r in pool_records}
    params = {"epochs": int(epochs), "samples_per_epoch": int(samples_per_epoch), "device": "cpu", "seed": int(seed)}
    t0 = time.monotonic()
    start = _score(ROOT / "bundle", test_dl)
    results: dict[str, Any] = {
        "style": style,
        "pool_fields": len(pool_records),
        "pool_mitoses": sum(len(r["mitoses"]) for r in pool_records),
        "test_fields": len(test_records),
        "test_mitoses": sum(len(r["mitoses"]) for r in test_records),
        "size": size,
        "test_size": int(test_size or size),
        "train_params": params,
        "mimics_labelled": as_flag(mimics, "mimics"),
        "shipped": {**start, "seconds": round(time.monotonic() - t0, 1)},
        "strategies": [],
    }

    def save():
        json_path.write_text(json.dumps(results, indent=1) + "\n")

    save()
    print(json.dumps({"shipped": results["shipped"]}), flush=True)
    for strategy in strategies:
        res = {"strategy": strategy, "rounds": []}
        results["strategies"].append(res)
        _run_strategy(
            res, out_p, pool_by_id, test_dl, start, params, rounds, per_round, results["mimics_labelled"], save
        )
        save()
    print(plot(results, png_path))


if __name__ == "__main__":
    fire.Fire(main)

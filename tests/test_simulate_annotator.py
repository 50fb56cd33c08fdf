"""``scripts/simulate_annotator.py`` without a server: the labels it submits and the PNG it draws."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the script imports its neighbour label_client
_spec = importlib.util.spec_from_file_location("mssn_simulate_annotator", ROOT / "scripts" / "simulate_annotator.py")
sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim)


def test_ground_truth_goes_in_as_a_qupath_point_export(tmp_path):
    from mssn_monai.data.annotations import read_point_labels

    record = {"image": "f.png", "mitoses": [[1.5, 2.0], [30, 40]], "mimics": [[5, 6]]}
    (tmp_path / "a.geojson").write_bytes(sim._geojson(record, mimics=True))
    (tmp_path / "b.geojson").write_bytes(sim._geojson(record, mimics=False))
    a, b = read_point_labels(tmp_path / "a.geojson"), read_point_labels(tmp_path / "b.geojson")
    assert a.mitoses.tolist() == [[1.5, 2.0], [30.0, 40.0]] and a.mimics.tolist() == [[5.0, 6.0]]
    assert b.mitoses.tolist() == a.mitoses.tolist() and len(b.mimics) == 0


def test_plot_and_merge(tmp_path):
    def run(strategy, f1s):
        rows = [{"round": i, "labelled": 2 * i, "f1": f} for i, f in enumerate(f1s)]
        rows.append({"round": len(f1s), "labelled": 2 * len(f1s), "f1": None})  # a round without a score
        return {
            "style": "pale",
            "test_fields": 20,
            "test_mitoses": 30,
            "strategies": [{"strategy": strategy, "rounds": rows}],
        }

    for name, f1s in (("u", [0.5, 0.7, 0.9]), ("r", [0.5, 0.6, 0.65])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "simulate_annotator.json").write_text(json.dumps(run(name, f1s)))
    sim.main(
        out=str(tmp_path / "both"),
        merge=f"{tmp_path / 'u' / 'simulate_annotator.json'},{tmp_path / 'r' / 'simulate_annotator.json'}",
    )
    merged = json.loads((tmp_path / "both" / "simulate_annotator.json").read_text())
    assert [s["strategy"] for s in merged["strategies"]] == ["u", "r"]
    with Image.open(tmp_path / "both" / "simulate_annotator.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600


def test_rescore_scores_each_rounds_served_version_again(tmp_path, monkeypatch):
    seen = []

    def fake_score(bundle, datalist):
        seen.append(Path(bundle).name)
        return dict.fromkeys(sim.SCORE_KEYS, 0.5 if Path(bundle).name == "bundle" else 0.9)

    monkeypatch.setattr(sim, "_score", fake_score)
    monkeypatch.setattr(sim, "_render", lambda root, style, n, size, seed: [{"mitoses": [[1, 2]]}] * n)
    rows = [
        {"round": 0, "f1": 0.1},
        {"round": 1, "f1": 0.2, "version": "v0001"},
        {"round": 2, "f1": 0.2, "version": "v0001"},
    ]
    results = {"style": "pale", "test_fields": 2, "test_mitoses": 1, "shipped": {"f1": 0.1}}
    results["strategies"] = [{"strategy": "random", "versions_dir": str(tmp_path / "v"), "rounds": rows}]
    out = sim.rescore_versions(results, tmp_path, test=3, test_size=64)
    assert seen == ["bundle", "v0001", "v0001"]  # round 0 is the shipped bundle; a failed round keeps its version
    assert [r["f1"] for r in out["strategies"][0]["rounds"]] == [0.5, 0.9, 0.9]
    assert (
        out["strategies"][0]["rounds"][1]["earlier_test"]["f1"] == 0.2 and out["shipped"]["earlier_test"]["f1"] == 0.1
    )
    assert (out["test_fields"], out["test_mitoses"], out["earlier_test"]["test_fields"]) == (3, 3, 2)

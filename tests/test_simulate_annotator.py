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

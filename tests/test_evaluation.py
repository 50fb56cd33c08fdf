"""Tests of mssn_monai.evaluation: scoring predictions against a datalist, the report, and the CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mssn_monai.evaluation import evaluate_predictions, format_report

REPO = Path(__file__).resolve().parents[1]


def _tif(path: Path, width: int = 32, height: int = 32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((height, width, 3), dtype=np.uint8), photometric="rgb")
    return str(path)


def _record(image: str, mitoses, spacing: float = 1.0) -> dict:
    return {"image": image, "mitoses": mitoses, "mimics": [], "spacing": spacing, "group": "g"}


def _sweep_fixture():
    # image a: gt at (0,0) and (100,0); detections: a hit (0.9), a far false positive (0.8), a hit (0.3)
    # image b: no ground truth; one false positive at 0.8. Radius 5 px.
    gts = [np.array([[0.0, 0.0], [100.0, 0.0]]), np.empty((0, 2))]
    dets = [np.array([[1.0, 0.0, 0.9], [200.0, 200.0, 0.8], [101.0, 0.0, 0.3]]), np.array([[5.0, 5.0, 0.8]])]
    return gts, dets


# --- evaluate_predictions -----------------------------------------------------------------------------


def test_evaluate_sweep_numbers_and_tie(tmp_path):
    gts, dets = _sweep_fixture()
    records = [_record(_tif(tmp_path / "a.tif"), gts[0].tolist()), _record(_tif(tmp_path / "b.tif"), [])]
    report = evaluate_predictions(records, {"a": dets[0], "b.tif": dets[1]}, radius_um=5.0, sweep=True)
    sw = report["sweep"]
    assert sw["thresholds"] == [0.3, 0.8, 0.9]
    assert sw["tp"] == [2, 1, 1] and sw["fp"] == [2, 2, 0] and sw["fn"] == [0, 1, 1]
    assert sw["precision"] == [0.5, 1 / 3, 1.0]
    assert sw["recall"] == [1.0, 0.5, 0.5]
    assert sw["f1"] == [2 / 3, 0.4, 2 / 3]
    # F1 2/3 at 0.3 and at 0.9: the lowest threshold wins
    assert (sw["best_threshold"], sw["best_f1"], sw["best_precision"], sw["best_recall"]) == (0.3, 2 / 3, 0.5, 1.0)
    assert report["overall"] == {
        "n_images": 2,
        "n_gt": 2,
        "n_pred": 4,
        "tp": 2,
        "fp": 2,
        "fn": 0,
        "precision": 0.5,
        "recall": 1.0,
        "f1": 2 / 3,
    }
    json.dumps(report)  # plain JSON types only
    text = format_report(report)
    assert "best F1 0.667 at score >= 0.3 (precision 0.500, recall 1.000)" in text
    assert "sweep over 3 thresholds" in text


def test_evaluate_threshold_keeps_scores_equal_to_it(tmp_path):
    gts, dets = _sweep_fixture()
    records = [_record(_tif(tmp_path / "a.tif"), gts[0].tolist()), _record(_tif(tmp_path / "b.tif"), [])]
    report = evaluate_predictions(records, {"a": dets[0], "b": dets[1]}, radius_um=5.0, threshold=0.8)
    a, b = report["per_image"]
    assert (a["tp"], a["fp"], a["fn"], a["n_pred"]) == (1, 1, 1, 2)
    assert (b["tp"], b["fp"], b["fn"], b["n_pred"]) == (0, 1, 0, 1)
    assert (b["precision"], b["recall"], b["f1"]) == (0.0, 1.0, 0.0)
    assert report["settings"] == {"section": "testing", "radius_um": 5.0, "matching": "optimal", "threshold": 0.8}
    assert "sweep" not in report


def test_evaluate_micro_differs_from_per_image_mean(tmp_path):
    # image a: one hit (F1 1); image b: three misses (F1 0). Mean of per-image F1 = 0.5, micro F1 = 2/5.
    records = [
        _record(_tif(tmp_path / "a.tif"), [[10, 10]]),
        _record(_tif(tmp_path / "b.tif"), [[5, 5], [15, 15], [25, 25]]),
    ]
    report = evaluate_predictions(records, {"a": [[10, 11, 0.7]], "b": np.empty((0, 3))}, radius_um=3.0)
    f1s = [d["f1"] for d in report["per_image"]]
    assert f1s == [1.0, 0.0]
    o = report["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (1, 0, 3)
    assert (o["precision"], o["recall"], o["f1"]) == (1.0, 0.25, 0.4)


def test_evaluate_greedy_vs_optimal(tmp_path):
    records = [_record(_tif(tmp_path / "a.tif"), [[10, 10], [20, 10]])]
    pred = {"a": [[14, 10, 0.9], [5, 10, 0.8]]}
    opt = evaluate_predictions(records, pred, radius_um=7.0, matching="optimal")["overall"]
    greedy = evaluate_predictions(records, pred, radius_um=7.0, matching=" greedy ")["overall"]
    assert (opt["tp"], opt["fp"], opt["fn"]) == (2, 0, 0)
    assert (greedy["tp"], greedy["fp"], greedy["fn"]) == (1, 1, 1)


def test_evaluate_radius_uses_each_image_spacing(tmp_path):
    # 8 um at 0.5 um/px = 16 px: a detection 16 px away matches, one 16.5 px away does not
    records = [
        _record(_tif(tmp_path / "a.tif"), [[10, 10]], spacing=0.5),
        _record(_tif(tmp_path / "b.tif"), [[10, 10]], spacing=0.5),
        _record(_tif(tmp_path / "c.tif"), [[10, 10]], spacing=0.25),  # 32 px
    ]
    pred = {"a": [[26, 10, 1.0]], "b": [[26.5, 10, 1.0]], "c": [[10, 40, 1.0]]}
    rows = evaluate_predictions(records, pred, radius_um=8.0)["per_image"]
    assert [d["radius_px"] for d in rows] == [16.0, 16.0, 32.0]
    assert [d["tp"] for d in rows] == [1, 0, 1]


def test_evaluate_counts_per_mm2(tmp_path):
    # 1000 x 1000 px at 0.25 um/px = 0.0625 mm^2: 3 mitoses -> 48 per mm^2; 2 kept detections -> 32
    Image.new("L", (1000, 1000)).save(tmp_path / "big.png")
    records = [_record(str(tmp_path / "big.png"), [[100, 100], [500, 500], [900, 900]], spacing=0.25)]
    pred = {"big": [[100, 100, 0.9], [500, 510, 0.6], [700, 700, 0.1]]}
    row = evaluate_predictions(records, pred, threshold=0.5)["per_image"][0]
    assert (row["width"], row["height"], row["area_mm2"]) == (1000, 1000, 0.0625)
    assert (row["gt_per_mm2"], row["pred_per_mm2"]) == (48.0, 32.0)
    assert (row["tp"], row["fp"], row["fn"]) == (2, 0, 1)  # (500, 510) is 10 px = 2.5 um away: a match
    text = format_report(evaluate_predictions(records, pred, threshold=0.5))
    assert "48.00" in text and "32.00" in text


def test_evaluate_missing_and_extra_predictions_warn(tmp_path, caplog):
    records = [_record(_tif(tmp_path / "a.tif"), [[5, 5]]), _record(_tif(tmp_path / "b.tif"), [[5, 5]])]
    pred = {"a": [[5, 5, 1.0]], "zz": [[1, 1, 1.0]]}
    with caplog.at_level(logging.WARNING, logger="mssn_monai.evaluation"):
        report = evaluate_predictions(records, pred)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("1 of 2 images have no predictions in the given predictions") and "b" in messages[0]
    assert "1 prediction entries" in messages[1] and messages[1].endswith("ignored: zz")
    b = report["per_image"][1]
    assert (b["n_pred"], b["tp"], b["fp"], b["fn"]) == (0, 0, 0, 1)


def test_evaluate_does_not_modify_predictions(tmp_path):
    records = [_record(_tif(tmp_path / "a.tif"), [[5, 5]])]
    det = np.array([[5.0, 5.0, 0.2], [9.0, 9.0, 0.9]])
    det0 = det.copy()
    evaluate_predictions(records, {"a": det}, threshold=0.5, sweep=True)
    np.testing.assert_array_equal(det, det0)


def test_evaluate_sweep_without_detections(tmp_path):
    records = [_record(_tif(tmp_path / "a.tif"), [[5, 5]])]
    report = evaluate_predictions(records, {}, sweep=True)
    assert report["sweep"]["thresholds"] == [] and report["sweep"]["best_threshold"] is None
    assert "sweep: no detections" in format_report(report)


def test_evaluate_errors(tmp_path):
    a = _tif(tmp_path / "a.tif")
    with pytest.raises(ValueError, match="the given records is empty"):
        evaluate_predictions([], {})
    with pytest.raises(ValueError, match="matching: By 'optimall', did you mean 'optimal'"):
        evaluate_predictions([_record(a, [])], {}, matching="optimall")
    with pytest.raises(ValueError, match="radius_um must be a positive number"):
        evaluate_predictions([_record(a, [])], {}, radius_um=0)
    with pytest.raises(ValueError, match="share the stem 'a'"):
        evaluate_predictions([_record(a, []), _record(str(tmp_path / "sub" / "a.png"), [])], {})
    with pytest.raises(ValueError, match="a.tif: 'spacing' must be a positive number"):
        evaluate_predictions([{"image": a, "mitoses": []}], {})
    with pytest.raises(ValueError, match=r"a.tif: 'mitoses': expected a list of finite \[x, y\] points"):
        evaluate_predictions([_record(a, [[1, 2, 3]])], {})
    with pytest.raises(ValueError, match=r"the given predictions: a: expected \(N, 3\) detections"):
        evaluate_predictions([_record(a, [])], {"a": [[1, 2, 3, 4]]})
    with pytest.raises(FileNotFoundError, match="nope.tif: no such image file"):
        evaluate_predictions([_record(str(tmp_path / "nope.tif"), [])], {})


def test_evaluate_reads_datalist_sections(tmp_path):
    _tif(tmp_path / "img" / "a.tif")
    _tif(tmp_path / "img" / "b.tif")
    datalist = {
        "training": [_record("img/a.tif", [[5, 5]])],
        "validation": [],
        "testing": [_record("img/b.tif", [[5, 5]])],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    pred = {"a": [[5, 5, 1.0]], "b": [[5, 5, 1.0]]}
    report = evaluate_predictions(tmp_path / "datalist.json", pred, section="all")
    assert [d["image"] for d in report["per_image"]] == ["a", "b"]
    assert report["settings"]["section"] == "all"
    with pytest.raises(ValueError, match="section 'validation' is empty"):
        evaluate_predictions(tmp_path / "datalist.json", pred, section="validation")


# --- command line -------------------------------------------------------------------------------------


def _cli_fixture(tmp_path: Path) -> tuple[Path, Path]:
    _tif(tmp_path / "images" / "a.tif")
    _tif(tmp_path / "images" / "b.tif")
    datalist = {
        "training": [],
        "validation": [],
        "testing": [
            _record("images/a.tif", [[5, 5], [20, 20]], spacing=0.5),
            _record("images/b.tif", [[10, 10]], spacing=0.5),
        ],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "a.csv").write_text("5,6,0.9\n30,2,0.4\n")  # hit (1 px), false positive
    (pred / "b.csv").write_text("x,y,score\n13,14,0.8\n")  # 5 px = 2.5 um: a hit at radius 4 um (8 px)
    return tmp_path / "datalist.json", pred


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mssn_monai", "evaluate", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_cli_evaluate(tmp_path):
    datalist, pred = _cli_fixture(tmp_path)
    out = tmp_path / "metrics.json"
    res = _run_cli("--datalist", str(datalist), "--pred", str(pred), "--out", str(out), "--radius_um", "4", "--sweep")
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["settings"] == {"section": "testing", "radius_um": 4.0, "matching": "optimal", "threshold": None}
    o = report["overall"]
    assert (o["tp"], o["fp"], o["fn"], o["n_gt"], o["n_pred"]) == (2, 1, 1, 3, 3)
    assert (o["precision"], o["recall"], o["f1"]) == (2 / 3, 2 / 3, 2 / 3)
    a, b = report["per_image"]
    assert (a["image"], a["tp"], a["fp"], a["fn"], a["radius_px"]) == ("a", 1, 1, 1, 8.0)
    # 32 x 32 px at 0.5 um/px = 256 um^2 = 0.000256 mm^2; 2 mitoses -> 7812.5 per mm^2
    assert (a["area_mm2"], a["gt_per_mm2"]) == (0.000256, 7812.5)
    assert (b["tp"], b["fp"], b["fn"]) == (1, 0, 0)
    assert report["sweep"]["thresholds"] == [0.4, 0.8, 0.9]
    assert report["sweep"]["f1"] == [2 / 3, 0.8, 0.5]
    assert report["sweep"]["best_threshold"] == 0.8
    assert "overall (micro, 2 images" in res.stdout


def test_cli_bad_csv_row(tmp_path):
    datalist, pred = _cli_fixture(tmp_path)
    (pred / "b.csv").write_text("13,14,0.8\n13,oops,0.8\n")
    out = tmp_path / "metrics.json"
    res = _run_cli("--datalist", str(datalist), "--pred", str(pred), "--out", str(out))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "b.csv:2" in lines[0]
    assert not out.exists()

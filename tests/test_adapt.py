"""``adapt``: an adapted bundle that detect and the bundle workflow use; bad input refused with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mssn_monai.adapt import leave_one_field_out_threshold
from mssn_monai.checkpoints import DEFAULT_BUNDLE, file_sha256, load_detector, load_network
from mssn_monai.cli import main
from mssn_monai.data.datalist import write_datalist
from mssn_monai.data.formats import read_mitos_atypia14
from mssn_monai.data.synthetic import generate_dataset
from mssn_monai.io import read_detections_csv


@pytest.fixture(scope="module")
def pale(tmp_path_factory) -> Path:
    """Three labelled 512x512 fields of a look the shipped weights never saw (``pale``), with mitoses."""
    root = tmp_path_factory.mktemp("pale")
    generate_dataset(root / "fields", n_images=6, size=(512, 512), seed=6, frames_per_slide=1, style="pale")
    records = [r for r in read_mitos_atypia14(root / "fields") if r["mitoses"]][:3]
    assert records, "the generator gave no field with a mitosis"
    write_datalist({"training": records, "validation": [], "testing": records}, root / "datalist.json")
    return root / "datalist.json"


def test_leave_one_field_out_threshold_is_median_of_folds():
    # three fields, one mitosis each at (10, 10); detections: the mitosis (p) and a false positive (q)
    gts = [np.array([[10.0, 10.0]])] * 3
    dets = [np.array([[10.0, 10.0, p], [50.0, 50.0, q]]) for p, q in ((0.9, 0.2), (0.8, 0.3), (0.7, 0.1))]
    threshold, f1 = leave_one_field_out_threshold(gts, dets, [2.0] * 3)
    # each fold keeps its mitoses above the others' false positives: every held-out field is scored perfectly
    assert f1 == 1.0
    assert 0.3 < threshold <= 0.7
    one, nan = leave_one_field_out_threshold(gts[:1], dets[:1], [2.0])
    assert 0.2 < one <= 0.9 and np.isnan(nan)


def test_joint_threshold_weighs_the_old_look_the_same():
    # new look: mitosis at 0.3, false positive at 0.1; old look: mitosis at 0.9, false positive at 0.25
    gts = [np.array([[10.0, 10.0]])] * 3
    new = [np.array([[10.0, 10.0, 0.3], [50.0, 50.0, 0.1]])] * 3
    old = ([np.array([[10.0, 10.0]])] * 2, [np.array([[10.0, 10.0, 0.9], [50.0, 50.0, 0.25]])] * 2, [2.0] * 2)
    alone, _ = leave_one_field_out_threshold(gts, new, [2.0] * 3)
    joint, f1 = leave_one_field_out_threshold(gts, new, [2.0] * 3, old)
    # alone: F1-best from 0.3 down to the middle of the gap to 0.1; jointly only (0.25, 0.3] is perfect on both
    assert alone == pytest.approx(0.2) and joint == pytest.approx(0.275)
    assert f1 == 1.0  # the held-out F1 is the new fields'
    one, _ = leave_one_field_out_threshold(gts[:1], new[:1], [2.0], old)
    assert one == pytest.approx(0.275)


def test_adapt_writes_a_bundle_detect_uses(pale, tmp_path, capsys):
    out = tmp_path / "adapted"
    main(["adapt", "--datalist", str(pale), "--out", str(out), "--epochs", "0"])
    assert "adapted bundle in" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "models").iterdir()) == ["int8_calibration.json", "model.pt", "model.ts"]
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["fields"] == len(json.loads(pale.read_text())["training"]) and report["epochs"] == 0
    # its own int8 calibration, for its own weights: the new fields, then the samples/ fields, 8 in all
    assert report["int8_calibration_fields"] == 8
    calibration = json.loads((out / "models" / "int8_calibration.json").read_text())
    assert calibration["weights_sha256"] == file_sha256(out / "models" / "model.pt")
    shipped = load_detector()
    adapted = load_detector(out)
    # the bank gained the new look's references; the old ones are still there (no gradient step)
    n_old = shipped.detector.fpr.references.shape[0]
    assert adapted.detector.fpr.references.shape[0] > n_old
    assert torch.equal(adapted.detector.fpr.references[:n_old], shipped.detector.fpr.references)
    # without fine-tuning stage 1 keeps its weights; its BatchNorm statistics moved to the pale look
    assert report["aligned"] and report["alignment_source_fields"] == 8  # the bundle's samples/
    moved = []
    for name, value in shipped.detector.fnr.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            moved.append(not torch.equal(adapted.detector.fnr.state_dict()[name], value))
        else:
            assert torch.equal(adapted.detector.fnr.state_dict()[name], value), name
    assert moved and all(moved)
    config = json.loads((out / "configs" / "inference.json").read_text())
    assert config["candidate_threshold"] == report["candidate_threshold"]
    assert float(adapted.detector.candidate_threshold) == report["candidate_threshold"]
    assert float(adapted.detector.fpr.operating_threshold) == pytest.approx(report["operating_threshold"])
    # detect --bundle OUT runs the adapted detector; the TorchScript export gives the same detections
    image = Path(json.loads(pale.read_text())["training"][0]["image"])
    image = pale.parent / image if not image.is_absolute() else image
    main(["detect", "--input", str(image), "--out", str(tmp_path / "det"), "--bundle", str(out)])
    rows = read_detections_csv(tmp_path / "det" / f"{image.stem}.csv")
    from mssn_monai.io import read_image_rgb

    expected = adapted(read_image_rgb(image), 0.2456)["detections"]
    np.testing.assert_allclose(rows[:, :2], expected[:, :2], atol=0.01)
    main(["detect", "--input", str(image), "--out", str(tmp_path / "det8"), "--bundle", str(out), "--int8"])
    assert json.loads((tmp_path / "det8" / f"{image.stem}.json").read_text())["settings"]["int8"] is True
    scripted = torch.jit.load(str(out / "models" / "model.ts"))
    net = load_network(out / "models" / "model.pt", out / "configs" / "inference.json", "network_def")
    field = adapted.prepare(read_image_rgb(image))
    with torch.inference_mode():
        got, want = scripted.detect(field, 0.2456)["detections"], net.detect(field, 0.2456)["detections"]
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_adapt_unlabelled_aligns_stage1_only(pale, tmp_path, capsys):
    records = json.loads(pale.read_text())["training"]
    bare = [{"image": str((pale.parent / r["image"]).resolve()), "spacing": r["spacing"]} for r in records]
    (tmp_path / "bare.json").write_text(json.dumps({"training": bare}))
    out = tmp_path / "aligned"
    main(["adapt", "--datalist", str(tmp_path / "bare.json"), "--out", str(out), "--unlabelled", "--noint8"])
    assert not (out / "models" / "int8_calibration.json").exists()  # --noint8: no calibration
    assert f"stage 1 aligned to {len(bare)} fields" in capsys.readouterr().out
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["aligned"] and report["mitoses"] == 0 and "seconds_fine_tune" not in report
    shipped, aligned = load_detector(), load_detector(out)
    for name, value in shipped.detector.fpr.state_dict().items():  # stage 2, its bank and thresholds: unchanged
        assert torch.equal(aligned.detector.fpr.state_dict()[name], value), name
    assert float(aligned.detector.candidate_threshold) == float(shipped.detector.candidate_threshold)
    fnr_a, fnr_s = aligned.detector.fnr.state_dict(), shipped.detector.fnr.state_dict()
    assert any(not torch.equal(fnr_a[k], v) for k, v in fnr_s.items() if k.endswith("running_mean"))
    # aligning the bundle to its own look (its samples as the new fields) leaves stage 1 as it was
    same = tmp_path / "same"
    main(["adapt", "--datalist", str(DEFAULT_BUNDLE / "samples" / "datalist.json"), "--section", "testing",
          "--out", str(same), "--unlabelled"])  # fmt: skip
    for name, value in fnr_s.items():
        torch.testing.assert_close(load_detector(same).detector.fnr.state_dict()[name], value, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "case",
    [
        "no_mitoses",
        "missing_image",
        "existing_out",
        "no_weights",
        "bad_epochs",
        "no_source",
        "noalign",
        "joint_unlabelled",
        "joint_no_source",
    ],
)
def test_adapt_bad_input_one_line_nothing_written(pale, tmp_path, case):
    datalist, out, bundle = pale, tmp_path / "out", DEFAULT_BUNDLE
    records = json.loads(pale.read_text())["training"]
    for r in records:
        r["image"] = str((pale.parent / r["image"]).resolve())
    extra: list[str] = []
    if case == "no_mitoses":
        datalist = tmp_path / "dl.json"
        datalist.write_text(json.dumps({"training": [{**r, "mitoses": []} for r in records]}))
    elif case == "missing_image":
        datalist = tmp_path / "dl.json"
        datalist.write_text(json.dumps({"training": [{**records[0], "image": str(tmp_path / "gone.png")}]}))
    elif case == "existing_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "no_weights":
        bundle = tmp_path / "empty_bundle"
        (bundle / "configs").mkdir(parents=True)
        for f in (DEFAULT_BUNDLE / "configs").iterdir():
            (bundle / "configs" / f.name).write_bytes(f.read_bytes())
    elif case == "bad_epochs":
        extra = ["--epochs", "-1"]
    elif case in ("no_source", "joint_no_source"):  # a bundle with weights but no samples/, and no --replay
        bundle = tmp_path / "bare_bundle"
        for part in ("configs", "models"):
            (bundle / part).mkdir(parents=True)
            for f in (DEFAULT_BUNDLE / part).glob("*.*"):
                (bundle / part / f.name).write_bytes(f.read_bytes())
        extra = ["--unlabelled"] if case == "no_source" else ["--joint-threshold", "--epochs", "0"]
    elif case == "noalign":
        extra = ["--unlabelled", "--noalign"]
    elif case == "joint_unlabelled":
        extra = ["--unlabelled", "--joint-threshold"]
    cmd = [sys.executable, "-m", "mssn_monai", "adapt", "--datalist", str(datalist), "--out", str(out)]
    r = subprocess.run([*cmd, "--bundle", str(bundle), *extra], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    if case == "existing_out":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".out.*")), "a temporary bundle folder was left behind"


@pytest.mark.slow
def test_adapt_fine_tune_changes_both_stages(pale, tmp_path):
    out = tmp_path / "tuned"
    main(["adapt", "--datalist", str(pale), "--out", str(out), "--epochs", "1", "--device", "cpu"])
    shipped, tuned = load_detector(), load_detector(out)
    for stage in ("fnr", "fpr"):
        a = torch.cat([p.flatten() for p in getattr(shipped.detector, stage).parameters()])
        b = torch.cat([p.flatten() for p in getattr(tuned.detector, stage).parameters()])
        assert not torch.equal(a, b), stage
    report = json.loads((out / "adapt_report.json").read_text())
    assert set(report["seconds_fine_tune"]) == {"fine-tune stage 1", "fine-tune stage 2"}


def test_replay_fields_spread_over_the_datalist():
    from mssn_monai.data.datalist import spread as _spread

    recs = [{"image": str(i)} for i in range(10)]
    assert [r["image"] for r in _spread(recs, 4)] == ["0", "3", "6", "9"]
    assert _spread(recs, 20) == recs and _spread(recs, 0) == [] and _spread([], 3) == []
    assert [r["image"] for r in _spread(recs, 1)] == ["0"]


def test_alignment_tiles_are_whole_spread_and_bounded():
    from mssn_monai.adapt import ALIGN_TILE_PX, ALIGN_TILES_PER_IMAGE, _tiles

    fields = load_detector()
    rng = np.random.default_rng(0)
    big = rng.integers(120, 230, size=(5000, 4500, 3), dtype=np.uint8)  # 5 x 5 tile positions, read window by window
    small = rng.integers(120, 230, size=(300, 500, 3), dtype=np.uint8)
    tiles = list(_tiles(fields, [big, small]))
    assert len(tiles) == ALIGN_TILES_PER_IMAGE + 1
    assert all(t.shape == (1, 3, ALIGN_TILE_PX, ALIGN_TILE_PX) for t in tiles[:-1])
    assert tiles[-1].shape == (1, 3, 300, 500)
    # the first and last grid positions are among those measured, and a tile equals that window normalised alone
    crop = fields.reader(big)
    torch.testing.assert_close(tiles[0][0], crop(0, ALIGN_TILE_PX, 0, ALIGN_TILE_PX))
    torch.testing.assert_close(tiles[ALIGN_TILES_PER_IMAGE - 1][0], crop(3976, 5000, 3476, 4500))


def test_adapt_joint_threshold_fits_on_both_looks(pale, tmp_path):
    from mssn_monai.constants import MATCH_RADIUS_UM
    from mssn_monai.data.datalist import load_datalist
    from mssn_monai.handlers import voted_candidates
    from mssn_monai.io import read_image_rgb

    out = tmp_path / "joint"
    main(["adapt", "--datalist", str(pale), "--out", str(out), "--epochs", "0", "--joint-threshold"])
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["operating_threshold_fields"] == "new and old look, each weighing the same"
    assert report["operating_threshold_old_fields"] == 8  # the bundle's samples/
    # the stored threshold is the joint leave-one-field-out fit on the adapted detector's own votes
    adapted = load_detector(out)
    adapted.detector.threshold_override = 0.0

    def votes(records):
        outputs = [adapted(read_image_rgb(r["image"]), float(r["spacing"])) for r in records]
        gts = [np.asarray(r["mitoses"], dtype=np.float64).reshape(-1, 2) for r in records]
        return gts, voted_candidates(adapted, outputs), [MATCH_RADIUS_UM / float(r["spacing"]) for r in records]

    samples = DEFAULT_BUNDLE / "samples" / "datalist.json"
    expected, _ = leave_one_field_out_threshold(
        *votes(load_datalist(pale, "training")), old=votes(load_datalist(samples, "testing"))
    )
    assert report["operating_threshold"] == pytest.approx(expected, abs=1e-6)

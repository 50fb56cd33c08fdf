"""End to end: the bundle's train.json trains both stages on generated fields into models/model.pt, resumes,
and feeds `detect` and `candidates`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mssn_monai.checkpoints import load_network
from mssn_monai.io import read_detections_csv

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


@pytest.mark.slow
def test_train_resume_and_candidates(tmp_path):
    data = tmp_path / "data"  # seed 3: two mitoses land in the training split
    _run(
        "-m",
        "mssn_monai",
        "synth",
        "--out",
        str(data),
        "--n-images",
        "6",
        "--size",
        "256,256",
        "--seed",
        "3",
        "--frames-per-slide",
        "2",
        cwd=tmp_path,
    )
    _run(
        "-m",
        "mssn_monai",
        "prepare",
        "--format",
        "mitos-atypia-14",
        "--root",
        str(data),
        "--out",
        str(data / "datalist.json"),
        "--val-fraction",
        "0.34",
        "--test-fraction",
        "0",
        cwd=tmp_path,
    )
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    common = [
        "--config_file",
        str(bundle / "configs" / "train.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(data),
        "--mining_epoch",
        "1",
        "--val_interval",
        "1",
        "--samples_per_epoch",
        "32",
        "--batch_size",
        "16",
        "--num_workers",
        "0",
        "--fpr_val_interval",
        "1",
        "--fpr_samples_per_epoch",
        "48",
        "--fpr_batch_size",
        "24",
    ]
    first = _run("-m", "monai.bundle", "run", "training", *common, "--epochs", "1", "--fpr_epochs", "1", cwd=tmp_path)
    assert "val_candidate_recall" in first.stdout + first.stderr
    assert "hard-negative mining round 1" in first.stdout + first.stderr
    assert "val_reference_accuracy" in first.stdout + first.stderr  # stage-2 validation on held-out patches
    assert "operating point fitted on 2 held-out fields" in first.stdout + first.stderr
    model = bundle / "models" / "model.pt"  # the one weight file: the whole detector
    assert not (bundle / "models" / "fnr.pt").exists() and not (bundle / "models" / "fpr.pt").exists()
    fpr = load_network(model, bundle / "configs" / "train.json", "network_def").fpr
    assert len(fpr.references) > 0 and set(fpr.reference_classes.tolist()) <= {0, 1, 2}
    model1 = torch.load(model, map_location="cpu")
    assert {k.split(".")[0] for k in model1} == {"fnr", "fpr"}
    epoch1 = {k: v.clone() for k, v in model1.items() if k.startswith("fnr.")}

    # the same seed on CPU gives the same weights: a fresh run into another bundle
    again = tmp_path / "again"
    shutil.copytree(ROOT / "bundle" / "configs", again / "configs")
    fresh = [a if a != str(bundle) else str(again) for a in common]
    fresh[fresh.index("--config_file") + 1] = str(again / "configs" / "train.json")
    _run("-m", "monai.bundle", "run", "training", *fresh, "--epochs", "1", "--fpr_epochs", "1", cwd=tmp_path)
    model_again = torch.load(again / "models" / "model.pt", map_location="cpu")
    assert model_again.keys() == model1.keys()
    assert all(torch.equal(model1[k], model_again[k]) for k in model1)

    second = _run("-m", "monai.bundle", "run", *common, "--epochs", "2", "--fpr_epochs", "2", cwd=tmp_path)
    log = second.stdout + second.stderr
    assert log.count("Restored all variables") == 2  # both stages resume from their last checkpoints
    assert "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log
    epoch2 = torch.load(model, map_location="cpu")
    assert any(not torch.equal(epoch1[k], epoch2[k]) for k in epoch1)

    detector = load_network(model, bundle / "configs" / "inference.json", "network_def")
    assert len(detector.fpr.references) > 0 and not detector.training
    _run(
        "-m",
        "mssn_monai",
        "detect",
        "--input",
        str(data),
        "--out",
        str(tmp_path / "det"),
        "--bundle",
        str(bundle),
        cwd=tmp_path,
    )
    assert len(list((tmp_path / "det").glob("*.geojson"))) == 6

    out = tmp_path / "cand"
    _run(
        "-m",
        "mssn_monai",
        "candidates",
        "--input",
        str(data),
        "--out",
        str(out),
        "--bundle",
        str(bundle),
        "--threshold",
        "0.0",
        cwd=tmp_path,
    )
    csvs = sorted(out.glob("*.csv"))
    assert len(csvs) == 6
    assert all(read_detections_csv(p).shape[1] == 3 for p in csvs)

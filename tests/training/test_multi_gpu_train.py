"""Multi-GPU training: ``multi_gpu_train.json`` over ``train.json`` under ``torchrun`` (gloo on CPU, 2 processes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mssn_monai.distributed
from mssn_monai.checkpoints import load_network, save_state_dict
from mssn_monai.distributed import MethodAsForward, all_gather_objects, broadcast_module_state, log_rank_summary

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # the torchrun of this interpreter's environment


def _run(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def _tiny_dataset(tmp_path: Path) -> Path:
    """Six 256x256 synthetic fields, four for training (two mitoses, seed 3) and two for validation."""
    data = tmp_path / "data"
    synth = ["synth", "--out", str(data), "--n-images", "6", "--size", "256,256", "--seed", "3"]
    _run(sys.executable, "-m", "mssn_monai", *synth, "--frames-per-slide", "2", cwd=tmp_path)
    prepare = ["prepare", "--format", "mitos-atypia-14", "--root", str(data), "--out", str(data / "datalist.json")]
    _run(sys.executable, "-m", "mssn_monai", *prepare, "--val-fraction", "0.34", "--test-fraction", "0", cwd=tmp_path)
    return data


def test_override_ids_exist_in_train_json():
    """Every nested id the override sets hangs under an id of train.json (a renamed one would silently add a new id)."""
    train = json.loads((CONFIGS / "train.json").read_text())
    override = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    for key in override:
        if "#" not in key:
            continue
        *parents, leaf = key.split("#")
        node = train
        for part in parents:
            assert isinstance(node, dict) and part in node, (
                f"multi_gpu_train.json sets {key!r}: no {part!r} in train.json"
            )
            node = node[part]
        if leaf != "sampler":  # the samplers are new ids beside train.json's dataloaders
            assert leaf in node, f"multi_gpu_train.json sets {key!r}, which train.json does not have"
    assert train["training"] == "%run"  # `run training` runs the same list as `run`


def test_single_process_helpers_are_no_ops():
    net = torch.nn.Linear(2, 1)
    before = [p.clone() for p in net.parameters()]
    broadcast_module_state(net)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    wrapped = MethodAsForward(net, "extra_repr")
    assert wrapped() == net.extra_repr()
    assert [n for n, _ in wrapped.named_parameters()] == ["module.weight", "module.bias"]
    with pytest.raises(TypeError, match="no method 'classify'"):
        MethodAsForward(net, "classify")

    class _State:
        iteration = 3

    class _Engine:
        state = _State()

    line = log_rank_summary({"fnr": _Engine()}, {"fnr": net})
    assert line.startswith("rank 0 of 1: fnr 3 iterations, fnr parameter checksum ")


def test_save_state_dict_writes_on_rank_zero_only(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 1)
    monkeypatch.setattr(mssn_monai.distributed, "get_rank", lambda: 1)
    save_state_dict(net, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()
    monkeypatch.setattr(mssn_monai.distributed, "get_rank", lambda: 0)
    save_state_dict(net, tmp_path / "model.pt")
    assert sorted(torch.load(tmp_path / "model.pt")) == ["bias", "weight"]


@pytest.mark.slow
def test_two_process_training_then_resume(tmp_path):
    data = _tiny_dataset(tmp_path)
    bundle = tmp_path / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")]
    command = [
        *TORCHRUN,
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        repr(configs),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(data),
        "--mining_epoch",
        "1",
        "--val_interval",
        "1",
        "--samples_per_epoch",
        "32",  # 16 per rank: 2 iterations of 8 on each (4 in one process)
        "--batch_size",
        "8",
        "--num_workers",
        "0",
        "--fpr_val_interval",
        "1",
        "--fpr_samples_per_epoch",
        "48",  # 24 per rank: 2 iterations of 12
        "--fpr_batch_size",
        "12",
    ]
    first = _run(*command, "--epochs", "1", "--fpr_epochs", "1", cwd=tmp_path, timeout=300)
    log = first.stdout + first.stderr
    summaries = dict(re.findall(r"rank (\d) of 2: (.*)", log))
    assert sorted(summaries) == ["0", "1"], log[-4000:]  # both ranks ran to the end
    # same line on both ranks: each ran 2 iterations per stage (its half of the samples) and ended with the
    # same weights (gradients were averaged) and the same hard negatives (mining results were shared)
    assert summaries["0"] == summaries["1"], summaries
    assert "fnr 2 iterations, fpr 2 iterations" in summaries["0"]
    assert re.search(r"fnr hard negatives [1-9]", summaries["0"]), summaries["0"]
    assert log.count("hard-negative mining round 1") == 2  # stage 1 at epoch 1, stage 2 before training: rank 0 only
    assert "val_candidate_recall" in log and "val_reference_accuracy" in log  # validation on rank 0
    assert "operating point fitted on 2 held-out fields" in log

    models = bundle / "models"
    # the one weight file, rank 0's: strict (a plain state dict, no "module." prefix), with its reference bank
    detector = load_network(models / "model.pt", configs[0], "network_def")
    assert not any(k.startswith("module.") for k in torch.load(models / "model.pt", map_location="cpu"))
    assert len(detector.fpr.references) > 0  # the reference bank built on rank 0 is in the saved weights
    assert not (models / "fnr.pt").exists() and not (models / "fpr.pt").exists()
    for name in ("fnr_train_checkpoint_epoch=1.pt", "fpr_train_checkpoint_epoch=1.pt"):
        assert (models / name).is_file(), sorted(p.name for p in models.iterdir())

    second = _run(*command, "--epochs", "2", "--fpr_epochs", "2", cwd=tmp_path, timeout=300)
    log = second.stdout + second.stderr
    summaries = dict(re.findall(r"rank (\d) of 2: (.*)", log))
    assert log.count("Restored all variables") == 2  # rank 0's report; rank 1's iteration count shows it resumed too
    assert summaries["0"] == summaries["1"], summaries
    assert "fnr 4 iterations, fpr 4 iterations" in summaries["1"]

"""Weights that must not load, runs that must not resume, data sets that must stop a workflow at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_network
from mssn_monai.data.datalist import check_sections
from mssn_monai.handlers import TrainingCheckpoint

CONFIG = DEFAULT_BUNDLE / "configs" / "inference.json"
WEIGHTS = DEFAULT_BUNDLE / "models" / "model.pt"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_nan_weights_are_refused_naming_the_file_and_tensor(tmp_path):
    state = torch.load(WEIGHTS, map_location="cpu")
    key = "fpr.calibration"
    state[key] = torch.tensor([float("nan"), 0.0])
    torch.save(state, tmp_path / "diverged.pt")
    with pytest.raises(
        ValueError, match=r"diverged\.pt: 1 weight tensor\(s\) hold NaN or infinite values \(fpr\.calibration\)"
    ):
        load_network(tmp_path / "diverged.pt", CONFIG)


def test_non_matching_keys_give_a_short_message(tmp_path):
    state = {f"x.{k}": v for k, v in torch.load(WEIGHTS, map_location="cpu").items()}
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="missing keys") as e:
        load_network(tmp_path / "other.pt", CONFIG)
    assert len(str(e.value)) < 600 and "and 1" in str(e.value)


@pytest.mark.parametrize("content", ["random", "pickle_with_code"])
def test_unreadable_weights_never_advise_running_the_file(tmp_path, content):
    path = tmp_path / "model.pt"
    if content == "random":
        path.write_bytes(os.urandom(4096))
    else:
        torch.save({"w": _Evil()}, path)
    with pytest.raises(ValueError, match="not a readable weights file") as e:
        load_network(path, CONFIG)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_detect_with_nan_weights_exits_2_and_writes_nothing(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "configs" / "inference.json").write_bytes(CONFIG.read_bytes())
    state = torch.load(WEIGHTS, map_location="cpu")
    key = next(k for k, v in state.items() if v.is_floating_point() and k.startswith("fnr."))
    state[key] = state[key] * float("inf")
    torch.save(state, bundle / "models" / "model.pt")
    sample = sorted(p for p in (DEFAULT_BUNDLE / "samples").rglob("*") if p.suffix in (".png", ".tif", ".tiff"))[0]
    cmd = [sys.executable, "-m", "mssn_monai", "detect", "--input", str(sample), "--out", str(tmp_path / "out")]
    r = subprocess.run([*cmd, "--bundle", str(bundle)], capture_output=True, text=True)
    assert r.returncode == 2 and "NaN or infinite" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "out").exists()


def _attach(tmp_path, fingerprint, resume=True):
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    TrainingCheckpoint(tmp_path, "fnr_train", {"network": net}, resume=resume, fingerprint=fingerprint).attach(engine)
    return engine


def test_resuming_a_run_made_on_other_data_is_refused(tmp_path):
    engine = _attach(tmp_path, {"data": ["a.png", "b.png"]})
    engine.run([0], max_epochs=1)
    assert (tmp_path / "fnr_train_checkpoint_epoch=1.pt").is_file()
    _attach(tmp_path, {"data": ["a.png", "b.png"]})  # the same data: resumes
    with pytest.raises(ValueError, match="made on other training data or settings.*--resume false"):
        _attach(tmp_path, {"data": ["c.png"]})
    _attach(tmp_path, {"data": ["c.png"]}, resume=False)  # asked to start afresh: allowed, and recorded
    assert json.loads((tmp_path / "fnr_train_fingerprint.json").read_text())["sha256"]


def test_training_stops_at_once_without_validation_fields(tmp_path):
    records = [{"image": "a.png", "mitoses": [[1, 2]], "spacing": 0.25}]
    (tmp_path / "dl.json").write_text(json.dumps({"training": records, "validation": []}))
    with pytest.raises(ValueError, match=r"dl\.json: section 'validation' is empty"):
        check_sections(tmp_path / "dl.json")
    (tmp_path / "dl.json").write_text(json.dumps({"training": [{**records[0], "mitoses": []}], "validation": records}))
    with pytest.raises(ValueError, match="no mitosis to learn from"):
        check_sections(tmp_path / "dl.json")


@pytest.mark.parametrize(
    ("device", "message"), [("bogus", "is not a device"), ("cuda", "no CUDA device"), ("meta", "not supported")]
)
def test_bad_device_is_one_line_and_nothing_is_written(tmp_path, capsys, device, message):
    import torch

    from mssn_monai.cli import main
    from mssn_monai.io import write_image

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_image(tmp_path / "f.png", np.full((32, 32, 3), 200, np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--input", str(tmp_path / "f.png"), "--out", str(tmp_path / "o"), "--device", device])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0] and "--device" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())

"""scripts/refit_operating_point.py: calibration and operating threshold refitted on labelled fields, weights kept."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_detector
from mssn_monai.data.datalist import write_datalist
from mssn_monai.data.formats import read_mitos_atypia14
from mssn_monai.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_refit_changes_the_operating_point_only(tmp_path):
    generate_dataset(tmp_path / "fields", n_images=3, size=(512, 512), seed=6, frames_per_slide=1, style="pale")
    records = [
        {**r, "domain": "pale" if i % 2 else "pale-b"} for i, r in enumerate(read_mitos_atypia14(tmp_path / "fields"))
    ]
    write_datalist({"validation": records}, tmp_path / "datalist.json")
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE / "configs", bundle / "configs")
    shutil.copytree(DEFAULT_BUNDLE / "models", bundle / "models", ignore=shutil.ignore_patterns("*checkpoint*"))
    (bundle / "models" / "model.ts").write_bytes(b"stale")
    cmd = [sys.executable, str(ROOT / "scripts" / "refit_operating_point.py"), "--bundle", str(bundle)]
    run = subprocess.run([*cmd, "--datalist", str(tmp_path / "datalist.json")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout[run.stdout.index("{") :])
    assert report["fields_domains"] == 2.0 and 0.0 <= report["fields_f1"] <= 1.0
    assert not (bundle / "models" / "model.ts").exists()  # stale TorchScript removed
    before, after = load_detector(DEFAULT_BUNDLE), load_detector(bundle)
    assert float(after.detector.operating_threshold()) == pytest.approx(report["fields_operating_threshold"], rel=1e-6)
    for name, value in before.detector.state_dict().items():  # weights and bank unchanged; calibration may move
        if "calibration" not in name and "operating" not in name:
            assert torch.equal(after.detector.state_dict()[name], value), name

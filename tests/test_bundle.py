"""The bundle's metadata and the CLI's surface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/schema is not beside the checkout")
def test_metadata_verifies_against_schema():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(ROOT / "bundle" / "configs" / "metadata.json"),
            "--filepath",
            str(SCHEMA),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "metadata is verified with no error" in r.stdout + r.stderr


def test_metadata_versions_match_package():
    import mssn_monai

    meta = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["version"] == mssn_monai.__version__
    # only packages a public index has: the code the configs import travels in the packaged bundle
    assert "mssn-monai" not in meta["required_packages_version"]
    assert all(v.count(".") >= 1 and v[0].isdigit() for v in meta["required_packages_version"].values())
    assert "synthetic" in meta["intended_use"]


def test_bundle_files_exist():
    for rel in ("configs/metadata.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE"):
        assert (ROOT / "bundle" / rel).is_file(), rel


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "mssn_monai", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    # python-fire writes its help to stderr
    for command in ("synth", "prepare", "baseline", "evaluate", "demo"):
        assert command in r.stdout + r.stderr


def test_inference_workflow_has_monai_infer_properties():
    """MONAI Label and Deploy integrations call check_properties() on inference.json."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(ROOT / "bundle" / "configs" / "inference.json"),
        workflow_type="infer",
        bundle_root=str(ROOT / "bundle"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize("config, workflow_type", [("inference.json", "infer"), ("train.json", "train")])
def test_create_workflow_check_properties(tmp_path, config, workflow_type):
    """``create_workflow(...).check_properties()`` (the model zoo's and MONAI Label's check) finds every property.

    train.json needs a dataset to build its trainer: two sample fields for training, one for validation;
    checkpoints and logs go to ``tmp_path`` so the bundle is left as it was.
    """
    from monai.bundle import create_workflow

    configs = ROOT / "bundle" / "configs"
    records = json.loads((ROOT / "bundle" / "samples" / "datalist.json").read_text())["testing"]
    for record in records:
        record["image"] = str(ROOT / "bundle" / "samples" / record["image"])
    (tmp_path / "datalist.json").write_text(json.dumps({"training": records[:2], "validation": records[2:3]}))
    overrides = {"output_dir": str(tmp_path / "out")}
    if workflow_type == "train":
        overrides.update(dataset_dir=str(tmp_path), ckpt_dir=str(tmp_path / "models"))
    hook = sys.excepthook
    try:
        workflow = create_workflow(
            config_file=str(configs / config),
            workflow_type=workflow_type,
            bundle_root=str(ROOT / "bundle"),
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            **overrides,
        )
        assert workflow.check_properties() == []
    finally:
        sys.excepthook = hook  # inference.json's initialize installs the one-line error hook


def test_train_json_stage1_downsample_reaches_network_dataset_and_fingerprint():
    """``--stage1_downsample 2`` builds a half-resolution stage 1, samples its patches from reduced fields and
    keys its resume fingerprint (the default stays full resolution)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ROOT / "bundle" / "configs" / "train.json")
    parser.update({"bundle_root": "unused", "dataset_dir": "unused", "device": "$torch.device('cpu')"})
    assert parser.get_parsed_content("network_def#fnr").input_downsample.item() == 1
    parser.update({"stage1_downsample": 2, "train_records": [{"image": "unused.png", "mitoses": [[1.0, 1.0]]}]})
    assert parser.get_parsed_content("network_def#fnr").input_downsample.item() == 2
    assert parser.get_parsed_content("train#dataset").downsample == 2
    assert parser.get_parsed_content("train#fingerprint#knobs")[-1] == 2


@pytest.mark.parametrize("value, expected", [(None, True), ("true", True), ("false", False), (True, True)])
def test_train_json_standardize_input_flag(value, expected):
    """``--fpr_standardize_input`` reaches stage 2 (CLI strings parsed as flags, not as truthy strings) and its
    resume fingerprint, so a checkpoint trained the other way is not resumed."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ROOT / "bundle" / "configs" / "train.json")
    parser.update({"bundle_root": "unused", "dataset_dir": "unused", "device": "$torch.device('cpu')"})
    if value is not None:
        parser.update({"fpr_standardize_input": value})
    assert parser.get_parsed_content("fpr_network").input_standardization.item() is expected
    assert parser.get_parsed_content("fpr_train#fingerprint#knobs")[-1] is expected


@pytest.mark.parametrize("value, start", [(None, 0), ("31", 31), (5, 5)])
def test_train_json_weight_averaging_reaches_handler_checkpoint_and_fingerprint(value, start):
    """``--fpr_average_from N`` averages stage 2's weights from epoch N, keeps the average in the resumable
    checkpoint and keys the fingerprint; off by default, adding nothing to either."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ROOT / "bundle" / "configs" / "train.json")
    parser.update({"bundle_root": "unused", "dataset_dir": "unused", "device": "$torch.device('cpu')"})
    if value is not None:
        parser.update({"fpr_average_from": value})
    handlers = parser.get("fpr_train#handlers")
    assert "@fpr_train#weight_average" in handlers
    assert parser.get_parsed_content("fpr_train#weight_average").start_epoch == start
    in_checkpoint = parser.get_parsed_content("fpr_train#training_state#weight_average")
    knobs = parser.get_parsed_content("fpr_train#fingerprint#knobs")
    if start:
        assert in_checkpoint is not None and knobs[-1] == start
    else:
        assert in_checkpoint is None and knobs[-1] is True  # the standardisation flag stays last

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
    assert meta["required_packages_version"]["mssn-monai"] == mssn_monai.__version__
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

"""The bundle's workflows: inference.json, evaluate.json, ckpt_export / verify_net_in_out, packaging,
and the shipped weights on the shipped samples."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mssn_monai.checkpoints import bundle_config
from mssn_monai.data.datalist import load_datalist
from mssn_monai.io import read_detections_csv, read_image_rgb, write_image

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
CONFIGS = BUNDLE / "configs"


def _bundle(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, cwd=cwd)


def _inference(input_dir: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of ``inference.json`` on the repository's bundle."""
    config = ["--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(BUNDLE)]
    return _bundle("run", *config, "--input_dir", str(input_dir), "--output_dir", str(output_dir), *extra)


def _crop_of_first_sample(folder: Path, size: int = 384) -> Path:
    rec = next(r for r in load_datalist(BUNDLE / "samples" / "datalist.json", "testing") if r["mitoses"])
    x, y = (int(v) for v in rec["mitoses"][0])
    x0, y0 = max(x - size // 2, 0), max(y - size // 2, 0)
    path = folder / "crop.png"
    write_image(path, read_image_rgb(rec["image"])[y0 : y0 + size, x0 : x0 + size])
    return path


def test_inference_and_train_configs_agree():
    """The detector's settings and the stain target live in both configs (zoo convention); they must match."""
    train, infer = bundle_config(CONFIGS / "train.json"), bundle_config(CONFIGS / "inference.json")
    for key in ("spacing_um", "candidate_threshold", "min_distance_um", "vote_radius_px", "normalize_stain"):
        assert train[key] == infer[key], key
    for key in ("target_stains", "target_max_concentrations", "target_white"):
        assert train["stain_normalization"][key] == infer["stain_normalization"][key], key
    assert train["network_def"]["fnr"]["sub_models"] == infer["network_def"]["fnr"]["sub_models"]
    assert train["fpr_patch_size"] == infer["network_def"]["fpr"]["patch_size"]
    assert train["contrastive_margin"] == infer["network_def"]["fpr"]["margin"]
    a = train.get_parsed_content("network_def").state_dict()
    b = infer.get_parsed_content("network_def").state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_verify_net_in_out():
    r = _bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--any",
        "37",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "verified with no error" in r.stdout + r.stderr


def test_inference_workflow_equals_detect_command(tmp_path):
    """Same detections as ``detect``; a truncated PNG beside the field is skipped with one line by both."""
    crop = _crop_of_first_sample(tmp_path / "in")
    whole = crop.read_bytes()
    (crop.parent / "truncated.png").write_bytes(whole[: len(whole) // 2])  # header intact, pixels cut
    r = _inference(crop.parent, tmp_path / "bundle_out")
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = [line for line in (r.stdout + r.stderr).splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "truncated.png" in skipped[0] and "Traceback" not in r.stderr
    assert sorted(p.name for p in (tmp_path / "bundle_out").iterdir()) == ["crop.csv", "crop.geojson", "crop.json"]
    d = subprocess.run(
        [sys.executable, "-m", "mssn_monai", "detect", "--input", str(crop.parent), "--out", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
    )
    assert d.returncode == 0, d.stderr[-3000:]
    a, b = read_detections_csv(tmp_path / "bundle_out" / "crop.csv"), read_detections_csv(tmp_path / "cli" / "crop.csv")
    assert len(a) == len(b)
    order = lambda p: p[np.lexsort((p[:, 0], p[:, 1], -p[:, 2]))]  # noqa: E731
    np.testing.assert_allclose(order(a), order(b), atol=1e-5)
    summary = json.loads((tmp_path / "bundle_out" / "crop.json").read_text())
    assert summary["count"] == len(a) and summary["settings"]["stain_normalization"] is True
    geo = json.loads((tmp_path / "bundle_out" / "crop.geojson").read_text())
    assert len(geo["features"]) == len(a)


def test_inference_workflow_reads_false_on_the_command_line_as_false(tmp_path):
    """``--normalize_stain false`` arrives as the string 'false': normalisation off; 'flase' is refused."""
    crop = _crop_of_first_sample(tmp_path / "in", size=64)
    r = _inference(crop, tmp_path / "o", "--normalize_stain", "false", "--overlay", "no")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "o" / "crop.json").read_text())
    assert summary["settings"]["stain_normalization"] is False and not (tmp_path / "o" / "crop_overlay.png").exists()
    bad = _inference(crop, tmp_path / "o2", "--normalize_stain", "flase")
    assert bad.returncode == 1 and "normalize_stain must be true or false, got 'flase'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_inference_workflow_bad_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"fnr.stem1.conv.weight": torch.zeros(1)}, bad)
    crop = _crop_of_first_sample(tmp_path / "in", size=64)
    r = _inference(crop, tmp_path / "o", "--ckpt_path", str(bad))
    assert r.returncode != 0
    assert "size mismatch" in r.stderr or "Missing key" in r.stderr
    assert not list((tmp_path / "o").glob("*.csv"))


@pytest.mark.slow
def test_evaluate_workflow_writes_metrics_and_curve(tmp_path):
    r = _bundle(
        "run",
        "--config_file",
        json.dumps([str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]),
        "--bundle_root",
        str(BUNDLE),
        "--output_dir",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["overall"]["n_images"] == 8 and "sweep" in report
    assert (tmp_path / "pr_curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_ckpt_export_torchscript_matches_eager(tmp_path):
    ts = tmp_path / "model.ts"
    r = _bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(BUNDLE / "models" / "model.pt"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.json"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), map_location="cpu", _extra_files=extra)
    shipped_meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert json.loads(extra["metadata.json"])["version"] == shipped_meta["version"]
    from mssn_monai.checkpoints import load_network

    eager = load_network(BUNDLE / "models" / "model.pt", CONFIGS / "inference.json", "network_def")
    crop = torch.from_numpy(read_image_rgb(_crop_of_first_sample(tmp_path))).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        a, b = scripted(crop[None]), eager(crop[None])
    assert torch.equal(a > 0, b > 0) and (a > 0).any()  # the same detections
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # scores up to float rounding (the JIT reorders ops)


@pytest.mark.slow
def test_package_bundle_runs_standalone(tmp_path):
    """The zoo layout and its zip: the packaged code is imported, model.ts is fresh, inference runs unzipped."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_bundle.py"), "--out", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    version = json.loads((CONFIGS / "metadata.json").read_text())["version"]
    folder = tmp_path / "dist" / "models" / "mssn_mitosis_detection"
    zip_path = tmp_path / "dist" / f"mssn_mitosis_detection-{version}.zip"
    assert zip_path.stat().st_size < 20 * 2**20
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert not any("_checkpoint_" in n or "__pycache__" in n for n in names)
        zf.extractall(tmp_path / "x")
    root = tmp_path / "x" / "mssn_mitosis_detection"
    in_folder = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(n.split("/", 1)[1] for n in names) == in_folder
    for rel in in_folder:  # the zip holds the folder byte for byte
        assert (root / rel).read_bytes() == (folder / rel).read_bytes(), rel
    assert {"models/model.pt", "models/model.ts", "large_files.yml", "scripts/mssn_monai/__init__.py"} <= set(in_folder)
    assert "mssn_monai/networks/detector.py" in {n.split("/", 2)[2] for n in names if n.count("/") >= 2}
    extra = {"metadata.json": ""}
    torch.jit.load(str(root / "models" / "model.ts"), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == version  # exported now, not stale
    code = "import scripts, mssn_monai; print(mssn_monai.__file__)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert Path(probe.stdout.strip()).resolve().is_relative_to(root.resolve() / "scripts")  # the packaged copy
    image = next((root / "samples" / "images").iterdir())
    assert image.suffix == ".jpg" and image.stat().st_size <= 2**20
    r = _bundle("run", "--config_file", "configs/inference.json", "--input_dir", str(image), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (root / "eval" / f"{image.stem}.csv").is_file()


@pytest.mark.slow
def test_shipped_weights_on_shipped_samples():
    """The README's main job: F1 >= 0.85 on the 8 shipped synthetic sample fields (34 mitoses)."""
    from mssn_monai.checkpoints import load_detector
    from mssn_monai.evaluation import evaluate_predictions

    datalist = BUNDLE / "samples" / "datalist.json"
    detector = load_detector()
    pred = {
        Path(rec["image"]).stem: detector(read_image_rgb(rec["image"]), rec["spacing"])["detections"]
        for rec in load_datalist(datalist, "testing")
    }
    overall = evaluate_predictions(datalist, pred, section="testing")["overall"]
    assert overall["n_gt"] == 34
    assert overall["f1"] >= 0.85, overall

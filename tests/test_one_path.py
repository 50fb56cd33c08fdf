"""One runner: the hard-negative miner, the ``candidates`` and ``detect`` commands, FieldDetector and the
bundle's inference workflow all run the same detector the same way, so they give the same rows."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mssn_monai.checkpoints import DEFAULT_BUNDLE, bundle_config, load_detector, load_state_dict
from mssn_monai.cli import main
from mssn_monai.constants import MATCH_RADIUS_UM, MODEL_FILE
from mssn_monai.data.prepare import prepare_datalist
from mssn_monai.data.synthetic import generate_dataset
from mssn_monai.handlers import HardNegativeMiner
from mssn_monai.io import read_detections_csv, read_image_rgb
from mssn_monai.keys import DatalistKeys, DetectionKeys
from mssn_monai.networks import MSSNDetector, MultiScaleFNR, SiameseEmbedding

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = DEFAULT_BUNDLE / "configs"


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> dict:
    """One generated 512x512 field (seed 0: two mitoses, and stage-1 false positives with the shipped weights)."""
    data = tmp_path_factory.mktemp("one_path") / "data"
    generate_dataset(data, n_images=1, size=(512, 512), seed=0, frames_per_slide=1)
    datalist = prepare_datalist("mitos-atypia-14", data, data / "datalist.json", val_fraction=0, test_fraction=0)
    (record,) = datalist["training"]
    assert len(record[DatalistKeys.MITOSES]) == 2
    return {"data": data, **record}


def _csv_rows(rows: np.ndarray) -> np.ndarray:
    """Rows as ``write_detections_csv`` writes them (x, y to 2 decimals, score to 6 significant digits)."""
    return np.array([[round(x, 2), round(y, 2), float(f"{s:.6g}")] for x, y, s in rows], dtype=np.float64).reshape(
        -1, 3
    )


def _far_from(rows: np.ndarray, mitoses: list, radius_px: float) -> np.ndarray:
    gt = np.asarray(mitoses, dtype=np.float64).reshape(-1, 2)
    d = np.hypot(rows[:, None, 0] - gt[None, :, 0], rows[:, None, 1] - gt[None, :, 1]).min(axis=1)
    return rows[d > radius_px]


def test_miner_mines_the_candidates_command_rows(field, tmp_path):
    """The stage-1 miner as train.json builds it (its detector, its stain normaliser) adds exactly the
    rows of ``candidates`` (inference.json's detector and normaliser) farther than 8 um from a mitosis."""
    parser = bundle_config(CONFIGS / "train.json", bundle_root=tmp_path / "bundle")
    parser["dataset_dir"] = str(field["data"])
    parser["device"] = "$torch.device('cpu')"
    handlers = parser["train"]["handlers"]
    index = next(i for i, h in enumerate(handlers) if str(h.get("_target_", "")).endswith("HardNegativeMiner"))
    miner = parser.get_parsed_content(f"train#handlers#{index}")
    assert isinstance(miner, HardNegativeMiner) and miner.fields.normalizer is not None
    assert miner.exclusion_um == MATCH_RADIUS_UM
    load_state_dict(miner.fields.detector, DEFAULT_BUNDLE / "models" / MODEL_FILE)
    (dataset,) = miner.datasets
    added = []
    add = dataset.add_hard_negatives
    dataset.add_hard_negatives = lambda i, points: (added.append((i, np.array(points))), add(i, points))[1]
    miner.mine()

    out = tmp_path / "cand"
    image = Path(field[DatalistKeys.IMAGE])
    spacing = float(field[DatalistKeys.SPACING])
    main(["candidates", "--input", str(image), "--out", str(out), "--spacing", str(spacing), "--device", "cpu"])
    cli = read_detections_csv(out / f"{image.stem}.csv")

    # the miner's own call gives the command's rows
    mined = miner.fields.candidates(read_image_rgb(image), spacing)
    np.testing.assert_array_equal(_csv_rows(mined), cli)
    # and the points it added are the command's rows away from every mitosis, highest probability first
    ((i, points),) = added
    expected = _far_from(cli, field[DatalistKeys.MITOSES], MATCH_RADIUS_UM / spacing)[: miner.max_per_image]
    assert i == 0 and len(expected) > 0 and len(expected) < len(cli)  # some kept, some near a mitosis dropped
    np.testing.assert_array_equal(points, expected[:, :2])


def test_field_detector_detect_and_bundle_inference_give_the_same_rows(field, tmp_path):
    image = Path(field[DatalistKeys.IMAGE])
    spacing = float(field[DatalistKeys.SPACING])
    fields = load_detector(device="cpu")
    rows = fields(read_image_rgb(image), spacing)[DetectionKeys.DETECTIONS]
    assert len(rows) > 0

    main(
        ["detect", "--input", str(image), "--out", str(tmp_path / "cli"), "--spacing", str(spacing), "--device", "cpu"]
    )
    np.testing.assert_array_equal(read_detections_csv(tmp_path / "cli" / f"{image.stem}.csv"), _csv_rows(rows))

    config = ["--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(DEFAULT_BUNDLE)]
    io = ["--input_dir", str(image), "--output_dir", str(tmp_path / "bundle"), "--spacing_um", str(spacing)]
    r = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *config, *io], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    bundle = read_detections_csv(tmp_path / "bundle" / f"{image.stem}.csv")
    # the bundle reads its points back from the float32 detection map: ordered by probability, float32 scores
    order = np.lexsort((rows[:, 0], rows[:, 1], -rows[:, 2].astype(np.float32)))
    np.testing.assert_array_equal(bundle[:, :2], rows[order, :2])
    np.testing.assert_allclose(bundle[:, 2], rows[order, 2], rtol=0, atol=1e-6)


def test_detect_keys_are_the_detection_keys_eager_and_scripted():
    """``detect`` spells its keys as literals (TorchScript reads no class attributes): they must stay DetectionKeys'."""
    expected = {
        DetectionKeys.CANDIDATES,
        DetectionKeys.VOTES,
        DetectionKeys.PROBABILITY,
        DetectionKeys.VOTED,
        DetectionKeys.KEEP,
        DetectionKeys.DETECTIONS,
    }
    assert expected == {"candidates", "votes", "probability", "voted", "keep", "detections"}
    torch.manual_seed(0)
    fnr = MultiScaleFNR(stem_channels=(4, 4), head_channels=4, features=3)
    detector = MSSNDetector(fnr, SiameseEmbedding(channels=[4, 6], embedding_dim=8, patch_size=32)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(detector)
    image = torch.rand(3, 24, 24)
    with torch.no_grad():
        assert set(detector.detect(image, 0.25)) == expected
        assert set(scripted.detect(image, 0.25)) == expected


def test_layer_check_passes():
    tool = ROOT.parent / "shared" / "tools" / "check_layers.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is not in this checkout")
    r = subprocess.run(
        [sys.executable, str(Path("..") / "shared" / "tools" / "check_layers.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

"""Both stages in int8 (``mssn_monai.networks.quantized``): the float networks' maps and embeddings to the int8
rounding, tiles that stitch exactly, a calibration that must match the network, and the bundle's calibration file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mssn_monai.checkpoints import DEFAULT_BUNDLE, file_sha256, load_detector, load_int8_calibration
from mssn_monai.cli import main
from mssn_monai.networks.detector import FieldDetector, MSSNDetector
from mssn_monai.networks.fnr import MultiScaleFNR
from mssn_monai.networks.fpr import SiameseEmbedding
from mssn_monai.networks.quantized import calibrate_fnr, calibrate_fpr, quantize_fnr, quantize_fpr


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    model = MultiScaleFNR(stem_channels=(4, 8), head_channels=4, features=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _images(seed: int, n: int, shape: tuple[int, int] = (140, 170)) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.random((3, *shape), dtype=np.float32)) for _ in range(n)]


def test_int8_maps_follow_the_float_maps(net):
    calibration = calibrate_fnr(net, _images(0, 3))
    assert calibration["images"] == 3
    # one scale per quantized activation: the input, the two stem layers and every branch layer
    n_branch_layers = sum(len(b) for h in net.heads.values() for b in h.branches)
    assert len(calibration["activations"]) == 1 + 2 + n_branch_layers
    q = quantize_fnr(net, calibration)
    image = _images(1, 1)[0][None]
    with torch.no_grad():
        want, got = net(image), q(image)
    assert list(got) == list(want)  # the same names, sub-models first, "fused" last
    for name in want:
        assert got[name].shape == want[name].shape == (1, 1, 35, 43)
        assert got[name].dtype == torch.float32
        assert float((got[name] - want[name]).abs().mean()) < 0.01, name
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the float network is untouched


def test_int8_tiles_stitch_exactly(net):
    """Per-tensor scales are fixed, so a cell's integers do not depend on the tile that computes it."""
    q = quantize_fnr(net, calibrate_fnr(net, _images(0, 2)))
    image = (_images(2, 1, (150, 203))[0] * 255).round().to(torch.uint8)
    det = MSSNDetector(q, SiameseEmbedding(), tile_px=32).eval()
    with torch.no_grad():
        tiled = det.stage1_maps(image)["fused"]
        whole = q(image[None].float() / 255.0)["fused"][0, 0]
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_calibration_must_match_the_network(net):
    calibration = calibrate_fnr(net, _images(0, 1))
    other = MultiScaleFNR(sub_models=("square72", "crossbar"), stem_channels=(4, 8), head_channels=4, features=4).eval()
    with pytest.raises(ValueError, match="does not match this stage-1 network"):
        quantize_fnr(other, calibration)
    with pytest.raises(ValueError, match="not an int8 calibration"):
        quantize_fnr(net, {"engine": calibration["engine"]})
    with pytest.raises(ValueError, match="does not match this stage-2 network"):
        quantize_fpr(SiameseEmbedding(channels=(8, 8), embedding_dim=4), calibration)
    with pytest.raises(ValueError, match="at least one image"):
        calibrate_fnr(net, [])
    with pytest.raises(ValueError, match="quantized engine"):
        quantize_fnr(net, {**calibration, "engine": "no-such-engine"})


@pytest.mark.parametrize("standardize", [False, True])
def test_int8_embeddings_follow_the_float_embeddings(standardize):
    torch.manual_seed(0)
    fpr = SiameseEmbedding(channels=(8, 16), embedding_dim=8, standardize_input=standardize).eval()
    fpr.set_references(torch.nn.functional.normalize(torch.randn(5, 8), dim=1), torch.tensor([0, 1, 2, 1, 0]))
    patches = torch.rand(40, 3, 96, 96)
    calibration = calibrate_fpr(fpr, [patches[:20], patches[:0], patches[20:]])
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in fpr.features.modules())
    assert calibration["patches"] == 40 and len(calibration["activations"]) == 1 + n_convs  # the input + each conv
    q = quantize_fpr(fpr, calibration)
    assert torch.equal(q.references, fpr.references) and torch.equal(q.calibration, fpr.calibration)
    with torch.no_grad():
        cosine = (q(patches[:8]) * fpr(patches[:8])).sum(dim=1)
    assert cosine.shape == (8,) and float(cosine.min()) > 0.99
    assert all(p.dtype == torch.float32 for p in fpr.parameters())  # the float network is untouched
    with pytest.raises(ValueError, match="at least one patch"):
        calibrate_fpr(fpr, [patches[:0]])


def _both(net: MultiScaleFNR, det: MSSNDetector) -> dict:
    return {"stage1": calibrate_fnr(net, _images(0, 1)), "stage2": calibrate_fpr(det.fpr, [torch.rand(4, 3, 96, 96)])}


def test_field_detector_options(net):
    det = MSSNDetector(net, SiameseEmbedding()).eval()
    calibration = _both(net, det)
    with pytest.raises(ValueError, match="exclude each other"):
        FieldDetector(det, stage1_bf16=True, int8=calibration)
    with pytest.raises(ValueError, match="no stage2 entry"):
        FieldDetector(det, int8={"stage1": calibration["stage1"]})
    fields = FieldDetector(det, int8=calibration)
    assert fields.int8 and fields.settings["int8"] is True
    runner = fields._runner()
    assert runner.fnr is not det.fnr and runner.fpr is not det.fpr  # the int8 twins
    assert det.fnr is net and runner.candidate_threshold == det.candidate_threshold  # the detector is untouched
    assert not FieldDetector(det).int8 and FieldDetector(det)._runner() is det


@pytest.fixture()
def bundle_copy(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE / "configs", root / "configs")
    (root / "models").mkdir()
    shutil.copy2(DEFAULT_BUNDLE / "models" / "model.pt", root / "models" / "model.pt")
    return root


def test_bundle_calibration_file(bundle_copy, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="mssn_monai quantize"):
        load_int8_calibration(bundle_copy)
    with pytest.raises(SystemExit) as e:  # the CLI: one line, exit 2
        main(["detect", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--bundle", str(bundle_copy), "--int8"])
    assert e.value.code == 2 and "quantize" in capsys.readouterr().err
    main(["quantize", "--bundle", str(bundle_copy), "--n-fields", "1"])
    assert "int8 calibration on 1 fields" in capsys.readouterr().out
    path = bundle_copy / "models" / "int8_calibration.json"
    calibration = load_int8_calibration(bundle_copy)
    assert path.read_text() == json.dumps(calibration, indent=4) + "\n"  # as the model zoo's JSON hook formats it
    assert calibration["weights_sha256"] == file_sha256(bundle_copy / "models" / "model.pt")
    assert calibration["stage1"]["images"] == 1 and calibration["stage2"]["patches"] > 0  # the field's vote patches
    fields = load_detector(bundle_copy, int8=True)
    assert fields.int8
    # new weights make the calibration stale: refused, with the command that fixes it
    (bundle_copy / "models" / "model.pt").write_bytes((bundle_copy / "models" / "model.pt").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="other weights"):
        load_int8_calibration(bundle_copy)
    assert path.is_file()


def test_int8_cli_refusals(tmp_path, capsys):
    for extra in (["--bf16"], ["--n-fields", "0"]):
        cmd = "quantize" if extra[0] == "--n-fields" else "detect"
        args = [cmd] + (["--input", str(tmp_path), "--out", str(tmp_path / "o"), "--int8"] if cmd == "detect" else [])
        with pytest.raises(SystemExit) as e:
            main(args + extra)
        assert e.value.code == 2
        assert capsys.readouterr().err.startswith("error")
    assert not (tmp_path / "o").exists()


def test_shipped_bundle_has_a_current_calibration():
    calibration = load_int8_calibration(DEFAULT_BUNDLE)  # refuses a stale one
    for stage in ("stage1", "stage2"):
        assert calibration[stage]["engine"] in torch.backends.quantized.supported_engines


def test_half_resolution_weights_calibrate_and_run_in_int8(bundle_copy, monkeypatch):
    """Weights whose stage 1 runs at half resolution: ``quantize`` calibrates stage 1 on the reduced fields it
    will see (1024 -> 512 px), and the int8 map follows the float map at stride 8."""
    import numpy as np

    import mssn_monai.quantize as quantize
    from mssn_monai.data.synthetic import generate_field

    path = bundle_copy / "models" / "model.pt"
    state = torch.load(path, weights_only=True)
    state["fnr.input_downsample"] = torch.tensor(2)
    torch.save(state, path)
    seen = []

    def spy(fnr, images, engine=None):
        images = list(images)
        seen.extend(tuple(x.shape) for x in images)
        return calibrate_fnr(fnr, images, engine)

    monkeypatch.setattr(quantize, "calibrate_fnr", spy)
    main(["quantize", "--bundle", str(bundle_copy), "--n-fields", "1"])
    assert seen == [(1, 3, 512, 512)]
    image = generate_field((320, 288), seed=3).image
    float_map = load_detector(bundle_copy).fused_map(image)
    int8 = load_detector(bundle_copy, int8=True)
    assert int8.int8 and int8.detector.output_stride == 8
    int8_map = int8.fused_map(image)
    assert float_map.shape == int8_map.shape == (-(-image.shape[0] // 8), -(-image.shape[1] // 8))
    assert float(np.abs((int8_map - float_map).numpy()).mean()) < 0.02

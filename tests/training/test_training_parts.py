"""Training parts: loss, inferers, batch preparation, metrics, handlers, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer

from mssn_monai.checkpoints import latest_checkpoint, load_state_dict
from mssn_monai.distributed import MethodAsForward
from mssn_monai.engines import PrepareBatchPoints
from mssn_monai.handlers import CandidateRecall, CandidatesPerImage, HardNegativeMiner, false_positive_points
from mssn_monai.inferers import CandidateInferer
from mssn_monai.losses import MultiScaleBCELoss
from mssn_monai.networks.detector import MSSNDetector
from mssn_monai.networks.fnr import MultiScaleFNR
from mssn_monai.networks.fpr import SiameseEmbedding
from mssn_monai.transforms.io import LoadRGBd


def test_multiscale_bce_is_mean_of_per_model_bce():
    logits = {"a": torch.tensor([0.0, 2.0]), "b": torch.tensor([-1.0, 1.0])}
    target = torch.tensor([[0.0], [1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(logits["a"], target[:, 0]) + bce(logits["b"], target[:, 0])) / 2
    assert torch.isclose(MultiScaleBCELoss()(logits, target), expected)
    # log(2) for a zero logit, whatever the label
    assert torch.isclose(
        MultiScaleBCELoss()({"a": torch.zeros(3)}, torch.tensor([0.0, 1.0, 1.0])),
        torch.tensor(np.log(2.0), dtype=torch.float32),
    )
    weighted = MultiScaleBCELoss(weights={"a": 3.0})(logits, target)
    assert torch.isclose(weighted, (3 * bce(logits["a"], target[:, 0]) + bce(logits["b"], target[:, 0])) / 4)


def test_multiscale_bce_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        MultiScaleBCELoss()({"a": torch.zeros(3)}, torch.zeros(2))
    with pytest.raises(ValueError, match="pos_weight"):
        MultiScaleBCELoss(pos_weight=0)


@pytest.fixture(scope="module")
def tiny_fnr():
    torch.manual_seed(0)
    return MultiScaleFNR(stem_channels=(4, 8), head_channels=4, features=4).eval()


@pytest.fixture(scope="module")
def tiny_detector(tiny_fnr):
    """Every stage-1 peak is a candidate (threshold 0), at least 4 um apart."""
    return MSSNDetector(tiny_fnr, SiameseEmbedding(), candidate_threshold=0.0, min_distance_um=4.0).eval()


def test_patch_inferer_returns_logits_per_sub_model(tiny_fnr):
    """The stage-1 trainer's network: classify_patches as forward (DDP-wrappable), through a SimpleInferer."""
    x = torch.rand(2, 3, 120, 120)
    with torch.no_grad():
        out = SimpleInferer()(x, MethodAsForward(tiny_fnr, "classify_patches"))
        ref = tiny_fnr.classify_patches(x)
    assert set(out) == {"square72", "square96", "crossbar", "dilated120"}
    assert all(v.shape == (2,) for v in out.values())
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_candidate_inferer_gives_candidates_per_image(tiny_detector):
    inferer = CandidateInferer()
    images = torch.rand(2, 3, 40, 48)
    with torch.no_grad():
        out = inferer(images, tiny_detector, spacing=[0.25, 0.5])
    assert isinstance(out, list) and len(out) == 2
    for item, image, spacing in zip(out, images, (0.25, 0.5), strict=True):
        c = item.numpy()
        assert c.shape[1] == 3 and len(c) >= 1
        assert np.all(c[:, 0] % 4 == 0) and np.all(c[:, 0] < 48) and np.all(c[:, 1] < 40)
        d = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1]) + np.eye(len(c)) * 1e9
        assert d.min() >= 4.0 / spacing - 1e-9
        with torch.no_grad():
            assert torch.equal(item, tiny_detector.candidates(image, spacing))  # the detector's own call
    with pytest.raises(ValueError, match="spacing"):
        inferer(torch.rand(1, 3, 8, 8), tiny_detector)
    with pytest.raises(ValueError, match="2 spacings for a batch of 1"):
        inferer(torch.rand(1, 3, 8, 8), tiny_detector, spacing=[0.25, 0.25])


def _output(cands, gts, spacing=0.25):
    pred = [torch.as_tensor(c, dtype=torch.float64).reshape(-1, 3) for c in cands]
    label = [{"mitoses": np.asarray(g, dtype=np.float64).reshape(-1, 2), "spacing": spacing} for g in gts]
    return {"pred": pred, "label": label}


def test_candidate_recall_and_count():
    # radius 8 um at 0.25 um/px = 32 px. Image 1: two mitoses, one hit (dist 30), one missed (dist 40).
    # Image 2: no mitosis, three candidates.
    out = _output(
        [[[30, 0, 0.9], [140, 0, 0.8]], [[1, 1, 0.5], [2, 2, 0.5], [3, 3, 0.5]]],
        [[[0, 0], [100, 0]], []],
    )
    recall, per_image = CandidateRecall(radius_um=8.0), CandidatesPerImage(radius_um=8.0)
    for m in (recall, per_image):
        m.reset()
        m.update(m._output_transform(out))
    assert recall.compute() == 0.5
    assert per_image.compute() == 2.5


def test_prepare_batch_points():
    batch = LoadRGBd()({"image": _png(), "mitoses": [[1, 2]], "spacing": 0.5})
    collated = {
        "image": batch["image"][None],
        "mitoses": torch.as_tensor(batch["mitoses"])[None],
        "spacing": torch.tensor([0.5]),
    }
    image, targets, args, kwargs = PrepareBatchPoints()(collated, "cpu")
    assert image.shape == (1, 3, 6, 5) and float(image.max()) <= 1.0
    assert kwargs == {"spacing": [0.5]} and args == ()
    np.testing.assert_array_equal(targets[0]["mitoses"], [[1, 2]])
    with pytest.raises(KeyError, match="spacing"):
        PrepareBatchPoints()({"image": image, "mitoses": collated["mitoses"]})


_PNG_DIR = None


def _png():
    import tempfile

    from mssn_monai.io import write_image

    global _PNG_DIR
    _PNG_DIR = _PNG_DIR or tempfile.mkdtemp()
    path = f"{_PNG_DIR}/x.png"
    write_image(path, np.full((6, 5, 3), 200, np.uint8))
    return path


def test_false_positive_points():
    cand = np.array([[0, 0, 0.5], [100, 0, 0.9], [50, 0, 0.7], [10, 0, 0.95]])
    fps = false_positive_points(cand, np.array([[0.0, 0.0]]), radius_px=20.0)
    np.testing.assert_array_equal(fps, [[100, 0], [50, 0]])  # by decreasing score, near-mitosis ones dropped
    np.testing.assert_array_equal(false_positive_points(cand, np.zeros((0, 2)), 20.0, max_points=1), [[10, 0]])


def test_miner_schedule(tiny_detector):
    class _DS:
        data: list = []
        hard_negatives: dict = {}

        def image(self, i):
            raise AssertionError

        def add_hard_negatives(self, i, p):
            return 0

    once = HardNegativeMiner(tiny_detector, [_DS()], start_epoch=3)
    assert [e for e in range(1, 10) if once.due(e)] == [3]
    every = HardNegativeMiner(tiny_detector, [_DS()], start_epoch=2, interval=3)
    assert [e for e in range(1, 10) if every.due(e)] == [2, 5, 8]
    at_start = HardNegativeMiner(tiny_detector, [_DS(), _DS()], event="STARTED")
    assert [e for e in range(0, 10) if at_start.due(e)] == [0]  # a fresh start only, not a resumed one
    with pytest.raises(TypeError, match="PatchSampleDataset"):
        HardNegativeMiner(tiny_detector, [object()])
    with pytest.raises(TypeError, match="MSSNDetector"):
        HardNegativeMiner(torch.nn.Linear(1, 1), [_DS()])
    with pytest.raises(ValueError, match="EPOCH_COMPLETED or STARTED"):
        HardNegativeMiner(tiny_detector, [_DS()], event="ITERATION_COMPLETED")


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path, "fnr_train") is None
    for n in (2, 10, 9):
        (tmp_path / f"fnr_train_checkpoint_epoch={n}.pt").write_bytes(b"")
    (tmp_path / "other_checkpoint_epoch=99.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path, "fnr_train").endswith("epoch=10.pt")


def test_load_state_dict_errors(tmp_path, tiny_fnr):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_state_dict(tiny_fnr, bad)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match="does not match"):
        load_state_dict(tiny_fnr, other)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tiny_fnr, tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    torch.save(tiny_fnr.state_dict(), good)
    load_state_dict(tiny_fnr, good)


def test_nearest_reference_accuracy_per_class():
    from mssn_monai.handlers import NearestReferenceAccuracy

    sims = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.3], [0.0, 0.2, 0.6], [0.5, 0.4, 0.1]])
    classes = torch.tensor([0, 1, 2, 2, 1])  # right, right, wrong, right, wrong
    expected = {None: 3 / 5, 0: 1.0, 1: 0.5, 2: 0.5}
    for class_index, value in expected.items():
        m = NearestReferenceAccuracy(class_index)
        m.reset()
        m.update((sims, classes))
        assert m.compute() == pytest.approx(value)


def test_prepare_batch_class():
    from mssn_monai.engines import PrepareBatchClass

    image, classes = PrepareBatchClass()({"image": torch.zeros(2, 3, 4, 4), "class": torch.tensor([2, 0])}, "cpu")
    assert image.shape == (2, 3, 4, 4) and classes.tolist() == [2, 0] and classes.dtype == torch.int64
    with pytest.raises(KeyError, match="class"):
        PrepareBatchClass()({"image": image}, "cpu")

"""Shape contracts, cost, reference bank, similarities, the 2-px vote and calibration of the FPR stage."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mssn_monai.keys import PatchClass
from mssn_monai.networks import (
    DEFAULT_CALIBRATION,
    MITOSIS_CLASS,
    NUM_CLASSES,
    SiameseEmbedding,
    build_reference_bank,
    distance_similarity,
    fit_calibration,
    fpr_vote,
    standardize_patches,
    vote_offsets,
)
from mssn_monai.networks.detector import MSSNDetector
from mssn_monai.networks.fnr import MultiScaleFNR
from mssn_monai.ops.patches import extract_patch

TINY = {"channels": [4, 6], "embedding_dim": 8, "patch_size": 32}


def _tiny(seed: int = 0, **kwargs) -> SiameseEmbedding:
    """A small net with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = SiameseEmbedding(**{**TINY, **kwargs})
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return net.eval()


def _hand_net(margin: float = 1.0) -> SiameseEmbedding:
    """D = 2 with hand-placed references: background (0, 0); mitosis (0.6, 0.8) and (0, 0.25); mimic (3, 0)."""
    net = SiameseEmbedding(embedding_dim=2, margin=margin)
    net.set_references(torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.0, 0.25], [3.0, 0.0]]), torch.tensor([0, 1, 1, 2]))
    return net


def test_class_constants_match_patch_class():
    assert NUM_CLASSES == len(PatchClass)
    assert MITOSIS_CLASS == PatchClass.MITOSIS
    assert [int(c) for c in PatchClass] == [0, 1, 2]


# ---------------------------------------------------------------- shape contracts and cost


@pytest.mark.parametrize("b", [1, 3])
def test_forward_shape_and_unit_norm(b):
    net = _tiny()
    with torch.no_grad():
        emb = net(torch.rand(b, 3, 32, 32))
    assert emb.shape == (b, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(b))


def test_default_config_shape():
    net = SiameseEmbedding().eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 96, 96)).shape == (2, 32)


def test_unnormalised_option():
    net = _tiny(normalize=False)
    with torch.no_grad():
        norms = net(torch.rand(4, 3, 32, 32)).norm(dim=1)
    assert not torch.allclose(norms, torch.ones(4))


def test_wrong_shape_errors_give_the_shape():
    net = SiameseEmbedding()
    with pytest.raises(ValueError, match=r"\(B, 3, 96, 96\), got \(2, 3, 64, 64\)"):
        net(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"got \(3, 96, 96\)"):
        net(torch.rand(3, 96, 96))
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        net(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": []},
        {"channels": [16, 0]},
        {"patch_size": 0},
        {"patch_size": 8, "channels": [2, 2, 2, 2]},
        {"embedding_dim": 2.5},
        {"margin": 0.0},
        {"margin": float("nan")},
        {"chunk_size": 0},
        {"convs_per_stage": 0},
    ],
)
def test_bad_knobs_raise(kwargs):
    with pytest.raises(ValueError):
        SiameseEmbedding(**kwargs)


def test_default_flops_and_params_under_budget():
    net = SiameseEmbedding().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.rand(1, 3, 96, 96))
    flops = counter.get_total_flops()
    # 2 * MACs: convolutions (3->16 @48, 16->32 @24, 32->64 @12, 64->96 @6; 3x3) + 96->32 projection
    assert flops == 2 * (48 * 48 * 16 * 27 + 24 * 24 * 32 * 144 + 12 * 12 * 64 * 288 + 6 * 6 * 96 * 576 + 96 * 32)
    assert flops == 16_594_944 <= 0.1e9
    assert sum(p.numel() for p in net.parameters()) == 82_288


def test_embed_chunks_equal_one_pass():
    net = _tiny()
    x = torch.rand(7, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.embed(x, chunk_size=3), net(x), atol=1e-6, rtol=0)
        assert net.embed(x[:0]).shape == (0, 8)


# ---------------------------------------------------------------- buffers


def test_buffers_in_state_dict_with_defaults():
    sd = SiameseEmbedding().state_dict()
    assert sd["references"].shape == (0, 32)
    assert sd["reference_classes"].shape == (0,) and sd["reference_classes"].dtype == torch.int64
    assert sd["calibration"].tolist() == list(DEFAULT_CALIBRATION)


# ---------------------------------------------------------------- input standardisation


def test_standardize_patches_exact():
    x = torch.zeros(2, 3, 4, 4)
    x[0, :, :2] = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1)  # top half coloured, bottom half black
    out = standardize_patches(x)
    # each channel's mean is half its value; deviations +-v/2, so the pooled std is sqrt(mean(v^2)) / 2
    v = torch.tensor([0.2, 0.4, 0.6])
    std = float(v.pow(2).mean().sqrt()) / 2
    expected = torch.where(torch.arange(4).view(1, 4, 1) < 2, v.view(3, 1, 1) / 2, -v.view(3, 1, 1) / 2) / std
    assert torch.allclose(out[0], expected.expand(3, 4, 4), atol=1e-6)
    assert torch.equal(out[1], torch.zeros(3, 4, 4))  # a blank patch stays flat, no NaN
    assert torch.allclose(out[0].mean(dim=(-2, -1)), torch.zeros(3), atol=1e-6)
    assert math.isclose(float(out[0].pow(2).mean()), 1.0, rel_tol=1e-5)
    # lighter and fainter: the same input once standardised
    assert torch.allclose(standardize_patches(0.5 * x[:1] + 0.3), out[:1], atol=1e-5)
    # below the floor the contrast is kept, not stretched
    faint = 0.001 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(standardize_patches(faint).abs().max()) < 0.1


def test_standardized_embedding_ignores_brightness_and_contrast():
    net = _tiny(seed=3, standardize_input=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(net(0.6 * x + 0.2), net(x), atol=1e-5)
        assert not torch.allclose(_tiny(seed=3)(0.6 * x + 0.2), _tiny(seed=3)(x), atol=1e-3)
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-6)


def test_input_standardization_travels_with_the_weights():
    trained = _tiny(seed=4, standardize_input=True)
    assert trained.state_dict()["input_standardization"].item() is True
    plain = SiameseEmbedding(**TINY)  # a config that does not say so
    plain.load_state_dict(trained.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), trained(x))
    # weights saved before the buffer existed keep what the config built
    old = {k: v for k, v in _tiny(seed=4).state_dict().items() if k != "input_standardization"}
    for flag in (False, True):
        net = SiameseEmbedding(**TINY, standardize_input=flag)
        net.load_state_dict(old)
        assert net.input_standardization.item() is flag


def test_load_resizes_reference_bank():
    src = _tiny(seed=1)
    g = torch.Generator().manual_seed(0)
    src.set_references(torch.randn(30, 8, generator=g), torch.arange(30) % 3)
    src.set_calibration(2.5, -0.75)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = SiameseEmbedding(**TINY)
    assert dst.references.shape == (0, 8)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(dst.references, src.references)
    assert torch.equal(dst.reference_classes, src.reference_classes)
    assert dst.calibration.tolist() == [2.5, -0.75]
    # and back down to K = 0
    dst.load_state_dict(SiameseEmbedding(**TINY).state_dict())
    assert dst.references.shape == (0, 8) and dst.reference_classes.shape == (0,)


def test_load_with_other_embedding_dim_still_fails():
    src = SiameseEmbedding(**{**TINY, "embedding_dim": 4})
    src.set_references(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="size mismatch"):
        SiameseEmbedding(**TINY).load_state_dict(src.state_dict())


def test_set_references_validates():
    net = SiameseEmbedding(embedding_dim=2)
    with pytest.raises(ValueError, match=r"\(K, 2\), got \(3, 4\)"):
        net.set_references(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"in 0 \.\. 2, got values \[0, 3\]"):
        net.set_references(torch.zeros(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(3,\)"):
        net.set_references(torch.zeros(2, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="finite"):
        net.set_references(torch.tensor([[float("nan"), 0.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="finite"):
        net.set_calibration(float("inf"), 0.0)
    source = torch.tensor([[1.0, 2.0]])
    net.set_references(source, torch.tensor([1.0]))  # integral floats are fine; stored as a copy
    source[0, 0] = 9.0
    assert net.references.tolist() == [[1.0, 2.0]] and net.reference_classes.dtype == torch.int64


# ---------------------------------------------------------------- similarities


def test_distance_similarity_values():
    d = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.5])
    assert distance_similarity(d, 1.0).tolist() == [1.0, 0.75, 0.5, 0.0, 0.0]
    assert distance_similarity(d, 2.0).tolist() == [1.0, 0.875, 0.75, 0.5, 0.0]
    with pytest.raises(ValueError, match="margin"):
        distance_similarity(d, 0.0)


def test_class_similarities_hand_placed():
    net = _hand_net()
    q = torch.tensor([[0.0, 0.0], [0.6, 0.8], [2.7, 0.4], [0.0, 0.5]])
    # (0, 0): background d 0 -> 1; mitosis d 1 and 0.25 -> max(0, 0.75); mimic d 3 -> 0
    # (0.6, 0.8): background d 1 -> 0; mitosis d 0 -> 1; mimic d ~2.53 -> 0
    # (2.7, 0.4): mimic d 0.5 -> 0.5; everything else beyond 1
    # (0, 0.5): background d 0.5 -> 0.5; mitosis d 0.25 (to (0, 0.25)) -> 0.75; mimic 0
    expected = torch.tensor([[1.0, 0.75, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5], [0.5, 0.75, 0.0]])
    torch.testing.assert_close(net.class_similarities(q), expected, atol=1e-6, rtol=0)
    c1, c0 = net.mitosis_similarity(q)
    torch.testing.assert_close(c1, torch.tensor([0.75, 1.0, 0.0, 0.75]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c0, torch.tensor([1.0, 0.0, 0.5, 0.5]), atol=1e-6, rtol=0)


def test_class_similarities_scale_with_margin_and_missing_class_is_zero():
    net = SiameseEmbedding(embedding_dim=2, margin=2.0)
    net.set_references(torch.tensor([[0.0, 0.0], [0.6, 0.8]]), torch.tensor([0, 1]))  # no mimic reference
    sim = net.class_similarities(torch.tensor([[0.0, 0.0], [0.3, 0.4]]))
    # margin 2: s = 1 - d / 2; (0, 0): 1 and 0.5; (0.3, 0.4): 0.75 and 0.75; mimic column 0
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.5, 0.0], [0.75, 0.75, 0.0]]), atol=1e-6, rtol=0)


def test_similarity_without_references_raises():
    net = SiameseEmbedding(embedding_dim=2)
    with pytest.raises(RuntimeError, match="no references"):
        net.class_similarities(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\(B, 2\), got \[1, 3\]"):
        _hand_net().class_similarities(torch.zeros(1, 3))


# ---------------------------------------------------------------- reference bank


def test_build_references_prototypes_and_distinct_rows():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, -1.0], [-1.0, 0.0]])
    cls = torch.tensor([0, 0, 2, 2, 2])
    refs, rc = build_reference_bank(emb, cls, per_class=1)
    h = math.sqrt(0.5)
    # class 0: mean (0.5, 0.5) on the sphere; class 1 absent; class 2: mean (-1/3, -2/3) normalised
    torch.testing.assert_close(refs, torch.tensor([[h, h], [-1 / math.sqrt(5), -2 / math.sqrt(5)]]))
    assert rc.tolist() == [0, 2]
    refs, rc = build_reference_bank(emb, cls, per_class=1, normalize=False)
    torch.testing.assert_close(refs, torch.tensor([[0.5, 0.5], [-1 / 3, -2 / 3]]))
    # per_class 8 >= distinct rows: the distinct rows themselves, sorted
    refs, rc = build_reference_bank(emb, cls, per_class=8)
    assert refs.tolist() == [[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]] and rc.tolist() == [0, 0, 2, 2]


def test_build_references_kmeans_finds_clusters_deterministically():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    emb = (centres[torch.arange(60) % 3] + 0.1 * torch.randn(60, 2, generator=g)).to(torch.float32)
    cls = torch.full((60,), 1)
    before = emb.clone()
    refs, rc = build_reference_bank(emb, cls, per_class=3, normalize=False)
    assert torch.equal(emb, before)  # input untouched
    assert rc.tolist() == [1, 1, 1] and refs.dtype == torch.float32
    found = sorted(refs.tolist())
    for got, want in zip(found, sorted(centres.tolist()), strict=True):
        assert torch.dist(torch.tensor(got), torch.tensor(want)) < 0.1
    again, _ = build_reference_bank(emb, cls, per_class=3, normalize=False)
    assert torch.equal(refs, again)
    unit, _ = build_reference_bank(emb, cls, per_class=3)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(3, dtype=torch.float32))


def test_build_references_method_stores_bank():
    net = SiameseEmbedding(embedding_dim=2)
    refs, rc = net.build_references(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 2]), per_class=4)
    assert net.references.tolist() == [[1.0, 0.0], [0.0, 1.0]] and net.reference_classes.tolist() == [1, 2]
    assert refs is net.references and rc is net.reference_classes


# ---------------------------------------------------------------- the 2-px vote


def test_vote_offsets_radius_2_exact():
    expected = [
        [0, 0],
        [0, -1], [-1, 0], [1, 0], [0, 1],
        [-1, -1], [1, -1], [-1, 1], [1, 1],
        [0, -2], [-2, 0], [2, 0], [0, 2],
    ]  # fmt: skip
    got = vote_offsets(2.0)
    assert got.dtype == torch.int64 and got.tolist() == expected
    assert vote_offsets().tolist() == expected


def test_vote_offsets_other_radii():
    assert vote_offsets(0).tolist() == [[0, 0]]
    assert len(vote_offsets(1.5)) == 9  # the paper's strict "less than 2 pixels"
    assert len(vote_offsets(math.sqrt(2))) == 9  # float rounding does not drop the diagonal
    assert len(vote_offsets(3.0)) == 29
    for bad in (-1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="radius_px"):
            vote_offsets(bad)


def test_fpr_vote_exact_with_tie():
    c1 = torch.tensor([[1.0, 0.5, 0.0], [0.25, 0.25, 0.25], [0.0, 0.0, 0.0], [0.75, 0.5, 0.25]])
    c0 = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [0.5, 0.25, 0.0], [0.0, 0.0, 0.0]])
    keep, votes = fpr_vote(c1, c0)
    # sums 1.5 vs 1.5 (tie: rejected), 0.75 vs 0, 0 vs 0.75, 1.5 vs 0; votes = difference / 3
    assert keep.tolist() == [False, True, False, True]
    assert votes.tolist() == [0.0, 0.25, -0.25, 0.5]
    keep, votes = fpr_vote(torch.zeros(0, 13), torch.zeros(0, 13))
    assert keep.shape == votes.shape == (0,) and keep.dtype == torch.bool


def test_fpr_vote_bad_shapes():
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(2, 4\)"):
        fpr_vote(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least one vote patch"):
        fpr_vote(torch.zeros(2, 0), torch.zeros(2, 0))


def _voting_detector(net: SiameseEmbedding, vote_radius_px: float) -> MSSNDetector:
    """The detector around ``net`` (stage 2 only is used by ``vote``)."""
    fnr = MultiScaleFNR(stem_channels=(4, 4), head_channels=4, features=3)
    return MSSNDetector(fnr, net, vote_radius_px=vote_radius_px).eval()


def test_vote_matches_per_patch_loop():
    """MSSNDetector.vote (the one stage-2 scorer) = a loop over each candidate's vote patches, chunks included."""
    net = _tiny(seed=2, margin=1.5, chunk_size=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        bank = torch.rand(9, 3, 32, 32, generator=g)
        net.build_references(net(bank), torch.tensor([0, 1, 2] * 3), per_class=2)
    net.set_calibration(3.0, -0.5)
    det = _voting_detector(net, vote_radius_px=1.0)  # 5 vote patches per candidate
    k = int(det.offsets.shape[0])
    assert k == 5
    image = torch.rand(3, 40, 50, generator=g)
    image[:, 4:36, 4:36] = bank[0]  # a reference patch, so some similarities are large
    cands = torch.tensor([[20.0, 20.0, 0.9], [0.4, 39.6, 0.8], [49.0, 10.5, 0.7]], dtype=torch.float64)
    n = len(cands)
    with torch.no_grad():
        keep, votes, prob = det.vote(image, cands)
    assert keep.shape == votes.shape == prob.shape == (n,) and keep.dtype == torch.bool

    total_c = 0.0
    for i in range(n):
        cx, cy = (int(np.floor(float(v) + 0.5)) for v in cands[i, :2])
        diff = 0.0
        for dx, dy in det.offsets.tolist():
            with torch.no_grad():
                sim = net.class_similarities(net(extract_patch(image, cx + dx, cy + dy, 32)[None]))[0]
            c1, c0 = float(sim[1]), max(float(sim[0]), float(sim[2]))
            diff += c1 - c0
            total_c += c1 + c0
        assert bool(keep[i]) == (diff > 0)
        assert float(votes[i]) == pytest.approx(diff / k, abs=1e-5)
        assert float(prob[i]) == pytest.approx(1 / (1 + math.exp(-(3.0 * diff / k - 0.5))), abs=1e-5)
    assert total_c > 0  # the similarities were not all zero


def test_vote_shapes_and_untrained_bank():
    net = _tiny()
    det = _voting_detector(net, vote_radius_px=2.0)
    image = torch.rand(3, 40, 40)
    with torch.no_grad():
        keep, votes, prob = det.vote(image, torch.tensor([[10.0, 10.0, 0.9], [30.0, 20.0, 0.8]]))
    # no references (untrained FPR): nothing kept, votes 0
    assert keep.tolist() == [False, False] and votes.tolist() == [0.0, 0.0] and prob.shape == (2,)
    net.set_references(torch.eye(8)[:3], torch.tensor([0, 1, 2]))
    with torch.no_grad():
        keep, votes, prob = det.vote(image, torch.zeros(0, 3))
    assert keep.shape == votes.shape == prob.shape == (0,) and keep.dtype == torch.bool


# ---------------------------------------------------------------- calibration


def test_default_calibration_agrees_with_keep():
    net = SiameseEmbedding()
    votes = torch.tensor([-1.0, -0.25, 0.0, 0.25, 1.0])
    prob = net.calibrated_score(votes)
    assert ((prob > 0.5) == (votes > 0)).all()
    assert prob[-1].item() == pytest.approx(1 / (1 + math.exp(-4.0)))


def test_set_calibration_exact():
    net = SiameseEmbedding()
    net.set_calibration(2.0, -1.0)
    prob = net.calibrated_score(torch.tensor([0.0, 0.5]))
    assert prob.tolist() == pytest.approx([1 / (1 + math.e), 0.5])


def test_fit_calibration_recovers_logistic_model():
    g = torch.Generator().manual_seed(0)
    votes = torch.rand(2000, generator=g, dtype=torch.float64) * 2 - 1
    labels = (torch.rand(2000, generator=g, dtype=torch.float64) < torch.sigmoid(3.0 * votes - 0.5)).long()
    a, b = fit_calibration(votes, labels)
    assert a == pytest.approx(3.0, abs=0.2) and b == pytest.approx(-0.5, abs=0.2)
    assert fit_calibration(votes.numpy(), labels.numpy()) == (a, b)  # numpy in, same (deterministic) answer


def test_fit_calibration_finite_on_separable_and_one_class_data():
    votes = torch.linspace(-1, 1, 101)
    a, b = fit_calibration(votes, votes > 0.1)
    assert math.isfinite(a) and math.isfinite(b) and a > 5
    assert -b / a == pytest.approx(0.1, abs=0.02)  # the boundary sits in the gap
    a, b = fit_calibration(votes, torch.ones(101))
    assert math.isfinite(a) and math.isfinite(b) and b > 0


def test_fit_calibration_bad_inputs():
    with pytest.raises(ValueError, match="0 or 1"):
        fit_calibration(torch.zeros(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="equal length"):
        fit_calibration(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        fit_calibration(torch.tensor([float("nan")]), torch.tensor([1]))


def test_operating_threshold_is_saved_and_checked():
    from mssn_monai.networks.fpr import SiameseEmbedding as _Net

    net = _Net()
    assert float(net.operating_threshold) == 0.0
    net.set_operating_threshold(0.7)
    fresh = _Net()
    fresh.load_state_dict(net.state_dict())
    assert float(fresh.operating_threshold) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="operating threshold"):
        net.set_operating_threshold(1.5)

"""Exact values, balancing, options and a toy training run of the stage-2 margin contrastive loss."""

from __future__ import annotations

import itertools

import pytest
import torch

from mssn_monai.losses import MarginContrastiveLoss

# Three points in 2-D with 3-4-5 distances: d(a, b) = 0.5, d(a, c) = 1.0, d(b, c) = 0.5.
A, B, C = [0.0, 0.0], [0.3, 0.4], [0.6, 0.8]


def _pts(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, requires_grad=True)


def _oracle(emb: torch.Tensor, labels: list[int], margin: float, w: float) -> float:
    """The loss by a plain loop over pairs."""
    sim, dis = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        d = float(torch.linalg.vector_norm(emb[i] - emb[j]))
        if labels[i] == labels[j]:
            sim.append(d * d / 2)
        else:
            dis.append(max(0.0, margin - d) ** 2 / 2)
    if not sim:
        return sum(dis) / len(dis)
    if not dis:
        return sum(sim) / len(sim)
    return w * sum(sim) / len(sim) + (1 - w) * sum(dis) / len(dis)


# ---------------------------------------------------------------- exact values


@pytest.mark.parametrize(
    "margin, weight, expected",
    [
        # similar (a, b): 0.5^2 / 2 = 0.125; dissimilar (a, c): max(0, 1 - 1)^2 / 2 = 0, (b, c): 0.5^2 / 2 = 0.125
        (1.0, 0.5, 0.5 * 0.125 + 0.5 * (0.0 + 0.125) / 2),  # 0.09375
        (1.0, 0.25, 0.25 * 0.125 + 0.75 * 0.0625),  # 0.078125
        # margin 2: (a, c) 1^2 / 2 = 0.5, (b, c) 1.5^2 / 2 = 1.125, mean 0.8125
        (2.0, 0.5, 0.5 * 0.125 + 0.5 * 0.8125),  # 0.46875
    ],
)
def test_three_points_exact(margin, weight, expected):
    loss = MarginContrastiveLoss(margin=margin, similar_weight=weight)(_pts(A, B, C), torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_only_similar_pairs_uses_similar_mean():
    # all class 2: pairs cost 0.125, 0.5, 0.125 -> mean 0.25 (the weight does not apply)
    loss = MarginContrastiveLoss(similar_weight=0.1)(_pts(A, B, C), torch.tensor([2, 2, 2]))
    assert loss.item() == pytest.approx(0.25, abs=1e-7)


def test_only_dissimilar_pairs_uses_dissimilar_mean():
    # classes 0, 1, 2: pairs (a, b) 0.125, (a, c) 0, (b, c) 0.125 -> mean 1 / 12
    loss = MarginContrastiveLoss(similar_weight=0.9)(_pts(A, B, C), torch.tensor([0, 1, 2]))
    assert loss.item() == pytest.approx(0.25 / 3, abs=1e-7)


def test_binary_merges_background_and_mimic():
    emb, labels = _pts(A, B, C), torch.tensor([0, 2, 1])
    # three classes: every pair dissimilar -> 1 / 12; binary: (a, b) similar (0.125), the rest as above
    assert MarginContrastiveLoss()(emb, labels).item() == pytest.approx(0.25 / 3, abs=1e-7)
    assert MarginContrastiveLoss(binary=True)(emb, labels).item() == pytest.approx(0.09375, abs=1e-7)


@pytest.mark.parametrize("n_background", [2, 5])
def test_balanced_whatever_the_pair_ratio(n_background):
    # n coincident background points (similar pairs cost 0) and one mitosis at 0.5 (dissimilar 0.125 each):
    # 1 vs 2 similar-per-dissimilar pairs with 2 points, 10 vs 5 with 5; the loss is 0.5 * 0 + 0.5 * 0.125 both times
    emb = torch.tensor([A] * n_background + [B], requires_grad=True)
    labels = torch.tensor([0] * n_background + [1])
    loss = MarginContrastiveLoss()(emb, labels)
    assert loss.item() == pytest.approx(0.0625, abs=1e-7)
    loss.backward()
    assert torch.isfinite(emb.grad).all()  # d = 0 between the coincident points: no NaN from sqrt


def test_matches_pair_loop_oracle():
    g = torch.Generator().manual_seed(3)
    for seed in range(5):
        emb = torch.randn(9, 4, generator=g) * 0.6
        labels = torch.randint(0, 3, (9,), generator=g)
        for margin, w in [(1.0, 0.5), (1.5, 0.3)]:
            got = MarginContrastiveLoss(margin=margin, similar_weight=w)(emb, labels).item()
            assert got == pytest.approx(_oracle(emb, labels.tolist(), margin, w), rel=1e-5), seed


def test_label_forms_agree():
    emb = _pts(A, B, C)
    ref = MarginContrastiveLoss()(emb, torch.tensor([0, 0, 1]))
    for labels in (torch.tensor([[0], [0], [1]]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([[0.0], [0.0], [1.0]])):
        assert MarginContrastiveLoss()(emb, labels).item() == ref.item()


# ---------------------------------------------------------------- gradients and edge cases


def test_gradients_exact():
    # similar pair at d = 0.6: loss d^2 / 2 = 0.18, grad wrt a = a - b
    emb = _pts([0.0, 0.0], [0.6, 0.0])
    loss = MarginContrastiveLoss()(emb, torch.tensor([1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.18, abs=1e-7)
    torch.testing.assert_close(emb.grad, torch.tensor([[-0.6, 0.0], [0.6, 0.0]]))
    # dissimilar pair at d = 0.6, margin 1: loss 0.4^2 / 2 = 0.08, grad wrt b = -(1 - d) (b - a) / d
    emb = _pts([0.0, 0.0], [0.6, 0.0])
    loss = MarginContrastiveLoss()(emb, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.08, abs=1e-7)
    torch.testing.assert_close(emb.grad, torch.tensor([[0.4, 0.0], [-0.4, 0.0]]))


def test_coincident_dissimilar_pair_has_finite_gradient():
    emb = _pts(A, A)
    loss = MarginContrastiveLoss()(emb, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.5)  # max(0, 1 - 0)^2 / 2
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("b", [0, 1])
def test_fewer_than_two_embeddings_zero_loss_in_graph(b):
    emb = torch.randn(b, 4, requires_grad=True)
    loss = MarginContrastiveLoss()(emb, torch.zeros(b, 1))
    assert loss.item() == 0.0 and loss.ndim == 0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros(b, 4))


def test_bad_inputs_raise():
    loss = MarginContrastiveLoss()
    with pytest.raises(ValueError, match=r"labels must be \(B,\) or \(B, 1\) with B = 3, got \(2,\)"):
        loss(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"embeddings must be \(B, D\), got \(3,\)"):
        loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="non-integers"):
        loss(torch.zeros(2, 2), torch.tensor([0.5, 1.0]))
    for kwargs in ({"margin": 0.0}, {"margin": float("inf")}, {"similar_weight": 1.5}, {"similar_weight": True}):
        with pytest.raises(ValueError):
            MarginContrastiveLoss(**kwargs)


def test_toy_training_separates_classes_beyond_margin():
    """A linear 4-D -> 2-D embedding, 100 Adam steps: every dissimilar pair ends beyond the margin."""
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    labels = torch.arange(3).repeat_interleave(10)
    # class signal in dims 0-1 with little spread, large nuisance spread in dims 2-3
    x = means[labels] + torch.cat([0.05 * torch.randn(30, 2, generator=g), 0.5 * torch.randn(30, 2, generator=g)], 1)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2, bias=False)
    loss_fn = MarginContrastiveLoss(margin=1.0)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    with torch.no_grad():
        start = loss_fn(net(x), labels).item()
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(net(x), labels)
        loss.backward()
        opt.step()
    with torch.no_grad():
        emb = net(x)
        dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None]
    assert loss.item() < 0.01 < start
    assert dist[~same].min() > 1.0  # beyond the margin
    assert dist[same].max() < 0.5 * dist[~same].min()

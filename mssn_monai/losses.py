"""Losses of the two MSSN stages."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiScaleBCELoss", "MarginContrastiveLoss", "DomainAdversarialLoss", "grad_reverse"]


class MultiScaleBCELoss(nn.Module):
    """Binary cross-entropy of every FNR sub-model's patch logit against the same label, averaged.

    Each sub-model is its own mitosis / not-mitosis classifier (Ma et al. train them separately); with
    a shared stem, averaging their losses trains all heads at once and the stem for all of them.

    Args:
        pos_weight: weight of the positive class in each BCE (``None``: 1). Above 1 favours recall,
            which is what stage 1 is for.
        weights: optional per-sub-model weights, ``{name: weight}`` (missing names: 1).

    Shapes:
        ``logits``: ``{name: (B,)}`` (``MultiScaleFNR.classify_patches``); ``target``: ``(B,)`` or
        ``(B, 1)`` with 1 = mitosis, 0 = not. Returns a scalar.
    """

    def __init__(self, pos_weight: float | None = None, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight!r}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self.weights = dict(weights or {})

    def forward(self, logits: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, Mapping) or not logits:
            raise ValueError(f"logits must be a non-empty mapping name -> (B,) tensor, got {type(logits).__name__}")
        target = target.reshape(-1).float()
        pos_weight = None if self.pos_weight is None else target.new_tensor(self.pos_weight)
        total, norm = target.new_zeros(()), 0.0
        for name, logit in logits.items():
            logit = logit.reshape(-1)
            if logit.shape != target.shape:
                raise ValueError(f"logits[{name!r}] has shape {tuple(logit.shape)}, target {tuple(target.shape)}")
            w = float(self.weights.get(name, 1.0))
            total = total + w * F.binary_cross_entropy_with_logits(logit.float(), target, pos_weight=pos_weight)
            norm += w
        return total / norm


class MarginContrastiveLoss(nn.Module):
    """Margin contrastive loss over every pair of a batch (Hadsell, Chopra & LeCun 2006; MSSN stage 2).

    For a pair of embeddings at Euclidean distance ``d``: a *similar* pair (same class) costs
    ``d^2 / 2`` and a *dissimilar* pair ``max(0, margin - d)^2 / 2``: Hadsell et al.'s Eq. 4, with the
    1/2 on both terms (so the gradient of a similar pair's cost is the difference vector itself).
    Ma et al. write the same two terms, ``(1 - Y) max(0, M - E) + Y E``; their exponents do not
    survive in the text we have, and the squared form is the one of the work they cite.

    Every pair ``i < j`` of the batch is used, so one batch of ``B`` embeddings of a shared-weight
    network *is* the Siamese pair, ``B (B - 1) / 2`` times.

    Balancing: the loss is ``similar_weight * mean(similar costs) + (1 - similar_weight) *
    mean(dissimilar costs)``, so the ratio of pair types in a batch (mitoses are rare) does not
    weigh the terms; a batch with no similar pair uses the dissimilar mean alone and vice versa. A
    batch of fewer than 2 embeddings has no pair: the loss is 0, still connected to the graph
    (``embeddings.sum() * 0``), so a last batch of 1 neither crashes training nor changes weights.

    Classes are those of :class:`mssn_monai.keys.PatchClass`: 0 background, 1 mitosis, 2 hard
    mimic (use the sample's ``"class"`` key; its ``"label"`` key is already binary).

    Args:
        margin: distance beyond which dissimilar pairs cost nothing, > 0, in embedding units. Use the
            network's ``margin`` (one config id); 1.0 on unit-norm embeddings (diameter 2).
        similar_weight: weight of the similar-pair mean, in ``[0, 1]``; the dissimilar mean gets the rest.
        binary: compare mitosis (class 1) against everything else: classes 0 and 2 count as similar.

    Shapes:
        ``embeddings``: ``(B, D)`` float; ``labels``: ``(B,)`` or ``(B, 1)`` integer classes (int or
        integral float). Returns a scalar.

    Example:
        >>> loss = MarginContrastiveLoss(margin=1.0)
        >>> loss(torch.tensor([[0.0, 0.0], [0.6, 0.0]]), torch.tensor([0, 1]))  # one dissimilar pair, d = 0.6
        tensor(0.0800)
    """

    def __init__(self, margin: float = 1.0, similar_weight: float = 0.5, binary: bool = False) -> None:
        super().__init__()
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin <= 0:
            raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
        if isinstance(similar_weight, bool) or not isinstance(similar_weight, (int, float)):
            raise ValueError(f"similar_weight must be a number in [0, 1], got {similar_weight!r}")
        if not 0.0 <= similar_weight <= 1.0:
            raise ValueError(f"similar_weight must be in [0, 1], got {similar_weight!r}")
        self.margin = float(margin)
        self.similar_weight = float(similar_weight)
        self.binary = bool(binary)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Balanced mean pair cost of a batch.

        Args:
            embeddings: ``(B, D)`` embeddings.
            labels: ``(B,)`` or ``(B, 1)`` classes (0 background, 1 mitosis, 2 mimic).

        Returns:
            A scalar tensor (0 with a ``grad_fn`` when ``B < 2``).

        Raises:
            ValueError: on a wrong shape (the message gives the shapes received) or non-integer labels.
        """
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
            got = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must be (B, D), got {got}")
        b = int(embeddings.shape[0])
        labels = torch.as_tensor(labels, device=embeddings.device)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape != (b,):
            raise ValueError(f"labels must be (B,) or (B, 1) with B = {b}, got {tuple(labels.shape)}")
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError("labels must be integer classes (0 background, 1 mitosis, 2 mimic), got non-integers")
        if b < 2:
            return embeddings.sum() * 0.0
        labels = labels.round().long()
        if self.binary:
            labels = (labels == 1).long()
        i, j = torch.triu_indices(b, b, offset=1, device=embeddings.device)
        diff = embeddings[i] - embeddings[j]
        sq = (diff * diff).sum(dim=1)  # d^2, exact (no matmul expansion)
        same = labels[i] == labels[j]
        # sqrt has an infinite derivative at 0: take it only where d^2 > 0 (d = 0 gets a zero subgradient).
        positive = sq > 0
        dist = torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))
        sim_cost = 0.5 * sq[same]
        dis_cost = 0.5 * F.relu(self.margin - dist[~same]) ** 2
        if dis_cost.numel() == 0:
            return sim_cost.mean()
        if sim_cost.numel() == 0:
            return dis_cost.mean()
        return self.similar_weight * sim_cost.mean() + (1.0 - self.similar_weight) * dis_cost.mean()


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """The identity forward; the gradient times ``-weight`` backward (Ganin & Lempitsky's reversal layer)."""
    return _GradReverse.apply(x, float(weight))


class DomainAdversarialLoss(nn.Module):
    """A stage-2 loss plus a domain classifier behind a gradient reversal (DANN; Ganin et al., JMLR 2016).

    The MIDOG reference approach (Wilm et al. 2021) trains its detector this way on scanner labels: a
    small head learns to tell the domain (scanner, lab, look) of each patch from its embedding, and the
    reversed gradient pushes the embedding to hide it, so the classes are told apart by what every
    domain shares. ``loss(embeddings, target)`` is ``base(embeddings, class) + CE(head(R(embeddings)),
    domain)``, ``R`` the identity forward and ``-weight`` times the gradient backward; the head trains
    on the plain cross-entropy. With ``weight`` 0, fewer than two domains or a ``(B,)`` target it is
    ``base`` alone (the head is not run).

    Args:
        loss: the stage-2 loss, e.g. :class:`MarginContrastiveLoss`.
        num_domains: how many domains the target's second column indexes (``PatchSampleDataset.domains``).
        embedding_dim: ``D`` of the embeddings.
        weight: the reversal's strength, >= 0.
        hidden: width of the head's hidden layer.

    Shapes:
        ``embeddings``: ``(B, D)``; ``target``: ``(B, 2)`` int class and domain index (or ``(B,)`` class).
    """

    def __init__(
        self, loss: nn.Module, num_domains: int, embedding_dim: int, weight: float = 0.0, hidden: int = 64
    ) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if int(num_domains) < 1 or int(embedding_dim) < 1 or int(hidden) < 1:
            raise ValueError(
                f"num_domains, embedding_dim and hidden must be >= 1, got {num_domains}, {embedding_dim}, {hidden}"
            )
        self.loss = loss
        self.num_domains = int(num_domains)
        self.weight = float(weight)
        self.head = nn.Sequential(
            nn.Linear(int(embedding_dim), int(hidden)), nn.ReLU(), nn.Linear(int(hidden), self.num_domains)
        )

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = torch.as_tensor(target, device=embeddings.device)
        if target.ndim != 2 or target.shape[1] != 2:
            return self.loss(embeddings, target)
        base = self.loss(embeddings, target[:, 0])
        if self.weight == 0 or self.num_domains < 2:
            return base
        logits = self.head(grad_reverse(embeddings, self.weight))
        return base + F.cross_entropy(logits, target[:, 1].long())

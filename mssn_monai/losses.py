"""Losses of the two MSSN stages."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiScaleBCELoss"]


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

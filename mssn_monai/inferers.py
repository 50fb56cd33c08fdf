"""Inferers: how the engines call the FNR network (patch classification or dense candidates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from mssn_monai.networks.fnr import FUSED_KEY, OUTPUT_STRIDE
from mssn_monai.ops.peaks import find_peaks

__all__ = ["PatchClassificationInferer", "DenseCandidateInferer", "ClassSimilarityInferer"]


class PatchClassificationInferer(Inferer):
    """Calls ``network.classify_patches(inputs)``: the training path of ``MultiScaleFNR``.

    Returns ``{name: (B,)}`` logits, which ``MultiScaleBCELoss`` takes.
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return network.classify_patches(inputs)


class DenseCandidateInferer(Inferer):
    """Runs ``MultiScaleFNR`` densely on whole images and returns candidates per image.

    Args:
        threshold: minimum probability of a candidate.
        min_distance_um: minimum distance between two candidates of one map, in micrometres
            (converted with the ``spacing`` passed at call time).
        keys: which maps to turn into candidates (default: only the fused map); e.g. every sub-model
            name plus ``"fused"`` for the paper's ablation.

    Call:
        ``inferer(images (B, 3, H, W) float [0, 1], network, spacing=[um/px per image])`` ->
        a list of ``B`` dicts ``{key: (N, 3) float tensor of x, y, score}`` (pixels).
    """

    def __init__(self, threshold: float = 0.5, min_distance_um: float = 4.0, keys: Sequence[str] | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        if min_distance_um < 0:
            raise ValueError(f"min_distance_um must be >= 0, got {min_distance_um!r}")
        self.threshold = float(threshold)
        self.min_distance_um = float(min_distance_um)
        self.keys = tuple(keys) if keys else (FUSED_KEY,)

    def __call__(
        self, inputs: torch.Tensor, network: nn.Module, *args: Any, spacing: Sequence[float] | None = None, **kwargs
    ) -> list[dict[str, torch.Tensor]]:
        maps = network(inputs.contiguous(memory_format=torch.channels_last))
        missing = [k for k in self.keys if k not in maps]
        if missing:
            raise KeyError(f"network output has no map {missing}; it has {list(maps)}")
        n = inputs.shape[0]
        if spacing is None:
            raise ValueError("DenseCandidateInferer needs spacing=[um/px per image] to convert min_distance_um")
        spacing = [float(s) for s in spacing]
        if len(spacing) != n:
            raise ValueError(f"got {len(spacing)} spacings for a batch of {n} images")
        out = []
        for b in range(n):
            min_px = self.min_distance_um / spacing[b]
            out.append(
                {
                    k: torch.as_tensor(
                        find_peaks(maps[k][b, 0].float().cpu(), self.threshold, min_px, stride=OUTPUT_STRIDE)
                    )
                    for k in self.keys
                }
            )
        return out


class ClassSimilarityInferer(Inferer):
    """Embeds patches with a ``SiameseEmbedding`` and returns their similarity to each class, ``(B, 3)``."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return network.class_similarities(network(inputs))

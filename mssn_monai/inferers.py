"""Inferers: how the engines call the detector and its stages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["CandidateInferer", "ClassSimilarityInferer"]


class CandidateInferer(Inferer):
    """Stage-1 candidates of each image of a batch: ``MSSNDetector.candidates``, the one runner.

    Call:
        ``inferer(images (B, 3, H, W) float [0, 1], detector, spacing=[um/px per image])`` -> a list of
        ``B`` ``(N, 3)`` float64 tensors of ``x, y, fused probability`` (pixels).
    """

    def __call__(
        self, inputs: torch.Tensor, network: nn.Module, *args: Any, spacing: Sequence[float] | None = None, **kwargs
    ) -> list[torch.Tensor]:
        if spacing is None:
            raise ValueError("CandidateInferer needs spacing=[um/px per image] (PrepareBatchPoints passes it)")
        spacing = [float(s) for s in spacing]
        if len(spacing) != inputs.shape[0]:
            raise ValueError(f"got {len(spacing)} spacings for a batch of {inputs.shape[0]} images")
        return [network.candidates(image, s) for image, s in zip(inputs, spacing, strict=True)]


class ClassSimilarityInferer(Inferer):
    """Embeds patches with a ``SiameseEmbedding`` and returns their similarity to each class, ``(B, 3)``."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return network.class_similarities(network(inputs))

"""Batch preparation for the Ignite engines (MONAI ``prepare_batch`` callables)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mssn_monai.keys import DatalistKeys, PatchKeys

__all__ = ["PrepareBatchPoints", "PrepareBatchClass"]


class PrepareBatchPoints:
    """``prepare_batch`` for whole-image evaluation with point ground truth.

    Takes a collated batch of records loaded by ``LoadRGBd`` (``image`` ``(B, 3, H, W)``, ``mitoses``
    ``(B, N, 2)``, ``spacing`` ``(B,)``; batch size 1 in practice, since fields differ in size and in
    their number of mitoses) and returns ``(image, targets, (), {"spacing": [...]})``: the evaluator
    passes ``spacing`` on to the inferer, and ``targets`` is a list of ``{"mitoses": (N, 2) numpy,
    "spacing": float}`` that metrics read.
    """

    def __call__(
        self, batchdata: dict[str, Any], device: torch.device | str | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, list[dict[str, Any]], tuple, dict[str, Any]]:
        for key in (DatalistKeys.IMAGE, DatalistKeys.MITOSES, DatalistKeys.SPACING):
            if key not in batchdata:
                raise KeyError(f"batch has no {key!r} (keys: {sorted(batchdata)}); load records with LoadRGBd")
        image = batchdata[DatalistKeys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
        spacing = [float(s) for s in torch.as_tensor(batchdata[DatalistKeys.SPACING]).reshape(-1)]
        mitoses = batchdata[DatalistKeys.MITOSES]
        if isinstance(mitoses, torch.Tensor) and mitoses.ndim == 3:
            mitoses = list(mitoses)
        targets = [
            {
                DatalistKeys.MITOSES: np.asarray(torch.as_tensor(m).cpu(), dtype=np.float64).reshape(-1, 2),
                DatalistKeys.SPACING: s,
            }
            for m, s in zip(mitoses, spacing, strict=True)
        ]
        return image, targets, (), {"spacing": spacing}


class PrepareBatchClass:
    """``prepare_batch`` for stage 2: ``(image, class)`` from a ``PatchSampleDataset`` batch.

    The Siamese loss and the nearest-reference metrics need the three-way class (0 background,
    1 mitosis, 2 mimic), not the binary ``label`` that stage 1 trains on. With ``domain_key`` the
    target is ``(B, 2)``: class and domain index, for
    :class:`~mssn_monai.losses.DomainAdversarialLoss`.

    Args:
        class_key: the batch key of the class.
        domain_key: the batch key of the domain index (``"domain"``), or ``None`` for the class alone.
    """

    def __init__(self, class_key: str = PatchKeys.CLASS, domain_key: str | None = None) -> None:
        self.class_key = class_key
        self.domain_key = domain_key

    def __call__(
        self, batchdata: dict[str, Any], device: torch.device | str | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for key in (self.class_key, self.domain_key):
            if key is not None and key not in batchdata:
                raise KeyError(f"batch has no {key!r} (keys: {sorted(batchdata)})")
        image = batchdata[PatchKeys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
        classes = torch.as_tensor(batchdata[self.class_key]).reshape(-1).long().to(device=device)
        if self.domain_key is None:
            return image, classes
        domains = torch.as_tensor(batchdata[self.domain_key]).reshape(-1).long().to(device=device)
        return image, torch.stack([classes, domains], dim=1)

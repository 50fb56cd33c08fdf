"""Ignite handlers and metrics for MSSN training: candidate recall, epoch-seeded sampling, hard negatives."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from mssn_monai.networks.fnr import FUSED_KEY
from mssn_monai.ops.matching import match_points

__all__ = ["CandidateRecall", "CandidatesPerImage", "EpochSetter", "HardNegativeMiner", "false_positive_points"]

logger = logging.getLogger(__name__)


def _pred_label(output: dict[str, Any]) -> tuple[Any, Any]:
    return output["pred"], output["label"]


class _CandidateStats(Metric):
    """Accumulates, over validation images, how many mitoses the candidates of one map hit.

    ``update((pred, label))``: ``pred`` is a list of ``{key: (N, 3) x, y, score}`` per image (the
    ``DenseCandidateInferer`` output), ``label`` a list of ``{"mitoses": (M, 2), "spacing": um/px}``
    (``PrepareBatchPoints``). A mitosis is hit when a candidate lies within ``radius_um``; one-to-one.
    """

    def __init__(
        self,
        radius_um: float = 8.0,
        key: str = FUSED_KEY,
        output_transform: Callable = _pred_label,
        device: str | torch.device = "cpu",
    ) -> None:
        if radius_um <= 0:
            raise ValueError(f"radius_um must be > 0, got {radius_um!r}")
        self.radius_um = float(radius_um)
        self.key = key
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._tp = self._gt = self._cand = self._images = 0

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        for pred, label in zip(preds, labels, strict=True):
            cand = np.asarray(torch.as_tensor(pred[self.key]).cpu(), dtype=np.float64).reshape(-1, 3)
            gt = np.asarray(label["mitoses"], dtype=np.float64).reshape(-1, 2)
            match = match_points(gt, cand[:, :2], self.radius_um / float(label["spacing"]))
            self._tp += len(match.gt_idx)
            self._gt += len(gt)
            self._cand += len(cand)
            self._images += 1


class CandidateRecall(_CandidateStats):
    """Fraction of ground-truth mitoses with a candidate within ``radius_um`` (1.0 when there are none)."""

    def compute(self) -> float:
        return self._tp / self._gt if self._gt else 1.0


class CandidatesPerImage(_CandidateStats):
    """Mean number of candidates per image."""

    def compute(self) -> float:
        return self._cand / self._images if self._images else 0.0


class EpochSetter:
    """Calls ``dataset.set_epoch(epoch)`` when each epoch starts, so random patch draws change per epoch.

    Args:
        dataset: anything with ``set_epoch(int)`` (``PatchSampleDataset``).
    """

    def __init__(self, dataset: Any) -> None:
        if not callable(getattr(dataset, "set_epoch", None)):
            raise TypeError(f"{type(dataset).__name__} has no set_epoch(epoch) method")
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch)


def false_positive_points(
    candidates: np.ndarray, mitoses: np.ndarray, radius_px: float, max_points: int | None = None
) -> np.ndarray:
    """Candidates farther than ``radius_px`` from every mitosis, highest score first: ``(K, 2)`` x, y."""
    cand = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(mitoses, dtype=np.float64).reshape(-1, 2)
    if len(gt):
        d = np.hypot(cand[:, None, 0] - gt[None, :, 0], cand[:, None, 1] - gt[None, :, 1]).min(axis=1)
        cand = cand[d > radius_px]
    cand = cand[np.argsort(-cand[:, 2], kind="stable")]
    if max_points is not None:
        cand = cand[:max_points]
    return cand[:, :2]


class HardNegativeMiner:
    """After the first round of training, add the FNR's false positives on training images as hard negatives.

    At the end of epoch ``start_epoch`` (and every ``interval`` epochs after it, when ``interval > 0``),
    runs the network densely over every training image of ``dataset``, takes the fused candidates
    above ``threshold`` that lie farther than ``exclusion_um`` from every mitosis, and passes up to
    ``max_per_image`` of them (highest probability first) to ``dataset.add_hard_negatives``. The
    network is run in eval mode and put back in the mode it had.

    Args:
        dataset: a ``PatchSampleDataset`` (needs ``data`` records, ``image(i)`` and ``add_hard_negatives``).
        network: the ``MultiScaleFNR`` being trained.
        start_epoch: first mining epoch (1-based, at its end).
        interval: mine again every ``interval`` epochs after ``start_epoch``; 0 = once.
        threshold: probability above which a candidate counts.
        exclusion_um: a candidate within this distance of a mitosis is not a false positive.
        min_distance_um: minimum distance between candidates (local-maximum suppression).
        max_per_image: cap on mined points per image and round.
    """

    def __init__(
        self,
        dataset: Any,
        network: torch.nn.Module,
        start_epoch: int = 1,
        interval: int = 0,
        threshold: float = 0.5,
        exclusion_um: float = 8.0,
        min_distance_um: float = 4.0,
        max_per_image: int = 50,
    ) -> None:
        for attr in ("data", "image", "add_hard_negatives"):
            if not hasattr(dataset, attr):
                raise TypeError(
                    f"{type(dataset).__name__} has no {attr!r}; HardNegativeMiner needs a PatchSampleDataset"
                )
        if start_epoch < 1 or interval < 0 or max_per_image < 1:
            raise ValueError(
                "need start_epoch >= 1, interval >= 0, max_per_image >= 1; "
                f"got {start_epoch}, {interval}, {max_per_image}"
            )
        self.dataset = dataset
        self.network = network
        self.start_epoch = int(start_epoch)
        self.interval = int(interval)
        self.threshold = float(threshold)
        self.exclusion_um = float(exclusion_um)
        self.min_distance_um = float(min_distance_um)
        self.max_per_image = int(max_per_image)
        self.rounds = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def due(self, epoch: int) -> bool:
        """Whether mining runs at the end of ``epoch``."""
        if epoch < self.start_epoch:
            return False
        if epoch == self.start_epoch:
            return True
        return self.interval > 0 and (epoch - self.start_epoch) % self.interval == 0

    def __call__(self, engine: Engine) -> None:
        if not self.due(engine.state.epoch):
            return
        self.mine()

    def mine(self) -> int:
        """Run one mining round now; returns the number of points added."""
        from tqdm import tqdm

        from mssn_monai.inference import fnr_candidates

        added = 0
        records = self.dataset.data
        for i in tqdm(range(len(records)), desc="hard-negative mining", unit="image", leave=False):
            rec = records[i]
            spacing = float(rec["spacing"])
            cand = fnr_candidates(self.network, self.dataset.image(i), spacing, self.threshold, self.min_distance_um)
            fps = false_positive_points(cand, rec.get("mitoses", []), self.exclusion_um / spacing, self.max_per_image)
            before = len(self.dataset.hard_negatives.get(i, ())) if hasattr(self.dataset, "hard_negatives") else 0
            self.dataset.add_hard_negatives(i, fps)
            after = len(self.dataset.hard_negatives.get(i, ())) if hasattr(self.dataset, "hard_negatives") else len(fps)
            added += after - before
        self.rounds += 1
        logger.info("hard-negative mining round %d: %d new points over %d images", self.rounds, added, len(records))
        return added

"""Ignite handlers and metrics for MSSN training: candidate recall, epoch-seeded sampling, hard negatives."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from mssn_monai.networks.fnr import FUSED_KEY
from mssn_monai.ops.matching import match_points

__all__ = [
    "CandidateRecall",
    "CandidatesPerImage",
    "EpochSetter",
    "HardNegativeMiner",
    "false_positive_points",
    "NearestReferenceAccuracy",
    "ReferenceBankRefresh",
    "TwoStageValidation",
    "gap_midpoint",
]

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

    Under a ``torch.distributed`` process group (``multi_gpu_train.json``) every rank must call it at
    the same time: the network first takes rank 0's parameters and buffers, each rank mines every
    ``world_size``-th image, and every rank adds all ranks' points in image order, so every rank's
    dataset ends up with the hard negatives one process would have added.

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

        from mssn_monai.distributed import all_gather_objects, broadcast_module_state, get_rank, get_world_size
        from mssn_monai.inference import fnr_candidates

        rank, world_size = get_rank(), get_world_size()
        broadcast_module_state(self.network)  # no-op in one process; else every rank mines with rank 0's weights
        records = self.dataset.data
        found = {}
        mine_here = range(rank, len(records), world_size)
        for i in tqdm(mine_here, desc="hard-negative mining", unit="image", leave=False, disable=rank > 0):
            rec = records[i]
            spacing = float(rec["spacing"])
            cand = fnr_candidates(self.network, self.dataset.image(i), spacing, self.threshold, self.min_distance_um)
            found[i] = false_positive_points(
                cand, rec.get("mitoses", []), self.exclusion_um / spacing, self.max_per_image
            )
        for part in all_gather_objects(found):  # every rank's images; just [found] in one process
            found.update(part)
        added = 0
        for i in range(len(records)):  # image order on every rank, so every rank's dataset gets the same points
            added += int(self.dataset.add_hard_negatives(i, found[i]))  # returns how many were new
        self.rounds += 1
        logger.info("hard-negative mining round %d: %d new points over %d images", self.rounds, added, len(records))
        return added


def _classes_only(output: dict[str, Any]) -> tuple[Any, Any]:
    return output["pred"], output["label"]


class NearestReferenceAccuracy(Metric):
    """Accuracy of the nearest-reference class, for one class or all, on held-out patches (stage 2).

    ``update((similarities (B, 3), classes (B,)))``: the predicted class is the one with the highest
    similarity (``ClassSimilarityInferer`` output). With ``class_index`` set, only patches of that
    class count (per-class accuracy = recall of that class); ``None`` counts all.
    """

    def __init__(
        self, class_index: int | None = None, output_transform: Callable = _classes_only, device: str = "cpu"
    ) -> None:
        self.class_index = class_index
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._correct = self._total = 0

    def update(self, output: Sequence[Any]) -> None:
        sims, classes = output
        pred = torch.as_tensor(sims).argmax(dim=1).cpu()
        target = torch.as_tensor(classes).reshape(-1).long().cpu()
        mask = torch.ones_like(target, dtype=torch.bool) if self.class_index is None else target == self.class_index
        self._correct += int((pred[mask] == target[mask]).sum())
        self._total += int(mask.sum())

    def compute(self) -> float:
        return self._correct / self._total if self._total else float("nan")


class ReferenceBankRefresh:
    """Rebuild the Siamese network's reference bank from un-augmented reference patches.

    Embeds every sample of ``dataset`` (a ``PatchSampleDataset`` without augmentation, class key
    ``"class"``) in eval mode and calls ``network.build_references(embeddings, classes, per_class)``.
    Attached to an evaluator it runs when validation starts, so similarities use the current weights;
    attached to a trainer with ``event="COMPLETED"`` it leaves the final bank in the saved weights.

    Args:
        network: a ``SiameseEmbedding``.
        dataset: reference patches; its epoch is fixed to ``epoch`` so the bank is reproducible.
        per_class: references kept per class.
        batch_size: embedding batch size.
        event: Ignite event name to run on (``STARTED``, ``EPOCH_COMPLETED``, ``COMPLETED``).
        epoch: the dataset epoch the references are drawn from.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        dataset: Any,
        per_class: int = 8,
        batch_size: int = 64,
        event: str = "STARTED",
        epoch: int = 0,
    ) -> None:
        if not hasattr(network, "build_references"):
            raise TypeError(f"{type(network).__name__} has no build_references(); expected a SiameseEmbedding")
        if per_class < 1 or batch_size < 1:
            raise ValueError(f"per_class and batch_size must be >= 1, got {per_class}, {batch_size}")
        self.network = network
        self.dataset = dataset
        self.per_class = int(per_class)
        self.batch_size = int(batch_size)
        self.event = Events[event.upper()]
        self.epoch = int(epoch)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> None:
        self.refresh()

    def refresh(self) -> None:
        from torch.utils.data import DataLoader

        device = next(self.network.parameters()).device
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=0)
        embeddings, classes = [], []
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.inference_mode():
                for batch in loader:
                    embeddings.append(self.network(batch["image"].to(device)))
                    classes.append(torch.as_tensor(batch["class"]).reshape(-1))
        finally:
            self.network.train(was_training)
        self.network.build_references(torch.cat(embeddings), torch.cat(classes).to(device), self.per_class)
        logger.info(
            "reference bank rebuilt from %d patches (%d per class kept)", sum(map(len, classes)), self.per_class
        )


def gap_midpoint(scores: np.ndarray, threshold: float) -> float:
    """The middle of the gap below ``threshold`` in ``scores``: same decisions on ``scores``, widest margin.

    Args:
        scores: ``(N,)`` scores (e.g. calibrated probabilities of the kept candidates).
        threshold: a threshold that keeps ``scores >= threshold``.

    Returns:
        ``(threshold + s) / 2`` where ``s`` is the highest score below ``threshold`` (0 when there is none),
        so ``scores >= result`` keeps exactly what ``scores >= threshold`` kept.

    Example:
        >>> gap_midpoint(np.array([0.2, 0.6, 0.9]), 0.6)
        0.4
    """
    below = np.asarray(scores, dtype=np.float64)
    below = below[below < threshold]
    return (float(threshold) + (float(below.max()) if below.size else 0.0)) / 2.0


class TwoStageValidation:
    """Detection after both stages on held-out fields; also fits the score calibration there.

    When it runs (at the end of training by default), it rebuilds the reference bank, runs the FNR
    candidates and the FPR vote on every record, fits ``p = sigmoid(a * votes + b)`` by Platt scaling
    on the candidates (label 1 = matched to a mitosis within ``radius_um``), then picks the operating
    threshold: among the candidates the vote keeps, the lowest calibrated probability that maximises
    F1 on these fields (micro, ``mssn_monai.metrics``), moved down to the middle of the gap between it
    and the next lower probability (:func:`gap_midpoint`; the largest margin on these fields, so a
    true mitosis scored a little lower on new fields still passes). Calibration and threshold are stored in the FPR
    network (so they are saved with its weights), and the numbers go to ``engine.state.metrics``:
    ``fields_f1``, ``fields_precision``, ``fields_recall`` at the operating threshold,
    ``fields_vote_only_f1`` (the paper's vote alone), ``fields_operating_threshold``, ``fields_fnr_fp``
    and ``fields_fpr_fp`` (false positives before and after stage 2), ``fields_fnr_recall``.

    Args:
        fnr: the stage-1 network.
        fpr: the stage-2 network.
        data: held-out records (``image``, ``mitoses``, ``spacing``).
        reference_refresh: a :class:`ReferenceBankRefresh` run first (``None``: keep the current bank).
        normalizer: stain normaliser applied to each field first (the detector's, e.g. the bundle's
            ``stain_normalization``), or ``None``.
        threshold, min_distance_um, vote_radius_px: the detector's settings.
        radius_um: match radius in micrometres.
        event: Ignite event to run on.
    """

    def __init__(
        self,
        fnr: torch.nn.Module,
        fpr: torch.nn.Module,
        data: Sequence[dict[str, Any]],
        reference_refresh: ReferenceBankRefresh | None = None,
        normalizer: Any = None,
        threshold: float = 0.5,
        min_distance_um: float = 4.0,
        vote_radius_px: float = 2.0,
        radius_um: float = 8.0,
        event: str = "COMPLETED",
    ) -> None:
        self.fnr, self.fpr, self.data = fnr, fpr, list(data)
        self.reference_refresh = reference_refresh
        self.normalizer = normalizer
        self.threshold = float(threshold)
        self.min_distance_um = float(min_distance_um)
        self.vote_radius_px = float(vote_radius_px)
        self.radius_um = float(radius_um)
        self.event = Events[event.upper()]
        self.results: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> None:
        self.results = self.run()
        if engine is not None:
            engine.state.metrics.update(self.results)
        logger.info(
            "two-stage detection on %d held-out fields: %s",
            len(self.data),
            ", ".join(f"{k} {v:.4g}" for k, v in self.results.items()),
        )

    def run(self) -> dict[str, float]:
        from mssn_monai.inference import detect_two_stage, normalize_field
        from mssn_monai.io import read_image_rgb
        from mssn_monai.metrics import evaluate_predictions
        from mssn_monai.networks.fpr import fit_calibration

        if not self.data:
            return {}
        if self.reference_refresh is not None:
            self.reference_refresh.refresh()
        self.fpr.set_operating_threshold(0.0)
        outputs, all_votes, all_labels = {}, [], []
        for rec in self.data:
            image = normalize_field(self.normalizer, read_image_rgb(rec["image"]))
            spacing = float(rec["spacing"])
            out = detect_two_stage(
                self.fnr, self.fpr, image, spacing, self.threshold, self.min_distance_um, self.vote_radius_px
            )
            outputs[Path(rec["image"]).stem] = out
            gt = np.asarray(rec["mitoses"], dtype=np.float64).reshape(-1, 2)
            match = match_points(gt, out["candidates"][:, :2], self.radius_um / spacing)
            labels = np.zeros(len(out["candidates"]))
            labels[match.det_idx] = 1.0
            all_votes.append(out["votes"])
            all_labels.append(labels)
        votes = torch.as_tensor(np.concatenate(all_votes), dtype=torch.float32)
        labels = torch.as_tensor(np.concatenate(all_labels), dtype=torch.float32)
        if len(votes) and 0 < float(labels.sum()) < len(labels):
            a, b = fit_calibration(votes, labels)
            self.fpr.set_calibration(float(a), float(b))
        # probabilities under the new calibration; the vote's decisions do not change with it
        voted = {
            stem: np.column_stack(
                [o["candidates"][o["voted"], :2], self.fpr.calibrated_score(torch.as_tensor(o["votes"]))[o["voted"]]]
            ).reshape(-1, 3)
            for stem, o in outputs.items()
        }
        candidates = {stem: o["candidates"] for stem, o in outputs.items()}
        vote_only = evaluate_predictions(self.data, voted, radius_um=self.radius_um, sweep=True)
        best = vote_only["sweep"]["best_threshold"]
        scores = np.concatenate([v[:, 2] for v in voted.values()]) if voted else np.zeros(0)
        operating = gap_midpoint(scores, float(best)) if best is not None else 0.0
        self.fpr.set_operating_threshold(operating)
        both = evaluate_predictions(self.data, voted, radius_um=self.radius_um, threshold=operating)["overall"]
        stage1 = evaluate_predictions(self.data, candidates, radius_um=self.radius_um)["overall"]
        return {
            "fields_precision": both["precision"],
            "fields_recall": both["recall"],
            "fields_f1": both["f1"],
            "fields_vote_only_f1": vote_only["overall"]["f1"],
            "fields_operating_threshold": operating,
            "fields_fnr_fp": float(stage1["fp"]),
            "fields_fpr_fp": float(both["fp"]),
            "fields_fnr_recall": stage1["recall"],
        }

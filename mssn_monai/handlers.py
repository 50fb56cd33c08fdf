"""Ignite handlers and metrics for MSSN training: candidate recall, epoch-seeded sampling, hard negatives,
the reference bank, weight averaging, and fitting the detector's operating point.

Every handler that runs the detector calls :class:`~mssn_monai.networks.detector.FieldDetector` (the
numpy face of ``MSSNDetector``), the code ``detect`` ships; a handler that changes the model says so
in its name (:class:`FitOperatingPoint`, :class:`ReferenceBankRefresh`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.utils import CommonKeys

from mssn_monai.constants import MATCH_RADIUS_UM
from mssn_monai.io import read_image_rgb
from mssn_monai.keys import DatalistKeys, DetectionKeys, PatchKeys
from mssn_monai.networks.detector import FieldDetector
from mssn_monai.ops.matching import match_points

__all__ = [
    "CandidateRecall",
    "CandidatesPerImage",
    "EpochSetter",
    "HardNegativeMiner",
    "false_positive_points",
    "NearestReferenceAccuracy",
    "ReferenceBankRefresh",
    "FitOperatingPoint",
    "refit_operating_point",
    "voted_candidates",
    "SaveWeights",
    "TrainingCheckpoint",
    "WeightAveraging",
    "gap_midpoint",
    "fit_vote_calibration",
    "best_operating_threshold",
]

logger = logging.getLogger(__name__)


def _pred_label(output: dict[str, Any]) -> tuple[Any, Any]:
    """An evaluator's ``(prediction, label)`` (MONAI's ``CommonKeys``)."""
    return output[CommonKeys.PRED], output[CommonKeys.LABEL]


class _CandidateStats(Metric):
    """Accumulates, over validation images, how many mitoses the stage-1 candidates hit.

    ``update((pred, label))``: ``pred`` is a list of ``(N, 3)`` candidates ``x, y, score`` per image (the
    ``CandidateInferer`` output), ``label`` a list of ``{"mitoses": (M, 2), "spacing": um/px}``
    (``PrepareBatchPoints``). A mitosis is hit when a candidate lies within ``radius_um``; one-to-one.
    """

    def __init__(
        self,
        radius_um: float = MATCH_RADIUS_UM,
        output_transform: Callable = _pred_label,
        device: str | torch.device = "cpu",
    ) -> None:
        if radius_um <= 0:
            raise ValueError(f"radius_um must be > 0, got {radius_um!r}")
        self.radius_um = float(radius_um)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._tp = self._gt = self._cand = self._images = 0

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        for pred, label in zip(preds, labels, strict=True):
            cand = np.asarray(torch.as_tensor(pred).cpu(), dtype=np.float64).reshape(-1, 3)
            gt = np.asarray(label[DatalistKeys.MITOSES], dtype=np.float64).reshape(-1, 2)
            match = match_points(gt, cand[:, :2], self.radius_um / float(label[DatalistKeys.SPACING]))
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
    """Add the detector's stage-1 false positives on the training fields to datasets as hard negatives.

    Runs :meth:`FieldDetector.candidates` (the ``candidates`` command's code: same normaliser, same
    peaks) on every training image of the first dataset, keeps the candidates farther than
    ``exclusion_um`` from every mitosis, and passes up to ``max_per_image`` of them (highest probability
    first) to ``add_hard_negatives`` of every dataset in ``datasets``.

    When it runs:

    - ``event="EPOCH_COMPLETED"`` (stage 1): at the end of epoch ``start_epoch``, and every ``interval``
      epochs after it when ``interval > 0``;
    - ``event="STARTED"`` (stage 2): once, when the stage's trainer starts, unless that trainer resumed
      from a checkpoint (its epoch is then > 0 and the checkpoint restored the datasets' hard negatives:
      attach :class:`~monai.handlers.CheckpointLoader` before this handler).

    Under a ``torch.distributed`` process group (``multi_gpu_train.json``) every rank must call it at
    the same time: the detector first takes rank 0's parameters and buffers, each rank mines every
    ``world_size``-th image, and every rank adds all ranks' points in image order, so every rank's
    datasets end up with the hard negatives one process would have added.

    Args:
        detector: the ``MSSNDetector`` being trained (its stage 1 is used).
        datasets: ``PatchSampleDataset``s to add to; the first one's records are mined.
        normalizer: the detector's stain normaliser (the bundle's ``field_normalization``), or ``None``.
        event: ``"EPOCH_COMPLETED"`` or ``"STARTED"`` (see above).
        start_epoch: first mining epoch (1-based, at its end) for ``EPOCH_COMPLETED``.
        interval: mine again every ``interval`` epochs after ``start_epoch``; 0 = once.
        exclusion_um: a candidate within this distance of a mitosis is not a false positive.
        max_per_image: cap on mined points per image and round.
    """

    def __init__(
        self,
        detector: torch.nn.Module,
        datasets: Any,
        normalizer: Any = None,
        event: str = "EPOCH_COMPLETED",
        start_epoch: int = 1,
        interval: int = 0,
        exclusion_um: float = MATCH_RADIUS_UM,
        max_per_image: int = 50,
    ) -> None:
        self.datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
        for dataset in self.datasets:
            for attr in ("data", "add_hard_negatives"):
                if not hasattr(dataset, attr):
                    raise TypeError(
                        f"{type(dataset).__name__} has no {attr!r}; HardNegativeMiner needs PatchSampleDatasets"
                    )
        if not callable(getattr(detector, "candidates", None)):
            raise TypeError(f"{type(detector).__name__} has no candidates(); HardNegativeMiner needs an MSSNDetector")
        if start_epoch < 1 or interval < 0 or max_per_image < 1:
            raise ValueError(
                "need start_epoch >= 1, interval >= 0, max_per_image >= 1; "
                f"got {start_epoch}, {interval}, {max_per_image}"
            )
        self.event = Events[event.upper()]
        if self.event not in (Events.EPOCH_COMPLETED, Events.STARTED):
            raise ValueError(f"event must be EPOCH_COMPLETED or STARTED, got {event!r}")
        self.fields = FieldDetector(detector, normalizer)
        self.start_epoch = int(start_epoch)
        self.interval = int(interval)
        self.exclusion_um = float(exclusion_um)
        self.max_per_image = int(max_per_image)
        self.rounds = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def due(self, epoch: int) -> bool:
        """Whether mining runs now, the engine being at ``epoch`` (completed, or the resumed one at start)."""
        if self.event == Events.STARTED:
            return epoch == 0
        if epoch < self.start_epoch:
            return False
        if epoch == self.start_epoch:
            return True
        return self.interval > 0 and (epoch - self.start_epoch) % self.interval == 0

    def __call__(self, engine: Engine) -> None:
        if self.due(engine.state.epoch):
            self.mine()

    def mine(self) -> int:
        """Run one mining round now; returns the number of new points added to the first dataset."""
        from tqdm import tqdm

        from mssn_monai.distributed import all_gather_objects, broadcast_module_state, get_rank, get_world_size

        rank, world_size = get_rank(), get_world_size()
        broadcast_module_state(self.fields.detector)  # no-op in one process; else every rank uses rank 0's weights
        records = self.datasets[0].data
        found = {}
        mine_here = range(rank, len(records), world_size)
        for i in tqdm(mine_here, desc="hard-negative mining", unit="image", leave=False, disable=rank > 0):
            rec = records[i]
            spacing = float(rec[DatalistKeys.SPACING])
            cand = self.fields.candidates(read_image_rgb(rec[DatalistKeys.IMAGE]), spacing)
            found[i] = false_positive_points(
                cand, rec.get(DatalistKeys.MITOSES, []), self.exclusion_um / spacing, self.max_per_image
            )
        for part in all_gather_objects(found):  # every rank's images; just [found] in one process
            found.update(part)
        added = 0
        for d, dataset in enumerate(self.datasets):
            for i in range(len(records)):  # image order on every rank, so every rank's datasets get the same points
                n = int(dataset.add_hard_negatives(i, found[i]))  # returns how many were new
                added += n if d == 0 else 0
        self.rounds += 1
        logger.info("hard-negative mining round %d: %d new points over %d images", self.rounds, added, len(records))
        return added


class NearestReferenceAccuracy(Metric):
    """Accuracy of the nearest-reference class, for one class or all, on held-out patches (stage 2).

    ``update((similarities (B, 3), classes (B,)))``: the predicted class is the one with the highest
    similarity (``ClassSimilarityInferer`` output). With ``class_index`` set, only patches of that
    class count (per-class accuracy = recall of that class); ``None`` counts all.
    """

    def __init__(
        self, class_index: int | None = None, output_transform: Callable = _pred_label, device: str = "cpu"
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
                    embeddings.append(self.network(batch[PatchKeys.IMAGE].to(device)))
                    classes.append(torch.as_tensor(batch[PatchKeys.CLASS]).reshape(-1))
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


def best_operating_threshold(
    gts: Sequence[np.ndarray],
    voted: Sequence[np.ndarray],
    radii: Sequence[float],
    domains: Sequence[Any] | None = None,
) -> float:
    """The operating threshold fitted on labelled fields: F1-best, then the middle of the gap below it.

    The lowest calibrated probability that maximises F1 over the fields, moved down to the middle of
    the gap to the next lower probability (:func:`gap_midpoint`): the same decisions on these fields,
    with the widest margin for a true mitosis scored a little lower on new ones. 0 with no detection.

    F1 is micro over all fields, or, with ``domains`` naming two or more domains (scanners, labs, looks),
    the mean of each domain's micro F1: every domain weighs the same, so the domain with the most
    candidates (often the one with the most false positives) does not set the threshold for the others.

    Args:
        gts: per field, ``(N_i, 2)`` ground-truth mitoses in pixels.
        voted: per field, ``(M_i, 3)`` voted candidates ``x, y, calibrated probability``.
        radii: per field, the match radius in pixels.
        domains: per field, its domain label (any hashable), or ``None``.
    """
    from mssn_monai.metrics import best_threshold, prf_arrays, select_thresholds, sweep_counts

    scores = np.concatenate([v[:, 2] for v in voted]) if len(voted) else np.zeros(0)
    thresholds = select_thresholds(scores)
    if len(thresholds) == 0:
        return 0.0
    if domains is not None and len(domains) != len(gts):
        raise ValueError(f"domains needs one label per field, got {len(domains)} for {len(gts)} fields")
    groups: dict[Any, list[int]] = {}
    for i, d in enumerate(domains if domains is not None else []):
        groups.setdefault(d, []).append(i)
    if len(groups) >= 2:
        f1 = np.mean(
            [
                prf_arrays(
                    *sweep_counts([gts[i] for i in idx], [voted[i] for i in idx], [radii[i] for i in idx], thresholds)
                )[2]
                for idx in groups.values()
            ],
            axis=0,
        )
    else:
        f1 = prf_arrays(*sweep_counts(gts, voted, radii, thresholds))[2]
    best, _ = best_threshold(thresholds, f1)
    return gap_midpoint(scores, best) if best is not None else 0.0


def fit_vote_calibration(
    fields: FieldDetector, images: Sequence[np.ndarray], records: Sequence[Any], radius_um: float = MATCH_RADIUS_UM
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray], list[np.ndarray], list[float]]:
    """Refit the vote's Platt calibration on labelled fields (changes the model); return what it saw.

    Runs the detector with operating threshold 0 on every field, labels each candidate 1 when it
    matches a mitosis within ``radius_um`` (one-to-one), fits ``p = sigmoid(a * votes + b)`` when both
    labels occur, and recomputes the voted candidates' probabilities under the new calibration (the
    vote's decisions do not change with it). The operating threshold is left at 0 for the caller.

    Args:
        fields: the detector's numpy face (its stage 2 is changed).
        images: ``(H, W, 3)`` uint8 fields.
        records: their datalist records (``mitoses``, ``spacing``).
        radius_um: match radius in micrometres.

    Returns:
        ``(outputs, voted, gts, radii)``: per field the detector's result, the voted candidates ``(M, 3)``
        ``x, y, calibrated probability``, the ground truth ``(N, 2)`` and the match radius in pixels.
    """
    from mssn_monai.networks.fpr import fit_calibration

    fpr = fields.detector.fpr
    fpr.set_operating_threshold(0.0)
    outputs, gts, radii, labels = [], [], [], []
    for image, rec in zip(images, records, strict=True):
        spacing = float(rec[DatalistKeys.SPACING])
        out = fields(image, spacing)
        gt = np.asarray(rec.get(DatalistKeys.MITOSES, []), dtype=np.float64).reshape(-1, 2)
        lab = np.zeros(len(out[DetectionKeys.CANDIDATES]))
        lab[match_points(gt, out[DetectionKeys.CANDIDATES][:, :2], radius_um / spacing).det_idx] = 1.0
        outputs.append(out)
        gts.append(gt)
        radii.append(radius_um / spacing)
        labels.append(lab)
    votes = torch.as_tensor(np.concatenate([o[DetectionKeys.VOTES] for o in outputs]), dtype=torch.float32)
    target = torch.as_tensor(np.concatenate(labels), dtype=torch.float32)
    if len(votes) and 0 < float(target.sum()) < len(target):
        a, b = fit_calibration(votes, target)
        fpr.set_calibration(float(a), float(b))
    return outputs, voted_candidates(fields, outputs), gts, radii


def voted_candidates(fields: FieldDetector, outputs: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Per field, the candidates the vote keeps with their probability under the detector's current
    calibration: ``(M, 3)`` ``x, y, probability`` (whatever operating threshold the outputs were made with).

    Args:
        fields: the detector whose stage 2 made ``outputs`` (its calibration is read, not changed).
        outputs: per field, the detector's result (``candidates``, ``voted``, ``votes``).
    """
    fpr, voted = fields.detector.fpr, []
    for out in outputs:
        keep = out[DetectionKeys.VOTED]
        p = fpr.calibrated_score(torch.as_tensor(out[DetectionKeys.VOTES])).cpu().numpy()
        voted.append(np.column_stack([out[DetectionKeys.CANDIDATES][keep, :2], p[keep]]).reshape(-1, 3))
    return voted


class FitOperatingPoint:
    """Fit the detector's score calibration and operating threshold on held-out fields (changes the model).

    When it runs (at the end of stage 2 by default), it rebuilds the reference bank, runs the detector
    (:class:`FieldDetector`: the code ``detect`` runs, stain normaliser included) with operating
    threshold 0 on every record, fits ``p = sigmoid(a * votes + b)`` by Platt scaling on the candidates
    (label 1 = matched to a mitosis within ``radius_um``), then picks the operating threshold: among the
    candidates the vote keeps, the lowest calibrated probability that maximises F1 on these fields
    (micro, :mod:`mssn_monai.metrics`; when every record names its ``domain`` and there are two or more,
    the mean of the domains' F1, :func:`best_operating_threshold`), moved down to the middle of the gap
    between it and the next lower probability (:func:`gap_midpoint`; the largest margin on these fields,
    so a true mitosis scored a little lower on new fields still passes). Calibration and threshold are
    written into the stage-2 network (so they are saved with its weights), and the numbers go to
    ``engine.state.metrics``: ``fields_f1``, ``fields_precision``, ``fields_recall`` at the operating
    threshold, ``fields_vote_only_f1`` (the paper's vote alone), ``fields_operating_threshold``,
    ``fields_fnr_fp`` and ``fields_fpr_fp`` (false positives before and after stage 2),
    ``fields_fnr_recall``, ``fields_domains`` (0: F1 pooled over all fields).

    Args:
        detector: the ``MSSNDetector`` being trained.
        data: held-out records (``image``, ``mitoses``, ``spacing``).
        reference_refresh: a :class:`ReferenceBankRefresh` run first (``None``: keep the current bank).
        normalizer: the detector's stain normaliser, or ``None``.
        radius_um: match radius in micrometres.
        event: Ignite event to run on.
    """

    def __init__(
        self,
        detector: torch.nn.Module,
        data: Sequence[dict[str, Any]],
        reference_refresh: ReferenceBankRefresh | None = None,
        normalizer: Any = None,
        radius_um: float = MATCH_RADIUS_UM,
        event: str = "COMPLETED",
    ) -> None:
        self.fields = FieldDetector(detector, normalizer)
        self.data = list(data)
        self.reference_refresh = reference_refresh
        self.radius_um = float(radius_um)
        self.event = Events[event.upper()]
        self.results: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> None:
        self.results = self.fit()
        if engine is not None:
            engine.state.metrics.update(self.results)
        logger.info(
            "operating point fitted on %d held-out fields: %s",
            len(self.data),
            ", ".join(f"{k} {v:.4g}" for k, v in self.results.items()),
        )

    def fit(self) -> dict[str, float]:
        """Refit now; returns the metrics on the held-out fields (empty when there are none)."""
        from mssn_monai.metrics import detection_counts, prf_arrays, sum_counts

        if not self.data:
            return {}
        fpr = self.fields.detector.fpr
        if self.reference_refresh is not None:
            self.reference_refresh.refresh()
        images = [read_image_rgb(rec[DatalistKeys.IMAGE]) for rec in self.data]
        outputs, voted, gts, radii = fit_vote_calibration(self.fields, images, self.data, self.radius_um)

        def counts(dets: list[np.ndarray], threshold: float | None = None) -> Any:
            kept = [d if threshold is None else d[d[:, 2] >= threshold] for d in dets]
            return sum_counts(detection_counts(g, d[:, :2], r) for g, d, r in zip(gts, kept, radii, strict=True))

        domains = [rec.get(DatalistKeys.DOMAIN) for rec in self.data]
        domains = domains if all(d is not None for d in domains) else None
        operating = best_operating_threshold(gts, voted, radii, domains)
        fpr.set_operating_threshold(operating)
        both, vote_only = counts(voted, operating), counts(voted)
        stage1 = counts([o[DetectionKeys.CANDIDATES] for o in outputs])
        p, r, f = (float(v) for v in prf_arrays(*both))
        return {
            "fields_precision": p,
            "fields_recall": r,
            "fields_f1": f,
            "fields_vote_only_f1": float(prf_arrays(*vote_only)[2]),
            "fields_operating_threshold": operating,
            "fields_fnr_fp": float(stage1.fp),
            "fields_fpr_fp": float(both.fp),
            "fields_fnr_recall": float(prf_arrays(*stage1)[1]),
            "fields_domains": float(len(set(domains)) if domains is not None else 0),
        }


def refit_operating_point(
    bundle: str | Path, records: Sequence[dict[str, Any]], device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Refit a trained bundle's vote calibration and operating threshold on labelled fields, in place.

    :class:`FitOperatingPoint` as training runs it at the end of stage 2, without training: the weights
    and the reference bank stay. ``models/model.pt`` is rewritten atomically and a ``models/model.ts``
    beside it removed (it would be stale).

    Args:
        bundle: the bundle folder.
        records: labelled fields (``image``, ``mitoses``, ``spacing``; ``domain`` for every domain to
            weigh the same).
        device: where to run.

    Returns:
        ``operating_threshold_before`` and :meth:`FitOperatingPoint.fit`'s metrics.
    """
    from mssn_monai.checkpoints import load_detector, save_state_dict
    from mssn_monai.constants import MODEL_FILE, TORCHSCRIPT_FILE

    fields = load_detector(bundle, device)
    before = float(fields.detector.operating_threshold())
    results = FitOperatingPoint(fields.detector, records, normalizer=fields.normalizer).fit()
    models = Path(bundle) / "models"
    save_state_dict(fields.detector, models / MODEL_FILE)
    (models / TORCHSCRIPT_FILE).unlink(missing_ok=True)
    return {"operating_threshold_before": before, **results}


class SaveWeights:
    """Write a network's state dict to ``path`` when the engine completes (never on an exception).

    Unlike ``CheckpointSaver(save_final=True)``, which also saves when training fails, so a crashed run
    would replace a good ``model.pt`` with a half-trained one. The file is written atomically, with
    every tensor on the CPU and no ``module.`` prefix, by rank 0 only under ``torch.distributed``
    (:func:`mssn_monai.checkpoints.save_state_dict`).

    Args:
        network: what to save (the bundle's ``network_def``: both stages, references, calibration).
        path: the weight file (e.g. ``models/model.pt``).
    """

    def __init__(self, network: torch.nn.Module, path: str | Path) -> None:
        self.network = network
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        from mssn_monai.checkpoints import save_state_dict

        save_state_dict(self.network, self.path)
        logger.info("weights of the whole detector: %s", self.path)


class TrainingCheckpoint:
    """Resumable training: save ``save_dict`` and the trainer every epoch; resume from the newest such file.

    One handler for MONAI's ``CheckpointLoader`` + ``CheckpointSaver`` pair, because the trainer belongs
    in the saved state (its epoch is what a resumed run continues from) but a config cannot list the
    trainer inside its own handlers without a circular reference: the trainer is added here, when the
    handler is attached. List it first among the trainer's handlers, so the state is restored before
    any other handler runs at ``STARTED`` (e.g. :class:`HardNegativeMiner` mining once at the start of a
    stage, which then sees the restored epoch and skips). Under ``torch.distributed`` attach it on every
    rank: every rank resumes, Ignite writes on rank 0 only (and its first rank query is a collective
    call, so a saver built on rank 0 alone would hang).

    A run made on other data or settings is never resumed by accident: ``fingerprint`` (e.g. the
    training records and the stage's knobs) is hashed into ``<file_prefix>_fingerprint.json`` beside
    the checkpoints, and resuming from checkpoints with another fingerprint raises ``ValueError``.

    Args:
        save_dir: folder of the checkpoints ``<file_prefix>_checkpoint_epoch=<n>.pt``.
        file_prefix: e.g. ``fnr_train``.
        save_dict: what to save besides the trainer (network, optimizer, scheduler, datasets' hard negatives);
            an entry whose value is ``None`` is left out (an option that is off adds nothing, so checkpoints
            of runs made before it existed still resume).
        resume: resume from the newest checkpoint in ``save_dir`` when there is one.
        map_location: where loaded tensors go (the training device).
        fingerprint: JSON-able description of what the run trains on; ``None`` skips the check.

    Raises:
        ValueError: (at attach) the checkpoints in ``save_dir`` were made with another fingerprint.
    """

    def __init__(
        self,
        save_dir: str | Path,
        file_prefix: str,
        save_dict: dict[str, Any],
        resume: bool = True,
        map_location: Any = None,
        fingerprint: Any = None,
    ) -> None:
        if "trainer" in save_dict:
            raise ValueError("save_dict must not hold 'trainer': TrainingCheckpoint adds the engine it is attached to")
        self.save_dir = Path(save_dir)
        self.file_prefix = str(file_prefix)
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}
        self.resume = bool(resume)
        self.map_location = map_location
        self.fingerprint = None if fingerprint is None else _digest(fingerprint)

    def _check_fingerprint(self, resuming_from: str | None) -> None:
        """Refuse checkpoints of another run; record this run's fingerprint (rank 0)."""
        from mssn_monai.distributed import get_rank
        from mssn_monai.io import read_json, write_json

        if self.fingerprint is None:
            return
        record = self.save_dir / f"{self.file_prefix}_fingerprint.json"
        if resuming_from is not None and record.is_file():
            stored = read_json(record).get("sha256")
            if stored != self.fingerprint:
                raise ValueError(
                    f"{resuming_from}: made on other training data or settings than this run "
                    f"({record.name} differs); pass --resume false to start afresh, or use another bundle_root"
                )
        elif resuming_from is not None:
            logger.warning(
                "%s: no fingerprint beside it; resuming without checking the data it was made on", resuming_from
            )
        if get_rank() == 0:
            write_json(record, {"sha256": self.fingerprint})

    def attach(self, engine: Engine) -> None:
        from monai.handlers import CheckpointLoader, CheckpointSaver

        from mssn_monai.checkpoints import latest_checkpoint

        state = {**self.save_dict, "trainer": engine}
        latest = latest_checkpoint(self.save_dir, self.file_prefix) if self.resume else None
        self._check_fingerprint(latest)
        if latest is not None:
            CheckpointLoader(load_path=latest, load_dict=state, map_location=self.map_location).attach(engine)
        # on every rank: Ignite writes on rank 0 only, and its first rank query is a collective call
        CheckpointSaver(
            save_dir=str(self.save_dir),
            save_dict=state,
            file_prefix=self.file_prefix,
            save_interval=1,
            n_saved=1,
            epoch_level=True,
        ).attach(engine)


class WeightAveraging:
    """Stochastic weight averaging (Izmailov et al. 2018): the network ends training with the mean of its
    weights at the end of every epoch from ``start_epoch`` on, not the last epoch's alone.

    The last epoch's weights are one noisy point of the trajectory; their mean over the second half of
    a cosine schedule lies in a flatter region of the loss, which carries better to unseen domains
    (SWAD, Cha et al. 2021). Only the parameters are averaged; BatchNorm statistics are recomputed
    afterwards on ``bn_batches`` batches of the trainer's own loader (what ``torch.optim.swa_utils.update_bn``
    does), and the network's other buffers (a reference bank, a calibration) are left to the handlers
    that fit them at ``COMPLETED`` (list this handler before them).

    The weights after epoch ``e`` are added when epoch ``e + 1`` starts (and the last epoch's at
    ``COMPLETED``), so a checkpoint saved at the end of epoch ``e`` holds the mean up to ``e - 1`` and
    the weights of ``e``: a resumed run adds ``e`` when it starts ``e + 1`` and ends with the same mean.
    Put the handler in the checkpoint's ``save_dict`` (``state_dict`` / ``load_state_dict``). The mean
    is kept per parameter, not as a ``torch.optim.swa_utils.AveragedModel``, which would deep-copy the
    whole stage 2 with its reference bank, a buffer whose size changes when the bank is rebuilt.

    Args:
        network: the trained module; its parameters are replaced by their mean at ``COMPLETED``.
        start_epoch: first epoch (1-based) whose end-of-epoch weights enter the mean; ``0`` turns
            averaging off (the handler then does nothing).
        bn_batches: training batches run (no gradient) to recompute BatchNorm statistics; ``0`` keeps
            the last epoch's statistics.

    Raises:
        ValueError: a negative ``start_epoch`` or ``bn_batches``.
    """

    def __init__(self, network: torch.nn.Module, start_epoch: int = 0, bn_batches: int = 32) -> None:
        if int(start_epoch) < 0 or int(bn_batches) < 0:
            raise ValueError(f"start_epoch and bn_batches must be >= 0, got {start_epoch!r}, {bn_batches!r}")
        self.network = network
        self.start_epoch = int(start_epoch)
        self.bn_batches = int(bn_batches)
        self.averaged: dict[str, torch.Tensor] = {}
        self.count = 0
        self.last_epoch = 0

    def attach(self, engine: Engine) -> None:
        if self.start_epoch == 0:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": dict(self.averaged), "count": self.count, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged = {k: v.clone() for k, v in state["averaged"].items()}
        self.count, self.last_epoch = int(state["count"]), int(state["last_epoch"])

    def add(self, epoch: int) -> None:
        """Add the current weights, those at the end of ``epoch``, to the mean (once per epoch)."""
        if epoch < self.start_epoch or epoch <= self.last_epoch:
            return
        with torch.no_grad():
            for name, param in self.network.named_parameters():
                value = param.detach().to(torch.float32)
                if name not in self.averaged:
                    self.averaged[name] = value.clone()
                else:
                    self.averaged[name].add_(value - self.averaged[name], alpha=1.0 / (self.count + 1))
        self.count += 1
        self.last_epoch = epoch

    def _epoch_started(self, engine: Engine) -> None:
        self.add(engine.state.epoch - 1)

    def _completed(self, engine: Engine) -> None:
        self.add(engine.state.epoch)
        if self.count == 0:
            logger.warning("weight averaging from epoch %d: no epoch reached it, last weights kept", self.start_epoch)
            return
        self.apply()
        if self.bn_batches:
            self.update_batch_norm(engine.state.dataloader)
        logger.info("weights averaged over %d epochs (%d-%d)", self.count, self.start_epoch, self.last_epoch)

    def apply(self) -> None:
        """Copy the mean into the network's parameters."""
        with torch.no_grad():
            for name, param in self.network.named_parameters():
                param.copy_(self.averaged[name].to(param.dtype))

    def update_batch_norm(self, loader: Any) -> None:
        """Recompute every BatchNorm's running statistics as a plain mean over the first ``bn_batches``
        batches of ``loader`` (dicts with ``PatchKeys.IMAGE``, or tensors): ``torch.optim.swa_utils.update_bn``."""
        import itertools

        from torch.optim.swa_utils import update_bn

        device = next(self.network.parameters()).device
        images = (b[PatchKeys.IMAGE] if isinstance(b, dict) else b for b in itertools.islice(loader, self.bn_batches))
        update_bn((torch.as_tensor(x) for x in images), self.network, device=device)


def _digest(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (paths and other objects as their text)."""
    import hashlib
    import json

    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

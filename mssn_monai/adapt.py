"""``adapt``: teach a trained bundle a new lab's look from a few labelled fields.

Steps (each runs the bundle's own detector, :class:`~mssn_monai.networks.detector.FieldDetector`):

0. **Stage-1 alignment** (no label used): the stage-1 network's BatchNorm statistics are shifted by
   the difference between the new fields' activation statistics and those of fields of the bundle's
   own look (``replay``, else the bundle's ``samples/``), measured the same way on whole fields
   (:mod:`mssn_monai.networks.batchnorm`). A new stain or scanner moves stage 1's probabilities as a
   whole (too few candidates on a pale look, too many on a magenta one); this moves them back. With
   ``unlabelled=True`` this is the only step, and the fields need no annotation.
1. **Fine-tune** (``epochs > 0``): a short run of both stages from the current weights on patches of
   the new fields, with up to ``replay_fields`` fields of the original look mixed in (``replay``) so
   the old look is not forgotten. The new fields' stage-1 false positives are mined first and join
   the hard mimics. Ignite ``SupervisedTrainer``s with the bundle's own losses and augmentation
   (``augmentation`` of ``configs/train.json``); GPU when present, else CPU; a progress bar.
2. **Reference bank** (no gradient step): embeddings of the new fields' mitoses (with their eight
   flips and rotations), annotated mimics, stage-1 false positives and background join the bank, a few
   k-means centres per class. This is why a metric-learning stage 2 suits a new lab: a new look can be
   added without training.
3. **Calibration and thresholds**, refitted on the new fields' candidates: the stage-1 candidate
   threshold (the highest of ``CANDIDATE_THRESHOLDS`` that still finds every labelled mitosis), the
   Platt calibration of the vote, and the operating threshold, chosen leave-one-field-out (for each
   field the F1-best threshold on the others; the median of those) so that one or two fields cannot
   pull it to their own extremes. With ``joint_threshold`` the operating threshold is fitted on the
   new fields and labelled fields of the bundle's own look together, each look weighing the same:
   the old look keeps more of its F1, the new look gives up a little (measured in the README).

The adapted bundle is written as a whole to a temporary folder beside ``out`` and renamed onto it at
the end, so an error leaves nothing behind: ``configs/`` (the source bundle's, with the new candidate
threshold), ``models/model.pt``, ``models/model.ts``, ``models/int8_calibration.json`` (the int8
calibration for ``--int8``, on the new fields and then the own look's, 8 at most; not with
``int8=False``), ``docs/``, and ``adapt_report.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mssn_monai.constants import INT8_CALIBRATION_FIELDS, MATCH_RADIUS_UM, MODEL_FILE, TORCHSCRIPT_FILE
from mssn_monai.data.datalist import spread
from mssn_monai.io import read_image_rgb, write_json
from mssn_monai.keys import DatalistKeys, PatchClass
from mssn_monai.quantize import write_calibration

__all__ = ["ALIGN_TILE_PX", "CANDIDATE_THRESHOLDS", "adapt_bundle", "align_stage1", "leave_one_field_out_threshold"]

logger = logging.getLogger(__name__)

CANDIDATE_THRESHOLDS = (0.5, 0.4, 0.3, 0.2)
"""Stage-1 thresholds ``adapt`` may choose, tried from the highest down."""

ALIGN_TILE_PX = 1024
"""Side of the whole-field tiles stage 1's BatchNorm statistics are measured on (pixels)."""

ALIGN_TILES_PER_IMAGE = 16
"""At most this many tiles of one image are measured (spread over it): a large region costs 16 tiles."""


def leave_one_field_out_threshold(
    gts: Sequence[np.ndarray],
    dets: Sequence[np.ndarray],
    radii: Sequence[float],
    old: tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[float]] | None = None,
) -> tuple[float, float]:
    """Operating threshold chosen leave-one-field-out, and the F1 that choice earns on the held-out fields.

    For each field, the F1-best threshold (the lowest among equals, then the middle of the gap below it)
    on all the other fields; the result is the median of those thresholds. The returned F1 scores
    every field at its own fold's threshold (micro over fields): an honest estimate, since no field
    chose its own threshold. With one field there is nothing to hold out: its own best threshold.

    With ``old`` (fields of the bundle's own look), every fold also fits on all of them, and F1 is the
    mean of the new fields' F1 and the old fields' F1: both looks weigh the same
    (:func:`~mssn_monai.handlers.best_operating_threshold` with two domains). Only new fields are held out.

    Args:
        gts: per field, ``(N_i, 2)`` ground-truth mitoses in pixels.
        dets: per field, ``(M_i, 3)`` voted candidates ``x, y, calibrated probability``.
        radii: per field, the match radius in pixels.
        old: ``(gts, dets, radii)`` of fields of the old look, in every fold, or ``None``.

    Returns:
        ``(threshold, held_out_f1)``: the held-out F1 is the new fields'.
    """
    from mssn_monai.handlers import best_operating_threshold
    from mssn_monai.metrics import detection_counts, prf_arrays, sum_counts

    og, od, orad = ([], [], []) if old is None else (list(old[0]), list(old[1]), list(old[2]))

    def fit(idx: Sequence[int]) -> float:
        domains = ["new"] * len(idx) + ["old"] * len(og) if og else None
        return best_operating_threshold(
            [gts[i] for i in idx] + og, [dets[i] for i in idx] + od, [radii[i] for i in idx] + orad, domains
        )

    n = len(gts)
    if n < 2:
        t = fit(list(range(n)))
        return t, float("nan")
    folds = [fit([j for j in range(n) if j != i]) for i in range(n)]
    counts = sum_counts(detection_counts(gts[i], dets[i][dets[i][:, 2] >= folds[i], :2], radii[i]) for i in range(n))
    return float(np.median(folds)), float(prf_arrays(*counts)[2])


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; pass --overwrite to replace it")


def _records(datalist: str | os.PathLike, section: str, labelled: bool = True) -> list[dict[str, Any]]:
    from mssn_monai.data.datalist import load_datalist

    records = list(load_datalist(datalist, section))
    if not records:
        raise ValueError(f"{datalist}: section {section!r} holds no fields to adapt on")
    if labelled and sum(len(r.get(DatalistKeys.MITOSES, [])) for r in records) == 0:
        raise ValueError(
            f"{datalist}: section {section!r} has no labelled mitoses; adapt needs at least one "
            "(or --unlabelled for the stage-1 alignment alone)"
        )
    for r in records:
        if not Path(r[DatalistKeys.IMAGE]).is_file():
            raise FileNotFoundError(f"{datalist}: image {r[DatalistKeys.IMAGE]} not found")
    return records


def _dihedral(patches: torch.Tensor) -> torch.Tensor:
    """The eight flips and 90-degree rotations of ``(N, C, P, P)`` patches: ``(8 N, C, P, P)``."""
    views = [torch.rot90(patches, k, dims=(-2, -1)) for k in range(4)]
    return torch.cat(views + [v.flip(-1) for v in views])


def _bank_embeddings(
    fields: Any, images: Sequence[np.ndarray], records: Sequence[Mapping[str, Any]], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and classes of the new fields' mitoses (x8 views), mimics, stage-1 FPs and background."""
    from mssn_monai.handlers import false_positive_points
    from mssn_monai.ops.patches import extract_patches

    fpr = fields.detector.fpr
    size = int(fpr.patch_size)
    rng = np.random.default_rng(seed)
    embeddings, classes = [], []
    with torch.inference_mode():
        for image, rec in zip(images, records, strict=True):
            spacing = float(rec[DatalistKeys.SPACING])
            gt = np.asarray(rec.get(DatalistKeys.MITOSES, []), dtype=np.float64).reshape(-1, 2)
            mimics = np.asarray(rec.get(DatalistKeys.MIMICS, []), dtype=np.float64).reshape(-1, 2)
            fps = false_positive_points(fields.candidates(image, spacing), gt, MATCH_RADIUS_UM / spacing)
            field = fields.prepare(image)
            h, w = field.shape[-2:]
            bg = rng.uniform([0, 0], [w, h], size=(16, 2))
            if len(gt):
                d = np.hypot(bg[:, None, 0] - gt[None, :, 0], bg[:, None, 1] - gt[None, :, 1]).min(1)
                bg = bg[d > MATCH_RADIUS_UM / spacing]
            for pts, cls, views in (
                (gt, PatchClass.MITOSIS, True),
                (np.concatenate([mimics, fps]), PatchClass.MIMIC, False),
                (bg, PatchClass.BACKGROUND, False),
            ):
                if len(pts) == 0:
                    continue
                patches = extract_patches(field, pts, size)
                if views:
                    patches = _dihedral(patches)
                embeddings.append(fpr.embed(patches))
                classes.append(torch.full((len(patches),), int(cls), dtype=torch.long, device=patches.device))
    return torch.cat(embeddings), torch.cat(classes)


def _fine_tune(
    fields: Any,
    records: Sequence[dict[str, Any]],
    train_config: Any,
    epochs: int,
    samples_per_epoch: int,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """Short Ignite runs of stage 1 then stage 2 on ``records``; returns seconds per stage."""
    from ignite.handlers import ProgressBar
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer
    from monai.transforms import Compose

    from mssn_monai.data.patches import PatchSampleDataset
    from mssn_monai.distributed import MethodAsForward
    from mssn_monai.engines import PrepareBatchClass
    from mssn_monai.handlers import EpochSetter, HardNegativeMiner
    from mssn_monai.losses import MarginContrastiveLoss, MultiScaleBCELoss

    detector = fields.detector
    augment = Compose(train_config.get_parsed_content("augmentation"))
    common = {"data": records, "field_transform": fields.normalizer, "transform": augment, "seed": seed}
    stage1 = PatchSampleDataset(
        patch_size=120,
        samples_per_epoch=samples_per_epoch,
        positive_fraction=0.5,
        mimic_fraction=0.25,
        downsample=detector.stage1_downsample,  # the resolution stage 1 was trained at
        **common,
    )
    stage2 = PatchSampleDataset(
        patch_size=int(detector.fpr.patch_size),
        samples_per_epoch=samples_per_epoch,
        positive_fraction=0.34,
        mimic_fraction=0.33,
        **common,
    )
    HardNegativeMiner(detector, [stage1, stage2], fields.normalizer).mine()
    seconds = {}
    plans = (
        ("fine-tune stage 1", detector.fnr, stage1, MultiScaleBCELoss(), 32, None),
        ("fine-tune stage 2", detector.fpr, stage2, MarginContrastiveLoss(margin=1.0, binary=True), 64, "fpr"),
    )
    for name, network, dataset, loss, batch_size, kind in plans:
        t0 = time.perf_counter()
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        extra = {"prepare_batch": PrepareBatchClass()} if kind == "fpr" else {}
        trainer = SupervisedTrainer(
            device=device,
            max_epochs=epochs,
            train_data_loader=loader,
            network=network if kind == "fpr" else MethodAsForward(network, "classify_patches"),
            optimizer=torch.optim.AdamW(network.parameters(), lr=2e-4, weight_decay=1e-4),
            loss_function=loss,
            inferer=SimpleInferer(),
            train_handlers=[EpochSetter(dataset)],
            amp=device.type == "cuda",
            **extra,
        )
        ProgressBar(persist=False, desc=name).attach(trainer)
        trainer.run()
        network.eval()
        seconds[name] = time.perf_counter() - t0
    return seconds


def _tiles(
    fields: Any, images: Sequence[np.ndarray], tile: int = ALIGN_TILE_PX, per_image: int = ALIGN_TILES_PER_IMAGE
) -> Iterator[torch.Tensor]:
    """Each image as the detector sees it (stain-normalised), as ``tile``-px squares: the grid that covers
    it (the last row and column moved inward so every tile is whole), at most ``per_image`` of them spread
    evenly over the grid, each read and normalised on its own (a large region is never converted whole).
    ``(1, 3, tile, tile)`` float, or the whole image when it is smaller; reduced as stage 1 reads it
    (:meth:`~mssn_monai.networks.detector.MSSNDetector.stage1_input`) when it runs at reduced resolution."""
    for image in images:
        crop = fields.reader(image)
        h, w = int(image.shape[0]), int(image.shape[1])
        ys = sorted({min(y, max(h - tile, 0)) for y in range(0, h, tile)})
        xs = sorted({min(x, max(w - tile, 0)) for x in range(0, w, tile)})
        for y, x in spread([(y, x) for y in ys for x in xs], per_image):
            yield fields.detector.stage1_input(crop(y, min(y + tile, h), x, min(x + tile, w)))


def align_stage1(fields: Any, source: Sequence[np.ndarray], target: Sequence[np.ndarray]) -> None:
    """Shift stage 1's BatchNorm statistics from the look of ``source`` to that of ``target``, in place.

    Args:
        fields: the bundle's :class:`~mssn_monai.networks.detector.FieldDetector`; its stage-1 network
            (``fields.detector.fnr``) is changed.
        source: ``(H, W, 3)`` uint8 fields of the look the weights were trained on.
        target: ``(H, W, 3)`` uint8 fields of the new look (no annotation needed).
    """
    from mssn_monai.networks.batchnorm import batch_norm_statistics, shift_batch_norm

    fnr = fields.detector.fnr
    before = batch_norm_statistics(fnr, _tiles(fields, source))
    shift_batch_norm(fnr, before, batch_norm_statistics(fnr, _tiles(fields, target)))


def _source_records(src: Path, replay_records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Fields of the bundle's own look: the replay fields, else up to ``n`` of the bundle's ``samples/``."""
    from mssn_monai.data.datalist import load_datalist

    if replay_records:
        return replay_records
    samples = src / "samples" / "datalist.json"
    if not samples.is_file():
        return []
    sections = json.loads(samples.read_text(encoding="utf-8"))
    return spread([r for name in sections for r in load_datalist(samples, name)], n)


def _candidate_threshold(fields: Any, images: Sequence[np.ndarray], records: Sequence[Mapping[str, Any]]) -> float:
    """The highest of :data:`CANDIDATE_THRESHOLDS` at which stage 1 finds every labelled mitosis of the fields
    (the lowest when none does). Stage 1 runs once per field; only the peaks are redone per threshold."""
    from mssn_monai.ops.matching import match_points

    detector = fields.detector
    original = float(detector.candidate_threshold)
    fused = [fields.fused_map(image) for image in images]
    try:
        for t in CANDIDATE_THRESHOLDS:
            detector.candidate_threshold = float(t)
            missed = 0
            for prob_map, rec in zip(fused, records, strict=True):
                spacing = float(rec[DatalistKeys.SPACING])
                gt = np.asarray(rec.get(DatalistKeys.MITOSES, []), dtype=np.float64).reshape(-1, 2)
                cand = detector.peaks(prob_map, spacing).cpu().numpy()
                missed += len(gt) - len(match_points(gt, cand[:, :2], MATCH_RADIUS_UM / spacing).gt_idx)
            if missed == 0:
                return float(t)
        return float(CANDIDATE_THRESHOLDS[-1])
    finally:
        detector.candidate_threshold = original


def _calibrate(
    fields: Any,
    images: Sequence[np.ndarray],
    records: Sequence[Mapping[str, Any]],
    old_images: Sequence[np.ndarray] = (),
    old_records: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Refit the vote's calibration on the new fields and the operating threshold leave-one-field-out: on the
    new fields, or with ``old_records`` on the new fields and those of the old look, each look weighing the same."""
    from mssn_monai.handlers import fit_vote_calibration, voted_candidates

    fpr = fields.detector.fpr
    _, voted, gts, radii = fit_vote_calibration(fields, images, records)
    old = None
    if old_records:  # the operating threshold is 0 here: every voted candidate comes back
        outputs = [fields(im, float(r[DatalistKeys.SPACING])) for im, r in zip(old_images, old_records, strict=True)]
        old = (
            [np.asarray(r.get(DatalistKeys.MITOSES, []), dtype=np.float64).reshape(-1, 2) for r in old_records],
            voted_candidates(fields, outputs),
            [MATCH_RADIUS_UM / float(r[DatalistKeys.SPACING]) for r in old_records],
        )
    threshold, held_out_f1 = leave_one_field_out_threshold(gts, voted, radii, old)
    fpr.set_operating_threshold(threshold)
    a, b = (float(v) for v in fpr.calibration)
    return {
        "calibration_a": a,
        "calibration_b": b,
        "operating_threshold": threshold,
        "operating_threshold_fields": "new and old look, each weighing the same" if old else "new",
        "held_out_f1": held_out_f1,
    }


def _write_bundle(src: Path, dst: Path, detector: torch.nn.Module, candidate_threshold: float) -> None:
    """Copy ``src``'s configs and docs to ``dst`` with the new candidate threshold, and the new weights."""
    from mssn_monai.checkpoints import save_state_dict

    shutil.copytree(src / "configs", dst / "configs")
    if (src / "docs").is_dir():
        shutil.copytree(src / "docs", dst / "docs")
    if (src / "LICENSE").is_file():
        shutil.copy2(src / "LICENSE", dst / "LICENSE")
    for name in ("inference.json", "train.json"):
        path = dst / "configs" / name
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            if "candidate_threshold" in config:
                config["candidate_threshold"] = candidate_threshold
            write_json(path, config, indent=4)
    (dst / "models").mkdir()
    detector = detector.cpu().eval()
    save_state_dict(detector, dst / "models" / MODEL_FILE)
    extra = {"metadata.json": (dst / "configs" / "metadata.json").read_text(encoding="utf-8")}
    torch.jit.save(torch.jit.script(detector), str(dst / "models" / TORCHSCRIPT_FILE), _extra_files=extra)


def adapt_bundle(
    datalist: str | os.PathLike,
    out: str | os.PathLike,
    bundle: str | os.PathLike | None = None,
    section: str = "training",
    epochs: int = 2,
    replay: str | os.PathLike | None = None,
    replay_fields: int = 8,
    samples_per_epoch: int = 1024,
    per_class: int = 8,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    seed: int = 0,
    align: bool = True,
    unlabelled: bool = False,
    joint_threshold: bool = False,
    int8: bool = True,
) -> dict[str, Any]:
    """Adapt a bundle to a new look from a few labelled fields and write the adapted bundle at ``out``.

    Args:
        datalist: datalist of the new fields (records with ``mitoses`` and, where present, ``mimics``;
            with ``unlabelled``, ``image`` and ``spacing`` suffice).
        out: the adapted bundle's folder (must be absent or empty unless ``overwrite``).
        bundle: the bundle to start from (default: ``checkpoints.DEFAULT_BUNDLE``).
        section: the datalist section holding the labelled fields.
        epochs: fine-tuning epochs of each stage (0: reference bank and calibration only, no gradient step).
        replay: a datalist of the original look (its ``training`` section) to mix into fine-tuning and
            to align stage 1 from.
        replay_fields: at most this many replay fields are mixed in, spread evenly over the datalist (a
            datalist of several looks, such as the family the shipped weights learnt, keeps them all).
        samples_per_epoch: patches per fine-tuning epoch and stage.
        per_class: references added per class from the new fields.
        overwrite: replace an existing non-empty ``out``.
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        seed: seed of patch sampling and of the reference k-means.
        align: step 0, the stage-1 alignment, when fields of the bundle's own look are at hand
            (``replay`` or the bundle's ``samples/``; skipped with a warning when neither is).
        unlabelled: step 0 alone: the fields need no annotation, and the thresholds, calibration and
            reference bank stay as they are.
        joint_threshold: fit the operating threshold on the new fields and labelled fields of the
            bundle's own look (``replay``, else ``samples/``), each look weighing the same, so the old
            look keeps more of its F1 at some cost to the new look's (step 3; the calibration stays the
            new fields').
        int8: also write the adapted bundle's int8 calibration (``models/int8_calibration.json``, for
            ``--int8``) on the new fields and then the own look's, 8 at most (10-20 s on 2 CPU cores).

    Returns:
        the report written to ``out/adapt_report.json``.

    Raises:
        FileExistsError: ``out`` is not empty and ``overwrite`` is false.
        FileNotFoundError: missing datalist, image or bundle weights.
        ValueError: no fields or no labelled mitosis (without ``unlabelled``); ``unlabelled`` without
            fields of the bundle's own look or with ``align`` false; ``joint_threshold`` with
            ``unlabelled`` or without labelled fields of the bundle's own look; weights that do not load.
    """
    from mssn_monai.checkpoints import DEFAULT_BUNDLE, bundle_config, load_detector
    from mssn_monai.data.datalist import load_datalist
    from mssn_monai.networks.fpr import build_reference_bank

    t_start = time.perf_counter()
    out, src = Path(out), Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    _check_out(out, overwrite)
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"--epochs must be an integer >= 0, got {epochs!r}")
    if unlabelled and not align:
        raise ValueError("--unlabelled runs the stage-1 alignment alone; it cannot be combined with --noalign")
    if unlabelled and joint_threshold:
        raise ValueError("--unlabelled keeps the thresholds; it cannot be combined with --joint-threshold")
    records = _records(datalist, section, labelled=not unlabelled)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    fields = load_detector(src, device)
    images = [read_image_rgb(r[DatalistKeys.IMAGE]) for r in records]  # every image readable before any work
    report: dict[str, Any] = {
        "source_bundle": str(src),
        "datalist": str(datalist),
        "fields": len(records),
        "mitoses": sum(len(r.get(DatalistKeys.MITOSES, [])) for r in records),
        "epochs": int(epochs),
    }
    torch.manual_seed(seed)  # fine-tuning's random draws repeat per seed
    old_refs = fields.detector.fpr.references.clone(), fields.detector.fpr.reference_classes.clone()
    replay_records: list[dict[str, Any]] = []
    if replay is not None:
        replay_records = spread(list(load_datalist(replay, "training")), int(replay_fields))
    own = _source_records(src, replay_records, int(replay_fields)) if align or joint_threshold else []
    source, old_records = (own if align else []), (own if joint_threshold else [])
    if joint_threshold and not any(r.get(DatalistKeys.MITOSES) for r in old_records):
        raise ValueError(
            f"{src}: --joint-threshold needs labelled fields of the bundle's own look, with mitoses "
            "(--replay DATALIST, or the bundle's samples/)"
        )
    if unlabelled and not source:
        raise ValueError(
            f"{src}: the stage-1 alignment needs fields of the bundle's own look and the bundle has no "
            "samples/datalist.json; pass --replay DATALIST"
        )
    report["aligned"] = bool(source)
    source_images: list[np.ndarray] = []
    if source:
        t0 = time.perf_counter()
        source_images = [read_image_rgb(r[DatalistKeys.IMAGE]) for r in source]
        align_stage1(fields, source_images, images)
        report["alignment_source_fields"] = len(source)
        report["seconds_align"] = time.perf_counter() - t0
    elif align:
        logger.warning("%s: no fields of the bundle's own look (no --replay, no samples/): stage 1 not aligned", src)
    old_images: list[np.ndarray] = []
    if old_records:  # read now: a missing image fails before any fine-tuning
        old_images = source_images if source else [read_image_rgb(r[DatalistKeys.IMAGE]) for r in old_records]
        report["operating_threshold_old_fields"] = len(old_records)
    # the int8 calibration: the new fields first, the own look's after them, 8 at most
    int8_images = (images + source_images)[:INT8_CALIBRATION_FIELDS] if int8 else []
    if unlabelled:
        _finish(src, out, fields, float(fields.detector.candidate_threshold), report, t_start, int8_images)
        return report
    if epochs > 0:
        train_config = bundle_config(src / "configs" / "train.json")
        report["seconds_fine_tune"] = _fine_tune(
            fields, records + replay_records, train_config, int(epochs), int(samples_per_epoch), device, seed
        )
    new_emb, new_cls = _bank_embeddings(fields, images, records, seed)
    refs, cls = build_reference_bank(new_emb, new_cls, per_class, normalize=fields.detector.fpr.normalize, seed=seed)
    if epochs > 0 and replay_records:  # the old references were embedded by the old weights: re-embed the old look
        if source is replay_records:  # read once already, for the alignment
            replay_images = source_images
        else:
            replay_images = [read_image_rgb(r[DatalistKeys.IMAGE]) for r in replay_records]
        emb, c = _bank_embeddings(fields, replay_images, replay_records, seed)
        old_refs = build_reference_bank(emb, c, per_class, normalize=fields.detector.fpr.normalize, seed=seed)
    elif epochs > 0:
        old_refs = (refs[:0], cls[:0])
    fields.detector.fpr.set_references(torch.cat([old_refs[0].to(refs), refs]), torch.cat([old_refs[1].to(cls), cls]))
    report["references"] = int(fields.detector.fpr.references.shape[0])
    candidate_threshold = _candidate_threshold(fields, images, records)
    fields.detector.candidate_threshold = candidate_threshold
    report["candidate_threshold"] = candidate_threshold
    report.update(_calibrate(fields, images, records, old_images, old_records))
    _finish(src, out, fields, candidate_threshold, report, t_start, int8_images)
    return report


def _finish(
    src: Path,
    out: Path,
    fields: Any,
    candidate_threshold: float,
    report: dict,
    t_start: float,
    calibration_images: Sequence[np.ndarray] = (),
) -> None:
    """Complete ``report`` and write the adapted bundle: to a temporary folder beside ``out``, renamed onto it.

    The bundle gets its own int8 calibration (``models/int8_calibration.json``, for ``--int8``) on
    ``calibration_images`` when given."""
    report["candidate_threshold"] = candidate_threshold
    report.setdefault("operating_threshold", float(fields.detector.operating_threshold()))
    report["note"] = "adapted from weights trained on synthetic data only unless the source bundle was retrained"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_bundle(src, tmp, fields.detector, candidate_threshold)
        if calibration_images:
            t0 = time.perf_counter()
            write_calibration(fields, calibration_images, tmp / "models")
            report["int8_calibration_fields"] = len(calibration_images)
            report["seconds_int8_calibration"] = time.perf_counter() - t0
        report["seconds"] = time.perf_counter() - t_start
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()}
        report.clear()
        report.update(clean)
        write_json(tmp / "adapt_report.json", report)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("adapted bundle written to %s: %s", out, report)

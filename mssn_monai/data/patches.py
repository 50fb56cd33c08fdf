"""Point-centred training patches for both MSSN stages: mitoses, hard mimics and background.

One sample is a square RGB patch whose centre pixel is a point of interest, with its class:

- ``1`` mitosis: centred uniformly in a disc of ``jitter_px`` around an annotated mitosis;
- ``2`` hard mimic: the same around an annotated non-mitosis or a mined false positive
  (:meth:`PatchSampleDataset.add_hard_negatives`);
- ``0`` background: anywhere at least ``exclusion_um`` from every mitosis, part of them drawn from
  hematoxylin-dark pixels so that ordinary nuclei are well represented.

Coordinates follow the package convention: points are ``(x, y)`` = (column, row) in level-0 pixels.
Patches are cut with :func:`mssn_monai.ops.patches.extract_patch`, so their borders follow the same
mirror rule as dense inference, and the centre pixel of a patch of (even) size ``S`` starting at pixel
``s`` is ``s + S // 2``. The sample point is rounded to the nearest pixel (halves up) before cutting,
and the returned ``point`` is that pixel.

Randomness is keyed, not streamed: which class sample ``i`` of epoch ``e`` is comes from a permutation
drawn with ``(seed, e)``, and where it lands (and the seed of ``transform``) from a generator seeded
with ``(seed, e, i)``. The same index gives the same sample in any DataLoader worker, in any order,
and every epoch differs. :meth:`PatchSampleDataset.set_epoch` writes the epoch to shared memory, so it
reaches DataLoader workers even when they are persistent.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from skimage.color import rgb2hed
from torch.utils.data import Dataset

from mssn_monai.constants import DEFAULT_SPACING_UM, MATCH_RADIUS_UM
from mssn_monai.io import read_image_rgb
from mssn_monai.keys import DatalistKeys, PatchClass, PatchKeys
from mssn_monai.ops.intensity import hwc_to_chw_float, to_float01, to_uint8
from mssn_monai.ops.patches import extract_patch
from mssn_monai.ops.resample import downsample_mean, to_reduced_points

__all__ = ["PatchSampleDataset"]

logger = logging.getLogger(__name__)

_NUCLEI_DOWNSAMPLE: Final[int] = 4
"""Stride (px) of the hematoxylin map used to find nucleus-like background locations."""
_NUCLEI_PERCENTILE: Final[float] = 90.0
"""Pixels of that map above this percentile of hematoxylin density are nucleus candidates."""
_DEDUP_PX: Final[float] = 4.0
"""Hard negatives closer than this (px) to an existing class-2 point are duplicates."""
_TRIES_PER_IMAGE: Final[int] = 32
_MAX_TRIES: Final[int] = 256


@dataclass
class _Field:
    """One loaded image and what sampling needs from it."""

    image: np.ndarray  # (H, W, 3) uint8
    nuclei: np.ndarray | None = None  # (K, 2) int (x, y) of the top-left of dark cells of the downsampled map

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


def _points(value: Any, what: str) -> np.ndarray:
    """``[[x, y], ...]`` -> finite ``(N, 2)`` float64; raises ``ValueError`` naming ``what``."""
    pts = np.asarray(value if value is not None else [], dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{what} must be a list of [x, y] pairs, got an array of shape {pts.shape}.")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{what} must be finite, got {pts[~np.all(np.isfinite(pts), axis=1)].tolist()!r}.")
    return pts


def _round_half_up(v: np.ndarray | float) -> np.ndarray:
    """Nearest integer, halves up: the rounding of :func:`~mssn_monai.ops.patches.extract_patch`."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def _linear_weights(size: int, region: int, step: float, device: torch.device) -> torch.Tensor:
    """``(size, region)`` linear interpolation weights.

    Output ``j`` samples the region at position ``region / 2 + (j - size / 2) * step`` (pixel indices), so
    output ``size / 2`` is exactly region pixel ``region / 2``, the centre pixel of an even region.
    """
    pos = region / 2 + (torch.arange(size, dtype=torch.float64) - size / 2) * step
    lo = torch.floor(pos).clamp(0, region - 2)
    frac = (pos - lo).clamp(0.0, 1.0)
    w = torch.zeros(size, region, dtype=torch.float64)
    rows = torch.arange(size)
    w[rows, lo.long()] = 1.0 - frac
    w[rows, lo.long() + 1] += frac
    return w.to(device=device, dtype=torch.float32)


class PatchSampleDataset(Dataset):
    """Class-balanced, point-centred RGB patches from datalist records, with a fresh draw every epoch.

    Images are read once (lazily, with :func:`mssn_monai.io.read_image_rgb`) and kept as ``(H, W, 3)``
    uint8. ``samples_per_epoch`` samples are split into exactly ``round(positive_fraction * n)``
    mitoses, ``round(mimic_fraction * n)`` hard mimics (background instead when there are no mimics
    at all) and background for the rest, in an order shuffled per epoch. A positive picks one mitosis
    of the whole dataset uniformly, a mimic one class-2 point uniformly (annotated mimics and mined
    hard negatives together), a background sample one image uniformly.

    Scale jitter (``scale_range``) is done here rather than by a ``RandZoomd`` afterwards because a
    zoom about the patch's geometric centre moves the centre *pixel* (an even patch's centre pixel is
    half a pixel off its geometric centre): output pixel ``j`` (per axis) samples the image, bilinearly,
    at ``c + (j - S/2) / scale`` with ``c`` the centre pixel, so output pixel ``S/2`` is exactly ``c``
    for every scale. There is no antialiasing, which is harmless for scales in the allowed [0.5, 2].

    Args:
        data: datalist records (``image``, ``mitoses``, ``mimics``, ``spacing``; see
            :mod:`mssn_monai.data.datalist`), named ``data`` as in ``monai.data.Dataset``; kept as
            :attr:`data` (copies). A record without mitoses is fine.
        patch_size: ``S``, the side of the square patch in pixels; even, >= 8. 120 holds the largest
            FNR sub-model (see :mod:`mssn_monai.networks.fnr`).
        samples_per_epoch: the dataset's length.
        positive_fraction: fraction of mitosis samples, in [0, 1].
        mimic_fraction: fraction of hard-mimic samples, in [0, 1 - positive_fraction].
        jitter_px: radius (px) of the disc in which mitosis and mimic samples are centred around their
            point; 0 puts the centre pixel on the point. Pixels, as the network's translation tolerance
            is a property of its input grid, not of the tissue.
        exclusion_um: minimum distance (um, converted per image with its ``spacing``) between a
            background sample's centre pixel and every mitosis of its image.
        nuclei_fraction: fraction of background samples drawn near hematoxylin-dark pixels (the top
            ``100 - 90`` % of a 4x-downsampled hematoxylin map), the rest uniformly over the image.
        scale_range: ``(low, high)`` zoom factors drawn uniformly per sample (> 1 enlarges the tissue),
            within [0.5, 2]; ``None`` cuts at native scale.
        transform: callable on the sample dict (e.g. a MONAI ``Compose`` of dict transforms on
            ``"image"``).
        field_transform: callable applied once to each whole image at load, as a ``(3, H, W)`` float
            tensor in [0, 1], returning the same; e.g. :class:`mssn_monai.transforms.NormalizeHEStain`,
            so that training sees fields normalised exactly as inference does. Its result is stored
            back as uint8.
        seed: non-negative int; with the epoch and the index it decides every sample.
        reseed_transform: when ``transform`` has ``set_random_state``, reseed it per sample from
            ``(seed, epoch, index)``, so augmented samples are reproducible too, whatever the number of
            DataLoader workers. Costs about 2 ms per sample for a 10-transform MONAI chain (numpy
            ``RandomState`` construction); ``False`` leaves the transform's own random state alone.
        cache: keep loaded images in memory (per process); ``False`` reads the file for every sample.
        default_spacing: um/px for records without ``spacing``.
        allow_no_positives: when no record has a mitosis, sample negatives only (with a warning) instead of
            raising; meant for validation sets, where a small split may hold no mitosis.
        downsample: sample from each field reduced by this factor (the mean of each ``f x f`` block, after
            ``field_transform``; :func:`~mssn_monai.ops.resample.downsample_mean`), for a stage 1 that runs
            at reduced resolution (``MultiScaleFNR(input_downsample=f)``). Points, spacing and mined hard
            negatives are given in the records' full-resolution pixels and converted here; ``patch_size``,
            ``jitter_px`` and :attr:`hard_negatives` are in the reduced image's pixels.

    Raises:
        ValueError: a bad knob (the message names it and the value), a record without ``image`` or with
            malformed points, or ``positive_fraction > 0`` with no mitosis in any record. A point outside
            its image (``0 <= x <= W``, ``0 <= y <= H``) raises when that image is loaded.

    Example:
        >>> ds = PatchSampleDataset(load_datalist(path, "training"), samples_per_epoch=1024)  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=4)  # doctest: +SKIP
        >>> for epoch in range(10):  # doctest: +SKIP
        ...     ds.set_epoch(epoch)
        ...     for batch in loader:
        ...         batch["image"].shape, batch["label"].shape  # (32, 3, 120, 120), (32, 1)
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        patch_size: int = 120,
        samples_per_epoch: int = 2048,
        positive_fraction: float = 0.5,
        mimic_fraction: float = 0.25,
        jitter_px: float = 10.0,
        exclusion_um: float = MATCH_RADIUS_UM,
        nuclei_fraction: float = 0.5,
        scale_range: Sequence[float] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        field_transform: Callable[[torch.Tensor], Any] | None = None,
        seed: int = 0,
        reseed_transform: bool = True,
        cache: bool = True,
        default_spacing: float = DEFAULT_SPACING_UM,
        allow_no_positives: bool = False,
        downsample: int = 1,
    ) -> None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
            raise ValueError(f"patch_size must be an even int >= 8, got {patch_size!r}.")
        if patch_size < 8 or patch_size % 2:
            raise ValueError(
                f"patch_size must be an even int >= 8 (its centre pixel is start + size // 2), got {patch_size!r}."
            )
        if (
            isinstance(samples_per_epoch, bool)
            or not isinstance(samples_per_epoch, (int, np.integer))
            or (samples_per_epoch < 1)
        ):
            raise ValueError(f"samples_per_epoch must be an int >= 1, got {samples_per_epoch!r}.")
        for name, value in (
            ("positive_fraction", positive_fraction),
            ("mimic_fraction", mimic_fraction),
            ("nuclei_fraction", nuclei_fraction),
        ):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
        if positive_fraction + mimic_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"positive_fraction + mimic_fraction must be <= 1, got {positive_fraction!r} + {mimic_fraction!r}."
            )
        for name, value in (("jitter_px", jitter_px), ("exclusion_um", exclusion_um)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if scale_range is not None:
            lo_hi = tuple(float(s) for s in scale_range)
            if len(lo_hi) != 2 or not (0.5 <= lo_hi[0] <= lo_hi[1] <= 2.0):
                raise ValueError(f"scale_range must be (low, high) with 0.5 <= low <= high <= 2, got {scale_range!r}.")
            scale_range = lo_hi
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}.")
        if not (isinstance(default_spacing, (int, float)) and default_spacing > 0):
            raise ValueError(f"default_spacing must be > 0 um/px, got {default_spacing!r}.")
        if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)) or downsample < 1:
            raise ValueError(f"downsample must be an int >= 1, got {downsample!r}.")

        self.patch_size = int(patch_size)
        self.samples_per_epoch = int(samples_per_epoch)
        self.positive_fraction = float(positive_fraction)
        self.mimic_fraction = float(mimic_fraction)
        self.jitter_px = float(jitter_px)
        self.exclusion_um = float(exclusion_um)
        self.nuclei_fraction = float(nuclei_fraction)
        self.scale_range: tuple[float, float] | None = scale_range
        self.transform = transform
        self.field_transform = field_transform
        self.seed = int(seed)
        self.reseed_transform = bool(reseed_transform)
        self.cache = bool(cache)
        self.downsample = int(downsample)

        self._paths: list[str] = []
        self._spacing: list[float] = []
        self._mitoses: list[np.ndarray] = []
        self._mimics: list[np.ndarray] = []
        self.data: list[dict[str, Any]] = []
        for i, record in enumerate(data):
            if not isinstance(record, Mapping) or DatalistKeys.IMAGE not in record:
                raise ValueError(f"data[{i}] is not a record with an {DatalistKeys.IMAGE!r} key: {record!r}")
            self.data.append(dict(record))
            path = os.fspath(record[DatalistKeys.IMAGE])
            spacing = record.get(DatalistKeys.SPACING, default_spacing)
            if not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and spacing > 0):
                raise ValueError(f"data[{i}] ({path}): spacing must be > 0 um/px, got {spacing!r}.")
            self._paths.append(path)
            self._spacing.append(float(spacing) * self.downsample)
            for points, key in ((self._mitoses, DatalistKeys.MITOSES), (self._mimics, DatalistKeys.MIMICS)):
                points.append(self._reduced(_points(record.get(key), f"data[{i}] ({path}) {key}")))
        if not self._paths:
            raise ValueError("data is empty: PatchSampleDataset needs at least one record.")
        names = [str(r.get(DatalistKeys.DOMAIN, "")) for r in self.data]
        self.domains: list[str] = sorted(set(names))
        """The records' ``domain`` names, sorted (``""`` for records without one); samples carry the index."""
        self._domain_index = [self.domains.index(n) for n in names]
        self._hard: list[np.ndarray] = [np.zeros((0, 2)) for _ in self._paths]
        self._mimics_with_hard: list[np.ndarray] | None = None
        if self.positive_fraction > 0 and not any(len(m) for m in self._mitoses) and allow_no_positives:
            logger.warning(
                "none of the %d records has a mitosis: sampling negatives only (positive_fraction 0)", len(self._paths)
            )
            self.positive_fraction = 0.0
        if self.positive_fraction > 0 and not any(len(m) for m in self._mitoses):
            raise ValueError(
                f"positive_fraction is {self.positive_fraction:g} but none of the {len(self._paths)} records has a "
                "mitosis; use positive_fraction=0 for negatives only."
            )
        self._fields: dict[int, _Field] = {}
        self._epoch = torch.zeros(1, dtype=torch.int64)
        try:  # shared, so set_epoch reaches DataLoader workers that are already running (persistent_workers)
            self._epoch.share_memory_()
        except RuntimeError:  # pragma: no cover - no shared memory on this system: workers see it at restart
            logger.warning("shared memory unavailable: set_epoch reaches DataLoader workers only when they restart")
        self._classes_cache: tuple[tuple[int, bool], np.ndarray] | None = None

    # ---- epoch and class plan --------------------------------------------------------------------
    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def epoch(self) -> int:
        """The epoch that keys the current draw."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of ``epoch`` (an int >= 0); call it at every epoch start (e.g. from an Ignite handler)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}.")
        self._epoch[0] = int(epoch)

    def _has_mimics(self) -> bool:
        return any(len(m) for m in self._mimics) or any(len(h) for h in self._hard)

    def classes(self, epoch: int | None = None) -> np.ndarray:
        """The class of every sample index in ``epoch`` (default: the current one): ``(samples_per_epoch,)`` int64."""
        epoch = self.epoch if epoch is None else int(epoch)
        key = (epoch, self._has_mimics())
        if self._classes_cache is None or self._classes_cache[0] != key:
            n = self.samples_per_epoch
            n_pos = int(round(self.positive_fraction * n))
            n_mimic = min(int(round(self.mimic_fraction * n)), n - n_pos) if key[1] else 0
            plan = np.full(n, int(PatchClass.BACKGROUND), dtype=np.int64)
            plan[:n_pos] = int(PatchClass.MITOSIS)
            plan[n_pos : n_pos + n_mimic] = int(PatchClass.MIMIC)
            self._classes_cache = (key, np.random.default_rng((self.seed, epoch)).permutation(plan))
        return self._classes_cache[1]

    # ---- images --------------------------------------------------------------------------------
    def _load(self, index: int, need_nuclei: bool = False) -> _Field:
        field = self._fields.get(index)
        if field is None:
            path = self._paths[index]
            image = read_image_rgb(path)
            if self.field_transform is not None:
                x = hwc_to_chw_float(image)
                y = torch.as_tensor(self.field_transform(x))
                if tuple(y.shape) != tuple(x.shape):
                    raise ValueError(
                        f"{path}: field_transform changed the image shape {tuple(x.shape)} to {tuple(y.shape)}."
                    )
                image = to_uint8(y).permute(1, 2, 0).contiguous().numpy()
            if self.downsample > 1:
                small = downsample_mean(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0), self.downsample)
                image = to_uint8(small[0]).permute(1, 2, 0).contiguous().numpy()
            field = _Field(image=image)
            width, height = field.size
            for what, pts in (("mitosis", self._mitoses[index]), ("mimic", self._mimics[index])):
                outside = (pts[:, 0] < 0) | (pts[:, 0] > width) | (pts[:, 1] < 0) | (pts[:, 1] > height)
                if np.any(outside):
                    x, y = pts[np.argmax(outside)]
                    raise ValueError(
                        f"{path}: {what} point (x={x:g}, y={y:g}) is outside the image of "
                        f"{width}x{height} px (width x height)."
                    )
            if self.cache:
                self._fields[index] = field
        if need_nuclei and field.nuclei is None:
            field.nuclei = self._nuclei_candidates(field.image)
        return field

    @staticmethod
    def _nuclei_candidates(image: np.ndarray) -> np.ndarray:
        """Top-left ``(x, y)`` of the ``4 x 4`` cells whose hematoxylin density is in the top 10 %: ``(K, 2)``."""
        small = image[::_NUCLEI_DOWNSAMPLE, ::_NUCLEI_DOWNSAMPLE]
        h = rgb2hed(small)[..., 0]
        threshold = np.percentile(h, _NUCLEI_PERCENTILE)
        rows, cols = np.nonzero((h >= threshold) & (h > np.median(h)))  # a flat image has no candidates
        return np.stack([cols, rows], axis=1).astype(np.int64) * _NUCLEI_DOWNSAMPLE

    def image(self, index: int) -> np.ndarray:
        """Record ``index``'s image as sampled (after ``field_transform``, reduced by ``downsample``):
        ``(H, W, 3)`` uint8, not to be modified."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self._paths):
            raise IndexError(f"image index must be an int in [0, {len(self._paths)}), got {index!r}.")
        return self._load(int(index)).image

    def preload(self) -> None:
        """Read every image now (e.g. in the main process before forking DataLoader workers, which then share it)."""
        if not self.cache:
            raise ValueError("preload needs cache=True: without a cache every sample reads its file again.")
        for i in range(len(self._paths)):
            self._load(i, need_nuclei=self.nuclei_fraction > 0)

    # ---- hard negatives ------------------------------------------------------------------------
    @property
    def hard_negatives(self) -> dict[int, np.ndarray]:
        """Mined false positives: ``{image_index: (K, 2) float (x, y)}`` for every record (copies), in the
        sampled image's pixels (reduced when ``downsample > 1``)."""
        return {i: h.copy() for i, h in enumerate(self._hard)}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep (Ignite ``Checkpoint`` / ``CheckpointLoader``): epoch and hard negatives.

        Plain lists and ints, so ``torch.load(weights_only=True)`` reads it back.
        """
        return {
            "epoch": self.epoch,
            "images": list(self._paths),
            "hard_negatives": [h.tolist() for h in self._hard],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (hard negatives replace the current ones, deduplication is not re-run).

        Raises:
            ValueError: the state holds a different number of images than this dataset.
        """
        hard = state.get("hard_negatives", [])
        if len(hard) != len(self._paths):
            raise ValueError(
                f"state has hard negatives for {len(hard)} images but this dataset has {len(self._paths)}; "
                "was it saved from another datalist section?"
            )
        self._hard = [_points(h, f"state hard_negatives[{i}]") for i, h in enumerate(hard)]
        self._mimics_with_hard = None
        self.set_epoch(int(state.get("epoch", self.epoch)))

    def add_hard_negatives(self, image_index: int, points: np.ndarray | Sequence[Sequence[float]]) -> int:
        """Add mined false positives of one image as class-2 (hard mimic) points.

        A point within 4 px of an existing class-2 point of that image (annotated mimic or hard negative,
        earlier points of this call included) is a duplicate and skipped, and so is a point within
        ``exclusion_um`` of a mitosis (that is a localisation error of a true detection, not a mimic).
        DataLoader workers see the new points once they are re-created (at the next epoch unless
        ``persistent_workers``).

        Args:
            image_index: index of the record in :attr:`data`.
            points: ``(N, 2)`` ``(x, y)`` full-resolution pixel coordinates in that image, as the record's
                points (converted when ``downsample > 1``; a sample centred outside the
                image is clamped to its border pixel).

        Returns:
            The number of points added.

        Raises:
            IndexError: ``image_index`` out of range.
            ValueError: ``points`` not ``(N, 2)`` finite numbers.
        """
        if (
            isinstance(image_index, bool)
            or not isinstance(image_index, (int, np.integer))
            or not (0 <= image_index < len(self._paths))
        ):
            raise IndexError(f"image_index must be an int in [0, {len(self._paths)}), got {image_index!r}.")
        new = self._reduced(_points(points, f"hard negatives of image {image_index}"))
        kept = np.concatenate([self._mimics[image_index], self._hard[image_index]])
        mitoses = self._mitoses[image_index]
        too_close = self.exclusion_um / self._spacing[image_index]
        added = []
        for p in new:  # sequential on purpose: each accepted point also dedups the later ones
            if len(kept) and np.min(np.hypot(*(kept - p).T)) < _DEDUP_PX:
                continue
            if len(mitoses) and np.min(np.hypot(*(mitoses - p).T)) < too_close:
                continue
            kept = np.concatenate([kept, p[None]])
            added.append(p)
        if added:
            self._hard[image_index] = np.concatenate([self._hard[image_index], np.asarray(added)])
            self._mimics_with_hard = None
        return len(added)

    def _reduced(self, points: np.ndarray) -> np.ndarray:
        """Full-resolution ``(N, 2)`` points in the pixels of the sampled (reduced) image."""
        return points if self.downsample == 1 else to_reduced_points(points, self.downsample)

    # ---- sampling ------------------------------------------------------------------------------
    def _mimic_table(self) -> list[np.ndarray]:
        """Class-2 points per image: annotated mimics, then hard negatives (cached until the next addition)."""
        if self._mimics_with_hard is None:
            self._mimics_with_hard = [np.concatenate([m, h]) for m, h in zip(self._mimics, self._hard, strict=True)]
        return self._mimics_with_hard

    def _pick_point(self, table: list[np.ndarray], rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """A point drawn uniformly over all images' points in ``table``, jittered in a disc."""
        ends = np.cumsum([len(t) for t in table])
        k = int(rng.integers(ends[-1]))
        image_index = int(np.searchsorted(ends, k, side="right"))
        point = table[image_index][k - (ends[image_index] - len(table[image_index]))]
        radius = self.jitter_px * math.sqrt(rng.random())
        angle = rng.uniform(0.0, 2.0 * math.pi)
        return image_index, point + radius * np.array([math.cos(angle), math.sin(angle)])

    def _pick_background(self, rng: np.random.Generator) -> tuple[int, np.ndarray, _Field]:
        """A pixel at least ``exclusion_um`` from every mitosis of its image (rejection sampling)."""
        use_nuclei = self.nuclei_fraction > 0 and rng.random() < self.nuclei_fraction
        for _ in range(_MAX_TRIES // _TRIES_PER_IMAGE):
            image_index = int(rng.integers(len(self._paths)))
            field = self._load(image_index, need_nuclei=use_nuclei)
            width, height = field.size
            if use_nuclei and field.nuclei is not None and len(field.nuclei):
                picks = field.nuclei[rng.integers(len(field.nuclei), size=_TRIES_PER_IMAGE)]
                xy = picks + rng.integers(0, _NUCLEI_DOWNSAMPLE, size=(_TRIES_PER_IMAGE, 2))
            else:
                xy = _round_half_up(rng.uniform((0, 0), (width, height), size=(_TRIES_PER_IMAGE, 2)))
            xy = np.clip(xy, 0, (width - 1, height - 1))
            mitoses = self._mitoses[image_index]
            if not len(mitoses):
                return image_index, xy[0].astype(np.float64), field
            dist = np.sqrt(((xy[:, None, :] - mitoses[None]) ** 2).sum(-1)).min(axis=1)
            ok = np.flatnonzero(dist >= self.exclusion_um / self._spacing[image_index])
            if len(ok):
                return image_index, xy[ok[0]].astype(np.float64), field
        raise RuntimeError(
            f"no background location at least {self.exclusion_um:g} um from every mitosis found in {_MAX_TRIES} "
            "tries: the images are covered by mitoses; lower exclusion_um or the background fraction."
        )

    def _cut(self, image: np.ndarray, cx: int, cy: int, rng: np.random.Generator) -> torch.Tensor:
        """``(3, S, S)`` float32 patch centred on pixel ``(cx, cy)`` of an ``(H, W, 3)`` uint8 image."""
        chw = image.transpose(2, 0, 1)  # a view: extract_patch copies only the patch
        size = self.patch_size
        if self.scale_range is None or self.scale_range[0] == self.scale_range[1] == 1.0:
            return to_float01(torch.from_numpy(extract_patch(chw, cx, cy, size)))
        step = 1.0 / rng.uniform(*self.scale_range)  # input pixels per output pixel
        region = 2 * math.ceil(size * step / 2) + 2  # even, and holds every sampling position
        patch = to_float01(torch.from_numpy(extract_patch(chw, cx, cy, region)))
        weights = _linear_weights(size, region, step, patch.device)
        return torch.einsum("sr,crq,tq->cst", weights, patch, weights).clamp_(0.0, 1.0)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"sample index must be in [0, {self.samples_per_epoch}), got {index!r}.")
        epoch = self.epoch
        cls = int(self.classes(epoch)[index])
        rng = np.random.default_rng((self.seed, epoch, int(index)))
        if cls == PatchClass.BACKGROUND:
            image_index, point, field = self._pick_background(rng)
        else:
            table = self._mitoses if cls == PatchClass.MITOSIS else self._mimic_table()
            image_index, point = self._pick_point(table, rng)
            field = self._load(image_index)
        width, height = field.size
        cx = int(np.clip(_round_half_up(point[0]), 0, width - 1))  # guard: a jittered point may leave the image
        cy = int(np.clip(_round_half_up(point[1]), 0, height - 1))
        sample: dict[str, Any] = {
            PatchKeys.IMAGE: self._cut(field.image, cx, cy, rng),
            PatchKeys.LABEL: torch.tensor([1.0 if cls == PatchClass.MITOSIS else 0.0], dtype=torch.float32),
            PatchKeys.CLASS: torch.tensor(cls, dtype=torch.int64),
            PatchKeys.POINT: torch.tensor([cx, cy], dtype=torch.float32),
            PatchKeys.IMAGE_INDEX: image_index,
            PatchKeys.DOMAIN: torch.tensor(self._domain_index[image_index], dtype=torch.int64),
        }
        if self.transform is None:
            return sample
        if self.reseed_transform and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=int(rng.integers(2**31 - 1)))
        return self.transform(sample)

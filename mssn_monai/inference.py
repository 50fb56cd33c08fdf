"""Running the stage-1 (FNR) network on whole images: probability maps and candidates.

Images are ``(H, W, 3)`` uint8 RGB arrays (as :func:`mssn_monai.io.read_image_rgb` returns); the
network sees ``uint8 / 255`` (``mssn_monai.networks.fnr.INPUT_RANGE``). Candidates are rows
``(x, y, score)`` in input pixels, the same form every detector here writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mssn_monai.io import detect_each_image
from mssn_monai.networks.fnr import FUSED_KEY, OUTPUT_STRIDE
from mssn_monai.ops.peaks import find_peaks

__all__ = [
    "image_to_tensor",
    "fnr_probability_maps",
    "maps_to_candidates",
    "fnr_candidates",
    "run_candidates",
    "detect_two_stage",
    "TwoStageDetector",
    "write_detection_outputs",
    "normalize_field",
]

logger = logging.getLogger(__name__)


def image_to_tensor(image: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, H, W)`` float32 in [0, 1], channels-last in memory."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image)).to(device=device)
    t = t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last)


def normalize_field(normalizer: Any, image: np.ndarray) -> np.ndarray:
    """Apply a stain normaliser (``(3, H, W)`` float in [0, 1] -> same) to an ``(H, W, 3)`` uint8 field.

    ``None`` returns the image unchanged. The bundle maps every field onto the stains the networks were
    trained on (``stain_normalization`` in its config), so a new scanner's colours come back into range.
    """
    if normalizer is None:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    out = torch.as_tensor(normalizer(t)).clamp_(0.0, 1.0)
    return out.mul_(255.0).add_(0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def fnr_probability_maps(
    network: nn.Module,
    image: np.ndarray,
    device: torch.device | str | None = None,
    tile_px: int = 2048,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Dense probability map of every sub-model and the fused map for one image, tile by tile.

    The image is processed in tiles of about ``tile_px`` x ``tile_px`` pixels of output, each read with
    its patch context (60 px around it, mirrored only at the image's own borders), so the stitched maps
    equal the maps of the whole image at once (``MultiScaleFNR.forward_region``) while memory stays
    bounded by the tile size: a 6000x5000 region or a larger one works like a 2048x2048 field. Peaks
    are then found on the stitched map, so a mitosis on a tile seam is reported exactly once.

    Args:
        network: a ``MultiScaleFNR``; run in eval mode and left in the mode it had.
        image: ``(H, W, 3)`` uint8 RGB.
        device: where to run (default: the network's device).
        tile_px: output tile size in pixels (rounded down to a multiple of 4, at least 4).
        progress: show a progress bar over tiles.

    Returns:
        ``{name: (ceil(H/4), ceil(W/4)) float32}``; cell ``[i, j]`` is the patch centred at pixel
        ``(x, y) = (4 j, 4 i)``.
    """
    from tqdm import tqdm

    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if device is None:
        device = next(network.parameters()).device
    h, w = image.shape[:2]
    n_rows, n_cols = -(-h // OUTPUT_STRIDE), -(-w // OUTPUT_STRIDE)
    step = max(int(tile_px) // OUTPUT_STRIDE, 1)
    source = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).to(device)
    tiles = [(r, c) for r in range(0, n_rows, step) for c in range(0, n_cols, step)]
    maps: dict[str, np.ndarray] = {}
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            for r0, c0 in tqdm(tiles, desc="tiles", unit="tile", disable=not progress or len(tiles) < 2, leave=False):
                rows, cols = min(step, n_rows - r0), min(step, n_cols - c0)
                for name, m in network.forward_region(source, r0, rows, c0, cols).items():
                    if name not in maps:
                        maps[name] = np.empty((n_rows, n_cols), np.float32)
                    maps[name][r0 : r0 + rows, c0 : c0 + cols] = m[0, 0].float().cpu().numpy()
    finally:
        network.train(was_training)
    return maps


def maps_to_candidates(
    maps: Mapping[str, np.ndarray], spacing: float, threshold: float = 0.5, min_distance_um: float = 4.0
) -> dict[str, np.ndarray]:
    """Candidates ``(N, 3)`` of ``x, y, score`` from each probability map (threshold + local maxima).

    Args:
        maps: ``{name: (h, w)}`` probability maps at stride 4 (from :func:`fnr_probability_maps`).
        spacing: pixel spacing in um/px (converts ``min_distance_um``).
        threshold: minimum probability of a candidate.
        min_distance_um: no two candidates of one map are closer than this, in micrometres.
    """
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 um/px, got {spacing!r}")
    min_px = min_distance_um / spacing
    return {k: find_peaks(m, threshold, min_px, stride=OUTPUT_STRIDE) for k, m in maps.items()}


def fnr_candidates(
    network: nn.Module,
    image: np.ndarray,
    spacing: float,
    threshold: float = 0.5,
    min_distance_um: float = 4.0,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Stage-1 candidates of one image: peaks of the fused map, ``(N, 3)`` rows ``x, y, score``."""
    maps = fnr_probability_maps(network, image, device)
    return maps_to_candidates({FUSED_KEY: maps[FUSED_KEY]}, spacing, threshold, min_distance_um)[FUSED_KEY]


def _to_numpy(result: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """:meth:`MSSNDetector.detect`'s tensors as numpy: float64 numbers, bool masks."""
    return {k: v.cpu().numpy().astype(np.float64 if v.is_floating_point() else bool) for k, v in result.items()}


def detect_two_stage(
    fnr: nn.Module,
    fpr: nn.Module,
    image: np.ndarray,
    spacing: float,
    threshold: float = 0.5,
    min_distance_um: float = 4.0,
    vote_radius_px: float = 2.0,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Both MSSN stages on one ``(H, W, 3)`` uint8 image: :meth:`MSSNDetector.detect` as numpy arrays.

    A candidate is reported when the FPR vote keeps it (summed mitosis similarity over its vote patches
    beats the summed not-mitosis similarity) and its calibrated probability reaches the network's
    ``operating_threshold`` (chosen on held-out fields at training time; 0 = the vote alone). The
    networks run in eval mode and are left in the mode they had.

    Returns:
        ``{"candidates": (N, 3) x, y, fnr score, "votes": (N,), "probability": (N,), "voted": (N,) bool,
        "keep": (N,) bool, "detections": (M, 3) x, y, probability}`` for the kept candidates (``M <= N``).
    """
    from mssn_monai.networks.detector import MSSNDetector

    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if device is None:
        device = next(fnr.parameters()).device
    detector = MSSNDetector(fnr, fpr, spacing, threshold, min_distance_um, vote_radius_px).to(device)
    modes = fnr.training, fpr.training
    detector.eval()
    try:
        with torch.inference_mode():
            source = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)
            out = detector.detect(source, float(spacing))
    finally:
        fnr.train(modes[0])
        fpr.train(modes[1])
    return _to_numpy(out)


def run_candidates(
    network: nn.Module,
    input: str | os.PathLike,  # noqa: A002
    out: str | os.PathLike,
    spacing: float,
    threshold: float = 0.5,
    min_distance_um: float = 4.0,
    device: torch.device | str | None = None,
) -> int:
    """Write the stage-1 candidates of every image under ``input`` as ``out/<image stem>.csv`` (``x,y,score``).

    An image that cannot be read is reported (one line naming it) and skipped; the others are still
    processed. Raises ``ValueError`` when no image could be processed.

    Returns:
        the number of images written.
    """
    return detect_each_image(
        input,
        out,
        lambda image: fnr_candidates(network, image, spacing, threshold, min_distance_um, device),
        desc="candidates",
    )


@dataclass
class TwoStageDetector:
    """The shipped MSSN detector for ``(H, W, 3)`` uint8 fields: stain normalisation, then :class:`MSSNDetector`.

    Build it from a bundle with :meth:`from_bundle`: the same ``network_def``, weights
    (``models/model.pt``) and stain normalisation as ``configs/inference.json``, applied in the same
    order (uint8 / 255, normalise, detect), so ``detect`` and the bundle workflow give the same detections.

    Args:
        detector: the two-stage ``MSSNDetector`` (eval mode, weights loaded).
        normalizer: stain normaliser ``(3, H, W) float -> (3, H, W)`` applied first, or ``None``.
    """

    detector: nn.Module
    normalizer: Any = None

    @classmethod
    def from_bundle(
        cls, bundle: str | os.PathLike | None = None, device: torch.device | str = "cpu", normalize: bool = True
    ) -> TwoStageDetector:
        """Load ``models/model.pt`` into ``network_def`` of ``configs/inference.json``.

        Args:
            bundle: the bundle folder (default: this checkout's ``bundle``).
            device: where to run.
            normalize: use the bundle's stain normalisation when its config enables it.

        Raises:
            FileNotFoundError: missing config or weights.
            ValueError: weights that do not match the network, or a stage 2 without a reference bank.
        """
        from mssn_monai.checkpoints import DEFAULT_BUNDLE, bundle_config, load_network, stain_normalizer

        root = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
        config = root / "configs" / "inference.json"
        weights = root / "models" / "model.pt"
        detector = load_network(weights, config, "network_def", device)
        if detector.fpr.references.shape[0] == 0:
            raise ValueError(f"{weights}: stage 2 has no reference bank (untrained FPR); train with configs/train.json")
        return cls(detector=detector, normalizer=stain_normalizer(bundle_config(config)) if normalize else None)

    @property
    def settings(self) -> dict[str, float | bool]:
        """The thresholds in force, as recorded in the JSON summaries."""
        return {**self.detector.settings(), "stain_normalization": self.normalizer is not None}

    def __call__(self, image: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
        """Detections of one ``(H, W, 3)`` uint8 field; see :meth:`MSSNDetector.detect` for the keys."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
        device = next(self.detector.parameters()).device
        field = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
        if self.normalizer is not None:
            field = torch.as_tensor(self.normalizer(field))
        with torch.inference_mode():
            out = self.detector.detect(field.to(device), float(spacing))
        return _to_numpy(out)


def write_detection_outputs(
    stem: Path,
    image: np.ndarray | None,
    result: Mapping[str, np.ndarray],
    spacing: float,
    settings: Mapping[str, float],
    overlay: bool = False,
    size: tuple[int, int] | None = None,
) -> dict:
    """Write one image's detections as ``<stem>.csv``, ``.geojson``, ``.json`` (and ``_overlay.png``).

    Args:
        stem: output path without suffix (``out/<image stem>``).
        image: ``(H, W, 3)`` uint8 RGB (for the size, and the overlay); may be ``None`` without overlay
            when ``size`` is given.
        result: :func:`detect_two_stage` output (``"detections"``; ``"candidates"`` when known).
        spacing: pixel spacing in um/px (for the count per mm^2).
        settings: the thresholds used, recorded in the summary.
        overlay: also draw the detections on the image as a PNG.
        size: ``(H, W)`` of the image when ``image`` is not given.

    Returns:
        the JSON summary.
    """
    from mssn_monai.io import detections_to_geojson, write_detections_csv, write_image, write_json

    det = np.asarray(result["detections"], dtype=np.float64).reshape(-1, 3)
    if image is None and (size is None or overlay):
        raise ValueError("write_detection_outputs needs the image (for an overlay) or its size.")
    h, w = image.shape[:2] if image is not None else (int(size[0]), int(size[1]))
    area_mm2 = w * h * spacing**2 / 1e6
    summary = {
        "image": stem.name,
        "width": w,
        "height": h,
        "spacing_um_per_px": spacing,
        "area_mm2": area_mm2,
        "count": len(det),
        "mitoses_per_mm2": len(det) / area_mm2 if area_mm2 > 0 else 0.0,
        "candidates": len(result["candidates"]) if "candidates" in result else None,
        "settings": dict(settings),
        "detections": [[round(float(x), 2), round(float(y), 2), float(p)] for x, y, p in det],
        "note": "weights trained on synthetic data only unless retrained: not for use on real slides as shipped",
    }
    write_detections_csv(stem.parent / f"{stem.name}.csv", det)
    write_json(stem.parent / f"{stem.name}.geojson", detections_to_geojson(det, stem.name))
    write_json(stem.parent / f"{stem.name}.json", summary)
    if overlay:
        from mssn_monai.visualize import draw_points

        r = 8.0 / spacing
        picture = draw_points(image, [(det, (0, 200, 0), r)], labels=[[f"{p:.2f}" for p in det[:, 2]]])
        write_image(stem.parent / f"{stem.name}_overlay.png", picture)
    return summary

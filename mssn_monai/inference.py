"""Running the stage-1 (FNR) network on whole images: probability maps and candidates.

Images are ``(H, W, 3)`` uint8 RGB arrays (as :func:`mssn_monai.io.read_image_rgb` returns); the
network sees ``uint8 / 255`` (``mssn_monai.networks.fnr.INPUT_RANGE``). Candidates are rows
``(x, y, score)`` in input pixels, the same form every detector here writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mssn_monai.io import list_images, read_image_rgb, write_detections_csv
from mssn_monai.networks.fnr import FUSED_KEY, OUTPUT_STRIDE
from mssn_monai.ops.peaks import find_peaks

__all__ = ["image_to_tensor", "fnr_probability_maps", "maps_to_candidates", "fnr_candidates", "run_candidates"]

logger = logging.getLogger(__name__)


def image_to_tensor(image: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, H, W)`` float32 in [0, 1], channels-last in memory."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image)).to(device=device)
    t = t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last)


def fnr_probability_maps(
    network: nn.Module, image: np.ndarray, device: torch.device | str | None = None
) -> dict[str, np.ndarray]:
    """Dense probability map of every sub-model and the fused map for one image.

    Args:
        network: a ``MultiScaleFNR``; it is run in eval mode and left in the mode it had.
        image: ``(H, W, 3)`` uint8 RGB.
        device: where to run (default: the network's device).

    Returns:
        ``{name: (ceil(H/4), ceil(W/4)) float32}``; cell ``[i, j]`` is the patch centred at pixel
        ``(x, y) = (4 j, 4 i)``.
    """
    if device is None:
        device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            maps = network(image_to_tensor(image, device))
    finally:
        network.train(was_training)
    return {k: v[0, 0].float().cpu().numpy() for k, v in maps.items()}


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
    from tqdm import tqdm

    files = list_images(input)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    n = 0
    for path in tqdm(files, desc="candidates", unit="image", disable=len(files) < 2):
        try:
            image = read_image_rgb(path)
        except (OSError, ValueError) as e:
            logger.error("%s", e)
            continue
        write_detections_csv(
            out / f"{path.stem}.csv", fnr_candidates(network, image, spacing, threshold, min_distance_um, device)
        )
        n += 1
    if n == 0:
        raise ValueError(f"{input}: none of {len(files)} image(s) could be read")
    return n

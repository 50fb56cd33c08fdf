"""uint8 <-> float intensities: the one pair of conversions, with one rounding rule.

Every network input is RGB float in ``[0, 1]`` = ``uint8 / 255``; a float image goes back to uint8 by
clamping to ``[0, 1]`` and rounding to the nearest level, halves up (``floor(255 x + 0.5)``).
"""

from __future__ import annotations

import numpy as np
import torch

from mssn_monai.constants import MAX_FIT_PIXELS

__all__ = ["to_float01", "to_uint8", "hwc_to_chw_float", "fit_stride"]


def to_float01(image: torch.Tensor) -> torch.Tensor:
    """uint8 (integer levels 0-255) -> float32 in ``[0, 1]``; a float tensor is taken as already in ``[0, 1]``.

    TorchScript-able (the detector calls it on its input and on the vote patches).

    Args:
        image: tensor of any shape and device.

    Returns:
        float32 tensor of the same shape (a new tensor for integer input; float input as float32).
    """
    if image.is_floating_point():
        return image.float()
    return image.float().div(255.0)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float in ``[0, 1]`` -> uint8 tensor: clamp, then the nearest level with halves up (``floor(255 x + 0.5)``).

    Args:
        image: float tensor of any shape; values outside ``[0, 1]`` are clamped.

    Returns:
        uint8 tensor of the same shape.
    """
    return image.float().clamp(0.0, 1.0).mul(255.0).add(0.5).floor().to(torch.uint8)


def hwc_to_chw_float(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB array -> ``(3, H, W)`` float32 tensor in ``[0, 1]`` (a copy)."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {tuple(image.shape)}.")
    # np.require copies only a read-only or non-contiguous array (torch refuses to wrap a read-only one)
    return to_float01(torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)).contiguous()


def fit_stride(height: int, width: int, max_pixels: int = MAX_FIT_PIXELS) -> int:
    """Smallest step ``s >= 1`` such that every ``s``-th row and column of an image leave at most ``max_pixels``.

    Args:
        height, width: the image's size in pixels.
        max_pixels: the most pixels wanted in the subsample.

    Returns:
        ``s``; ``1`` when the image holds at most ``max_pixels``.
    """
    s = 1
    while -(-height // s) * -(-width // s) > max_pixels:
        s += 1
    return s

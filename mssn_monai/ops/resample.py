"""Block-mean downsampling: the reduced-resolution view stage 1 can be trained and run on.

A pyramid level of a slide is, in most scanners' files and in ours, the mean of each ``2 x 2`` block of
the level above; :func:`downsample_mean` is that operation on a tensor, TorchScript-able, so the
detector, the training patches and the int8 calibration all reduce an image the same way. Pixel
``(u, v)`` of the result covers input pixels ``[f u, f u + f) x [f v, f v + f)``, so its centre is the
input point ``(f u + (f - 1) / 2, f v + (f - 1) / 2)``: :func:`to_reduced_points` and
:func:`from_reduced_points` convert between the two grids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mssn_monai.ops.intensity import to_float01

__all__ = ["downsample_mean", "to_reduced_points", "from_reduced_points"]


def downsample_mean(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The mean of each ``factor x factor`` block of pixels.

    Args:
        image: ``(B, C, H, W)`` float in ``[0, 1]`` or uint8 (taken as ``uint8 / 255``).
        factor: block side, an int >= 1; 1 returns the image as float, unchanged.

    Returns:
        ``(B, C, ceil(H / factor), ceil(W / factor))`` float32. A block cut by the bottom or right edge
        repeats the edge pixels (for ``factor = 2``: the mean of the pixels it holds).

    Example:
        >>> downsample_mean(torch.arange(6.0).reshape(1, 1, 2, 3), 2)
        tensor([[[[2.0000, 3.5000]]]])
    """
    if factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor}.")
    x = to_float01(image)
    if factor == 1:
        return x
    pad_h, pad_w = (-int(x.shape[-2])) % factor, (-int(x.shape[-1])) % factor
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")
    return F.avg_pool2d(x, factor)


def to_reduced_points(points: np.ndarray, factor: int) -> np.ndarray:
    """``(N, 2+)`` ``x, y`` in input pixels -> the same points in the pixels of :func:`downsample_mean`.

    ``(x + 0.5) / factor - 0.5``: pixel centres map onto pixel centres (columns after the second are kept).
    """
    out = _as_rows(points)
    out[:, :2] = (out[:, :2] + 0.5) / factor - 0.5
    return out


def from_reduced_points(points: np.ndarray, factor: int) -> np.ndarray:
    """The inverse of :func:`to_reduced_points`: ``(x + 0.5) * factor - 0.5``."""
    out = _as_rows(points)
    out[:, :2] = (out[:, :2] + 0.5) * factor - 0.5
    return out


def _as_rows(points: np.ndarray) -> np.ndarray:
    """A float64 ``(N, C)`` copy of ``points`` (an empty 2-D array keeps its columns; other empties are ``(0, 2)``)."""
    out = np.array(points, dtype=np.float64, copy=True)
    if out.ndim == 2:
        return out
    return np.zeros((0, 2)) if out.size == 0 else out.reshape(len(out), -1)

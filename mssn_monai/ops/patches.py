"""Square patches of an image around points, and the border rule they share with the dense FNR path.

Border rule
    Pixels outside the image are the image mirrored *with* its edge pixel repeated, i.e.
    ``numpy.pad(mode="symmetric")`` (``... c b a | a b c ... x y z | z y x ...``), applied periodically
    so any pad works, even around a 1x1 image. :func:`pad_symmetric` (dense path), :func:`extract_patch`
    (training patches) and :func:`gather_patches` (the stage-2 vote) share the rule, so training and
    inference see the same borders.

Centre pixel
    A patch of (even) size ``S`` centred at pixel ``(x, y)`` covers rows ``y - S // 2 .. y - S // 2 + S - 1``
    (columns likewise): its centre pixel is ``start + S // 2``. Float centres are rounded to the nearest
    pixel, halves up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_pair",
    "mirror_index",
    "mirror_take",
    "pad_symmetric",
    "extract_patch",
    "extract_patches",
    "gather_patches",
]


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``[7, 5] -> (7, 5)``; anything else raises ``ValueError``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair [H, W] of ints, got {value!r}.")


def _mirror(idx: np.ndarray, size: int) -> np.ndarray:
    """The border rule on an array of pixel indices of an axis of ``size``: the source index of each
    (``numpy.pad(mode="symmetric")``, repeated periodically for pads larger than the axis)."""
    idx = idx % (2 * size)
    return np.where(idx < size, idx, 2 * size - 1 - idx)


def _mirror_tensor(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Torch (TorchScript) twin of :func:`_mirror`."""
    idx = torch.remainder(idx, 2 * size)
    return torch.where(idx < size, idx, 2 * size - 1 - idx)


def _mirror_indices(start: int, length: int, size: int) -> np.ndarray:
    """Source indices of pixels ``start .. start + length - 1`` of an axis of ``size`` (:func:`_mirror`)."""
    return _mirror(np.arange(start, start + length), size)


def mirror_index(start: int, length: int, size: int, device: torch.device) -> torch.Tensor:
    """Torch (TorchScript) twin of :func:`_mirror_indices`: ``(length,)`` int64 source indices on ``device``."""
    return _mirror_tensor(torch.arange(start, start + length, device=device), size)


def mirror_take(x: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """Indices ``[start, start + length)`` of ``x`` along ``dim`` under the border rule: a view of ``x``
    (``narrow``) when they all lie inside it, else a gather of :func:`mirror_index`. TorchScript-able.

    Args:
        x: tensor of any shape.
        dim: the axis.
        start, length: first index (may be negative) and count (>= 1).
    """
    size = int(x.shape[dim])
    if start >= 0 and start + length <= size:
        return x.narrow(dim, start, length)
    return x.index_select(dim, mirror_index(start, length, size, x.device))


def _take_rows_cols(image: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
    """``image[..., rows, :][..., cols]`` for a numpy array or a torch tensor."""
    if isinstance(image, torch.Tensor):
        r = torch.as_tensor(rows, device=image.device)
        c = torch.as_tensor(cols, device=image.device)
        return image.index_select(-2, r).index_select(-1, c)
    return np.asarray(image)[..., rows, :][..., cols]


def pad_symmetric(image: torch.Tensor | np.ndarray, top: int, bottom: int, left: int, right: int) -> Any:
    """Pad the last two axes (rows, columns) with the FNR border rule (see the module docstring).

    Equals ``numpy.pad(image, ((0, 0), ..., (top, bottom), (left, right)), mode="symmetric")`` for any
    pad widths, including pads larger than the image (the mirror repeats), so a 1x1 image works.

    Args:
        image: array or tensor ``(..., H, W)`` with ``H, W >= 1``.
        top, bottom, left, right: non-negative pad widths in pixels.

    Returns:
        The padded array or tensor ``(..., H + top + bottom, W + left + right)`` (same type, dtype and
        device; a 4-D channels-last tensor stays channels-last).

    Raises:
        ValueError: when ``image`` has fewer than 2 dimensions, an empty spatial axis, or a pad is negative.
    """
    if image.ndim < 2 or image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"pad_symmetric expects an image (..., H, W) with H, W >= 1, got shape {tuple(image.shape)}.")
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"pad widths must be >= 0, got top={top}, bottom={bottom}, left={left}, right={right}.")
    if not isinstance(image, torch.Tensor):
        return np.pad(np.asarray(image), [(0, 0)] * (image.ndim - 2) + [(top, bottom), (left, right)], mode="symmetric")
    h, w = int(image.shape[-2]), int(image.shape[-1])
    channels_last = image.ndim == 4 and image.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(
        (*image.shape[:-2], h + top + bottom, w + left + right),
        dtype=image.dtype,
        device=image.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    # Copy the image once, mirror the left/right bands from it, then the top/bottom bands from the
    # column-padded rows (the rule is separable); index_select over the whole padded image is ~10x slower.
    out[..., top : top + h, left : left + w] = image
    for start, length, at in ((-left, left, 0), (w, right, left + w)):
        if length:
            idx = torch.as_tensor(_mirror_indices(start, length, w), device=image.device)
            out[..., top : top + h, at : at + length] = image.index_select(-1, idx)
    for start, length, at in ((-top, top, 0), (h, bottom, top + h)):
        if length:
            idx = torch.as_tensor(_mirror_indices(start, length, h) + top, device=image.device)
            out[..., at : at + length, :] = out.index_select(-2, idx)
    return out


def extract_patch(
    image: torch.Tensor | np.ndarray, x: float, y: float, size: int | Sequence[int]
) -> torch.Tensor | np.ndarray:
    """Crop the patch centred at ``(x, y)`` with the FNR border rule; the training-patch twin of the dense path.

    The patch of size ``(h, w)`` starts at row ``y - h // 2`` and column ``x - w // 2``, so its centre
    pixel (``start + size // 2``) is ``(x, y)``; pixels outside the image are mirrored exactly as in
    :func:`pad_symmetric`. With ``size=120``, ``MultiScaleFNR.classify_patches`` of the result equals
    the dense map at cell ``(y / 4, x / 4)`` when ``x`` and ``y`` are multiples of 4.

    Args:
        image: array or tensor ``(..., H, W)`` (e.g. ``(C, H, W)``; rows then columns last), any size >= 1x1.
        x: column of the centre pixel, in pixels; a float is rounded to the nearest integer (halves up).
        y: row of the centre pixel, in pixels; rounded likewise.
        size: patch size in pixels, an int or ``(h, w)``.

    Returns:
        ``(..., h, w)`` of the same type, dtype and device as ``image`` (a copy, never a view).

    Raises:
        ValueError: on a non-positive ``size`` or an image without a 2-D spatial extent.

    Example:
        >>> img = np.arange(9).reshape(1, 3, 3)
        >>> extract_patch(img, x=0, y=0, size=4)[0]
        array([[4, 3, 3, 4],
               [1, 0, 0, 1],
               [1, 0, 0, 1],
               [4, 3, 3, 4]])
    """
    h, w = as_pair(size, "size")
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}.")
    if image.ndim < 2 or image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"extract_patch expects an image (..., H, W) with H, W >= 1, got shape {tuple(image.shape)}.")
    cx, cy = math.floor(float(x) + 0.5), math.floor(float(y) + 0.5)
    rows = _mirror_indices(cy - h // 2, h, int(image.shape[-2]))
    cols = _mirror_indices(cx - w // 2, w, int(image.shape[-1]))
    return _take_rows_cols(image, rows, cols)


def extract_patches(image: torch.Tensor | np.ndarray, points: np.ndarray, size: int) -> torch.Tensor | np.ndarray:
    """Many patches at once: :func:`extract_patch` for every point, by one fancy-indexing gather.

    Args:
        image: ``(C, H, W)`` array or tensor, any size >= 1x1.
        points: ``(M, 2)`` centres ``(x, y)`` in pixels (rounded to the nearest pixel, halves up).
        size: square patch size in pixels.

    Returns:
        ``(M, C, size, size)`` of the type, dtype and device of ``image``; patch ``m`` equals
        ``extract_patch(image, *points[m], size)``.
    """
    if image.ndim != 3 or image.shape[-1] < 1 or image.shape[-2] < 1:
        raise ValueError(f"extract_patches expects an image (C, H, W) with H, W >= 1, got shape {tuple(image.shape)}.")
    if size < 1:
        raise ValueError(f"size must be positive, got {size!r}.")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    centre = np.floor(pts + 0.5).astype(np.int64)
    if isinstance(image, torch.Tensor):
        return gather_patches(image, torch.as_tensor(centre, device=image.device), int(size))
    offsets = np.arange(size) - size // 2
    h, w = int(image.shape[-2]), int(image.shape[-1])
    rows = _mirror(centre[:, 1, None] + offsets[None], h)  # (M, size)
    cols = _mirror(centre[:, 0, None] + offsets[None], w)
    return np.ascontiguousarray(np.moveaxis(np.asarray(image)[:, rows[:, :, None], cols[:, None, :]], 1, 0))


def gather_patches(image: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches of a ``(C, H, W)`` tensor around integer centres, in one gather (TorchScript-able).

    The torch twin of :func:`extract_patches` for centres already rounded: patch ``m`` covers rows
    ``y_m - size // 2 .. y_m - size // 2 + size - 1`` (and the same for columns), borders mirrored by
    the FNR rule.

    Args:
        image: ``(C, H, W)`` tensor, any dtype, ``H, W >= 1``.
        centres: ``(M, 2)`` int64 ``x, y`` in pixels, on ``image``'s device.
        size: patch side in pixels.

    Returns:
        ``(M, C, size, size)``, dtype and device of ``image``.
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    y0, x0 = centres[:, 1] - size // 2, centres[:, 0] - size // 2
    if centres.shape[0] > 0 and bool(((y0 >= 0) & (x0 >= 0) & (y0 + size <= h) & (x0 + size <= w)).all()):
        # every patch inside the image: a stack of plain windows (an order of magnitude faster than the
        # index gather below on a CPU, the same numbers)
        ys: list[int] = y0.tolist()
        xs: list[int] = x0.tolist()
        windows: list[torch.Tensor] = []
        for i in range(len(ys)):
            windows.append(image[:, ys[i] : ys[i] + size, xs[i] : xs[i] + size])
        return torch.stack(windows)
    offsets = torch.arange(size, device=image.device) - size // 2
    rows = _mirror_tensor(centres[:, 1:2] + offsets.unsqueeze(0), h)  # (M, size)
    cols = _mirror_tensor(centres[:, 0:1] + offsets.unsqueeze(0), w)
    return image[:, rows.unsqueeze(2), cols.unsqueeze(1)].permute(1, 0, 2, 3).contiguous()

"""Tissue mask of a slide thumbnail: Otsu's threshold on saturation, small holes filled, specks dropped.

Stained tissue is coloured and glass is white or grey, so saturation (HSV's ``(max - min) / max``)
separates them better than brightness, which also darkens in pen marks, dust and dark glass edges.
Otsu's threshold (:func:`skimage.filters.threshold_otsu`) picks the cut between the two modes; a floor
(``min_saturation``) keeps a blank slide (one mode: glass) from being split in two. Holes smaller than
``max_hole_px`` (lumina, fat vacuoles, cracks) are filled, so tiles inside tissue are kept; objects
smaller than ``min_object_px`` (dust) are dropped. :func:`cell_boxes` covers the cells near tissue
with few boxes, so that the glass between islands is not computed.

numpy / scipy / scikit-image only; no IO.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["saturation", "tissue_mask", "mask_blocks", "mask_cells", "cell_boxes"]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 HSV saturation in ``[0, 1]`` of an ``(H, W, 3)`` RGB image (black has 0)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"rgb must be (H, W, 3), got shape {arr.shape}.")
    arr = arr[..., :3].astype(np.float32)
    hi, lo = arr.max(axis=-1), arr.min(axis=-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0).astype(np.float32)


def tissue_mask(
    rgb: np.ndarray, min_saturation: float = 0.05, max_hole_px: int = 64, min_object_px: int = 16
) -> np.ndarray:
    """``(H, W)`` bool mask of tissue in a low-resolution ``(H, W, 3)`` RGB image of a slide.

    Args:
        rgb: the thumbnail (uint8 or float in the same scale for all channels).
        min_saturation: the threshold is never below this (a blank slide has no tissue).
        max_hole_px: background holes up to this many pixels inside tissue are filled.
        min_object_px: tissue objects smaller than this many pixels are dropped.

    Returns:
        bool mask; all false when nothing is saturated enough.
    """
    from skimage.filters import threshold_otsu

    sat = saturation(rgb)
    if sat.size == 0:
        return np.zeros(sat.shape, dtype=bool)
    threshold = float(threshold_otsu(sat)) if float(sat.max()) > float(sat.min()) else 1.0
    mask = sat > max(threshold, float(min_saturation))
    if max_hole_px > 0:
        mask = ~_drop_small(~mask, max_hole_px)
    if min_object_px > 0:
        mask = _drop_small(mask, min_object_px - 1)
    return mask


def _drop_small(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its 4-connected components of at most ``max_size`` pixels (a copy)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_size
    small[0] = False
    return mask & ~small[labels]


def mask_blocks(mask: np.ndarray, scale: float, block_px: int, size: tuple[int, int], margin_px: int = 0) -> np.ndarray:
    """Which blocks of a level-0 grid hold tissue: ``(rows, cols)`` bool.

    Args:
        mask: ``(h, w)`` tissue mask of a thumbnail.
        scale: level-0 pixels per mask pixel (the thumbnail's downsample).
        block_px: block side in level-0 pixels.
        size: ``(H, W)`` of level 0.
        margin_px: a block also counts when tissue lies within this many level-0 pixels of it.

    Returns:
        ``(ceil(H / block_px), ceil(W / block_px))`` bool.
    """
    h, w = int(size[0]), int(size[1])
    rows, cols = -(-h // block_px), -(-w // block_px)
    out = np.zeros((rows, cols), dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return out
    # each mask pixel covers level-0 [y * scale, (y + 1) * scale): mark every block it (plus margin) touches
    y0 = np.floor((ys * scale - margin_px) / block_px).astype(np.int64).clip(0, rows - 1)
    y1 = np.floor(((ys + 1) * scale + margin_px - 1e-6) / block_px).astype(np.int64).clip(0, rows - 1)
    x0 = np.floor((xs * scale - margin_px) / block_px).astype(np.int64).clip(0, cols - 1)
    x1 = np.floor(((xs + 1) * scale + margin_px - 1e-6) / block_px).astype(np.int64).clip(0, cols - 1)
    for a, b, c, d in set(zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), strict=True)):
        out[a : b + 1, c : d + 1] = True
    return out


def mask_cells(
    mask: np.ndarray, scale: float, cell_px: float, margin_px: float = 0.0
) -> Callable[[int, int, int, int], np.ndarray]:
    """Which cells of a fine level-0 grid lie on or near tissue, window by window.

    Args:
        mask: ``(h, w)`` tissue mask of a thumbnail.
        scale: level-0 pixels per mask pixel (the thumbnail's downsample).
        cell_px: level-0 pixels per cell; cell ``(r, c)`` is the point ``(c * cell_px, r * cell_px)``.
        margin_px: a cell also counts when tissue lies within this many level-0 pixels of it (measured on
            the mask, in whole mask pixels).

    Returns:
        ``cells(r0, r1, c0, c1)``: the ``(r1 - r0, c1 - c0)`` bool mask of cells ``[r0, r1) x [c0, c1)``,
        each the value of the (widened) mask pixel holding its point (points beyond the mask take the
        nearest edge pixel's value).
    """
    from scipy import ndimage

    near = np.asarray(mask, dtype=bool)
    if margin_px > 0 and near.any():
        near = ndimage.distance_transform_edt(~near) <= float(margin_px) / float(scale)
    h, w = near.shape
    step = float(cell_px) / float(scale)

    def cells(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        ys = np.floor(np.arange(r0, r1) * step).astype(np.int64).clip(0, max(h - 1, 0))
        xs = np.floor(np.arange(c0, c1) * step).astype(np.int64).clip(0, max(w - 1, 0))
        if h == 0 or w == 0:
            return np.zeros((len(ys), len(xs)), dtype=bool)
        return near[np.ix_(ys, xs)]

    return cells


def cell_boxes(allowed: np.ndarray, context: int = 0, max_boxes: int = 64) -> list[tuple[int, int, int, int]]:
    """Boxes ``(r0, r1, c0, c1)`` (half-open) that together cover every true cell of ``allowed``, cheaply.

    Each group of true cells (8-connected once widened by ``context``: cells at most ``2 context + 1``
    apart, in rows or columns, share a group, so a speckled mask gives few groups) starts as its own
    bounding box; two boxes are merged into their common bounding box while that costs no more than
    computing both, where a box of ``h x w`` cells costs ``(h + 2 context) (w + 2 context)`` (the cells
    plus the context a network reads around them); beyond ``max_boxes`` the merges that cost least are
    made anyway.

    Args:
        allowed: ``(rows, cols)`` bool.
        context: cells of context each box is computed with, on every side (>= 0).
        max_boxes: at most this many boxes (>= 1).

    Returns:
        the boxes in raster order of their top-left cell; empty when no cell is true.

    Example:
        >>> a = np.zeros((4, 12), bool); a[1, 1] = a[2, 10] = True
        >>> cell_boxes(a), cell_boxes(a, context=5)
        ([(1, 2, 1, 2), (2, 3, 10, 11)], [(1, 3, 1, 11)])
    """
    from scipy import ndimage

    allowed = np.asarray(allowed, dtype=bool)
    if allowed.ndim != 2:
        raise ValueError(f"allowed must be a (rows, cols) mask, got shape {allowed.shape}")
    if context < 0 or max_boxes < 1:
        raise ValueError(f"context must be >= 0 and max_boxes >= 1, got {context} and {max_boxes}")
    near = ndimage.maximum_filter(allowed, size=2 * context + 1) if context > 0 else allowed
    labels, _ = ndimage.label(near, structure=np.ones((3, 3), dtype=bool))  # groups closer than 2 context
    labels[~allowed] = 0  # each group's box: its true cells' bounding box
    boxes = [(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndimage.find_objects(labels) if s is not None]

    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    while len(b) > 1:
        cost = (b[:, 1] - b[:, 0] + 2 * context) * (b[:, 3] - b[:, 2] + 2 * context)
        u = np.stack(
            [
                np.minimum.outer(b[:, 0], b[:, 0]),
                np.maximum.outer(b[:, 1], b[:, 1]),
                np.minimum.outer(b[:, 2], b[:, 2]),
                np.maximum.outer(b[:, 3], b[:, 3]),
            ]
        )
        extra = (u[1] - u[0] + 2 * context) * (u[3] - u[2] + 2 * context) - cost[:, None] - cost[None, :]
        extra[np.tril_indices(len(b))] = np.iinfo(np.int64).max  # each pair once, never a box with itself
        i, j = np.unravel_index(int(np.argmin(extra)), extra.shape)
        if extra[i, j] > 0 and len(b) <= max_boxes:
            break
        merged = u[:, i, j]
        b = np.vstack([np.delete(b, [i, j], axis=0), merged[None]])
    boxes = [tuple(int(v) for v in row) for row in b]
    return sorted(boxes)

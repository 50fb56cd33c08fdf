"""Transforms of the MONAI Label app: load a field (or a region of it), points -> result JSON, (H, W) -> (W, H).

The bundle's own pieces do the rest: ``NormalizeHEStaind`` (its ``preprocessing``), ``DetectionMapToPointsd``
(its ``postprocessing``) and :class:`mssn_monai.transforms.PointsToDisksd` (the discs that
``monailabel.transform.post.FindContoursd`` turns into polygons for QuPath and the Digital Slide Archive).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from mssn_monai.io import read_image_rgb
from mssn_monai.ops.intensity import hwc_to_chw_float

__all__ = ["CONTEXT_PX", "LoadFieldd", "ToRegiond", "DetectionsToResultd", "ToXYd", "region_of"]


def region_of(data: Mapping[Hashable, Any]) -> tuple[list[int], list[int]]:
    """``location`` ``[x, y]`` and ``size`` ``[w, h]`` of a request (``[0, 0]`` each when absent)."""
    location = [int(v) for v in (data.get("location") or (0, 0))][:2]
    size = [int(v) for v in (data.get("size") or (0, 0))][:2]
    return location, size


CONTEXT_PX = 128
"""Pixels read around a requested region (rounded out to the stride-4 grid): more than the FNR's patch
context (60 px), the vote's patches (50 px) and the candidate spacing (about 16 px), so the detections
inside a region equal those of the whole field there, whatever the tile grid."""


class LoadFieldd(MapTransform):
    """Load an H&E field as ``(3, H, W)`` float32 in ``[0, 1]``, as the bundle's ``LoadRGBd`` does.

    The source is a file path or an ``(H, W, 3|4)`` uint8 array (a region a remote datastore such as DSA
    already read). For a path, a request with ``size`` ``[w, h]`` (both > 0) is a region at ``location``
    ``[x, y]``: it is read with :data:`CONTEXT_PX` of context on every side (within the field), and
    ``context`` ``[dx, dy, w, h]`` records where the region lies in what was read, so
    :class:`ToRegiond` can cut the results back to it. With a ``normalizer`` (the bundle's stain
    normaliser) the stain statistics are fitted on the whole field (a regular subsample, as ``detect``
    does) and applied to what was read, so a tile is normalised as the whole field is. Without a region
    the whole field is read and ``location`` is set to ``[0, 0]``. For an array, ``location`` is kept: it
    is the region's origin in the slide, which the results are shifted by.
    """

    def __init__(
        self, keys: KeysCollection = "image", normalizer: Any = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = normalizer

    def _normalise(self, whole: np.ndarray, part: np.ndarray) -> torch.Tensor:
        field = hwc_to_chw_float(part)
        if self.normalizer is None:
            return field
        fitted = self.normalizer.fit_field(whole)
        return field if fitted is None else torch.as_tensor(self.normalizer.apply(field, fitted))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = d[key]
            location, size = region_of(d)
            context = None
            if isinstance(source, (str, os.PathLike)):
                d[f"{key}_path"] = str(source)
                whole = read_image_rgb(source)
                h, w = whole.shape[:2]
                if min(size) > 0:
                    x, y = location
                    if x < 0 or y < 0 or x >= w or y >= h:
                        raise ValueError(f"region at {location} lies outside the {w}x{h} field")
                    x0, y0 = max(0, (x - CONTEXT_PX) // 4 * 4), max(0, (y - CONTEXT_PX) // 4 * 4)
                    x1, y1 = min(w, x + size[0] + CONTEXT_PX), min(h, y + size[1] + CONTEXT_PX)
                    context = [x - x0, y - y0, min(size[0], w - x), min(size[1], h - y)]
                    image = whole[y0:y1, x0:x1]
                else:
                    location, size, image = [0, 0], [0, 0], whole
                d[key] = self._normalise(whole, image).contiguous()
            else:
                image = np.asarray(source)
                if image.ndim != 3 or image.shape[-1] not in (3, 4):
                    raise ValueError(f"an image array must be (H, W, 3|4) RGB(A), got {list(image.shape)}")
                image = np.ascontiguousarray(image[..., :3].astype(np.uint8, copy=False))
                d[key] = self._normalise(image, image).contiguous()
            d["location"], d["size"] = location, size
            if context is not None:
                d["context"] = context
            else:
                d.pop("context", None)
        return d


class ToRegiond(MapTransform):
    """Cut a region read with context (:class:`LoadFieldd`'s ``context``) back to the region itself.

    The detection map ``keys`` (``(..., H, W)``) is cropped to the region, and the points of
    ``points_key`` (``(N, 3)`` x, y, score in what was read) outside it are dropped, the others shifted
    into the region. Without ``context`` in the data, nothing changes.
    """

    def __init__(self, keys: KeysCollection = "pred", points_key: str = "points", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.points_key = points_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        context = d.get("context")
        if not context:
            return d
        dx, dy, w, h = (int(v) for v in context)
        for key in self.key_iterator(d):
            d[key] = d[key][..., dy : dy + h, dx : dx + w]
        if self.points_key in d:
            pts = d[self.points_key]
            arr = pts.detach().cpu().numpy() if isinstance(pts, torch.Tensor) else np.asarray(pts, dtype=np.float64)
            arr = arr.reshape(-1, 3)
            inside = (arr[:, 0] >= dx) & (arr[:, 0] < dx + w) & (arr[:, 1] >= dy) & (arr[:, 1] < dy + h)
            d[self.points_key] = arr[inside] - np.array([dx, dy, 0.0])
        return d


class DetectionsToResultd(MapTransform):
    """Put the ``(N, 3)`` points (``x, y, probability``) into the result JSON, shifted by ``location``.

    Writes ``d[result]["detections"]`` (``[[x, y, score], ...]`` in slide pixels, descending score) and
    ``d[result]["count"]``.
    """

    def __init__(self, keys: KeysCollection = "points", result: str = "result", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.result = result

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        location, _ = region_of(d)
        for key in self.key_iterator(d):
            points = np.asarray(d[key], dtype=np.float64).reshape(-1, 3)
            rows = [[float(x) + location[0], float(y) + location[1], float(p)] for x, y, p in points]
            result = dict(d.get(self.result) or {})
            result["detections"] = rows
            result["count"] = len(rows)
            d[self.result] = result
        return d


class ToXYd(MapTransform):
    """``(H, W)`` label image -> ``(W, H)`` uint8 numpy, the axis order ``FindContoursd`` expects.

    ``FindContoursd`` swaps the first two axes before tracing (the pathology app's loader reads images
    as ``(W, H, C)``), so an ``(H, W)`` image must be transposed first or x and y come out swapped.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if value.ndim != 2:
                raise ValueError(f"{key}: expected an (H, W) label image, got {list(value.shape)}")
            d[key] = np.ascontiguousarray(value.T).astype(np.uint8, copy=False)
        return d

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

__all__ = ["LoadFieldd", "DetectionsToResultd", "ToXYd", "region_of"]


def region_of(data: Mapping[Hashable, Any]) -> tuple[list[int], list[int]]:
    """``location`` ``[x, y]`` and ``size`` ``[w, h]`` of a request (``[0, 0]`` each when absent)."""
    location = [int(v) for v in (data.get("location") or (0, 0))][:2]
    size = [int(v) for v in (data.get("size") or (0, 0))][:2]
    return location, size


class LoadFieldd(MapTransform):
    """Load an H&E field as ``(3, H, W)`` float32 in ``[0, 1]``, as the bundle's ``LoadRGBd`` does.

    The source is an image path (PNG, JPEG, TIFF, ...: :func:`mssn_monai.io.read_image_rgb`) or an
    ``(H, W, 3|4)`` uint8 array (a region a remote datastore such as DSA already read). For a path, a
    request with ``size`` ``[w, h]`` (both > 0) reads only the region at ``location`` ``[x, y]``; without
    it the whole field is read and ``location`` is set to ``[0, 0]``. For an array, ``location`` is kept:
    it is the region's origin in the slide, which the results are shifted by.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = d[key]
            location, size = region_of(d)
            if isinstance(source, (str, os.PathLike)):
                d[f"{key}_path"] = str(source)
                image = read_image_rgb(source)
                if min(size) > 0:
                    x, y = location
                    if x < 0 or y < 0 or x >= image.shape[1] or y >= image.shape[0]:
                        h, w = image.shape[:2]
                        raise ValueError(f"region at {location} lies outside the {w}x{h} field")
                    image = image[y : y + size[1], x : x + size[0]]
                else:
                    location, size = [0, 0], [0, 0]
            else:
                image = np.asarray(source)
                if image.ndim != 3 or image.shape[-1] not in (3, 4):
                    raise ValueError(f"an image array must be (H, W, 3|4) RGB(A), got {list(image.shape)}")
                image = image[..., :3].astype(np.uint8, copy=False)
            d["location"], d["size"] = location, size
            field = torch.from_numpy(np.require(image, requirements=["C", "W"]))
            d[key] = field.permute(2, 0, 1).float().div_(255.0).contiguous()
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

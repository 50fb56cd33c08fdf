"""Post-processing of the detector's output: detection map -> points -> files, discs for viewers.

:class:`mssn_monai.networks.detector.MSSNDetector` returns a ``(1, H, W)`` *detection map* per image
(the calibrated probability at each detected centre pixel, 0 elsewhere). These transforms turn it
into ``(N, 3)`` rows ``x, y, probability`` (:class:`DetectionMapToPointsd`), write the per-image files
the ``detect`` command writes (:class:`SaveDetectionsd`), or draw each detection as a small filled disc
(:class:`PointsToDisksd`), the ``(1, H, W)`` uint8 label image MONAI Label turns into polygons and
MONAI Deploy writes as an image.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from mssn_monai.constants import DEFAULT_SPACING_UM
from mssn_monai.keys import DetectionKeys, error_key, path_key

__all__ = [
    "DetectionMapToPoints",
    "DetectionMapToPointsd",
    "PointsToDisks",
    "PointsToDisksd",
    "SaveDetectionsd",
]


class DetectionMapToPoints(Transform):
    """``(1, H, W)`` or ``(H, W)`` detection map -> ``(N, 3)`` float64 numpy rows ``x, y, probability``.

    Every non-zero pixel is one detection; rows by descending probability, ties in raster order.
    """

    def __call__(self, detection_map: Any) -> np.ndarray:
        from mssn_monai.networks.detector import detection_map_to_points

        return detection_map_to_points(torch.as_tensor(detection_map).detach().cpu()).numpy()


class DetectionMapToPointsd(MapTransform):
    """Dictionary version of :class:`DetectionMapToPoints`.

    Args:
        keys: detection-map keys (default ``"pred"``).
        points_key: where to store the points; ``None`` replaces the map itself.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = DetectionKeys.PRED,
        points_key: str | None = DetectionKeys.POINTS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.points_key = points_key
        self.converter = DetectionMapToPoints()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.points_key or key] = self.converter(d[key])
        return d


class PointsToDisks(Transform):
    """Draw points as filled discs of value 1 on a ``(1, H, W)`` uint8 label image.

    Args:
        radius_px: disc radius in pixels (pixels whose centre lies within it are set).
    """

    def __init__(self, radius_px: float = 8.0) -> None:
        if not radius_px > 0:
            raise ValueError(f"radius_px must be > 0, got {radius_px!r}.")
        self.radius_px = float(radius_px)

    def __call__(self, points: Any, spatial_shape: tuple[int, int]) -> np.ndarray:
        """``points``: ``(N, 2+)`` rows starting ``x, y`` in pixels; returns ``(1, H, W)`` uint8."""
        h, w = (int(v) for v in spatial_shape)
        out = np.zeros((1, h, w), dtype=np.uint8)
        r = int(np.ceil(self.radius_px))
        dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
        disc = dy**2 + dx**2 <= self.radius_px**2
        pts = np.asarray(points, dtype=np.float64)
        pts = pts.reshape(-1, pts.shape[-1]) if pts.size else np.zeros((0, 2))
        for x, y in pts[:, :2]:
            cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
            if y0 < y1 and x0 < x1:
                out[0, y0:y1, x0:x1] |= disc[y0 - cy + r : y1 - cy + r, x0 - cx + r : x1 - cx + r]
        return out


class PointsToDisksd(MapTransform):
    """Dictionary version of :class:`PointsToDisks`: a detection map (or points) -> disc label image.

    Args:
        keys: keys holding a ``(1, H, W)`` detection map (converted with :class:`DetectionMapToPoints`)
            and replaced by the ``(1, H, W)`` uint8 disc image.
        radius_px: disc radius in pixels.
        points_key: also store the ``(N, 3)`` points under this key (``None``: don't).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = DetectionKeys.PRED,
        radius_px: float = 8.0,
        points_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.drawer = PointsToDisks(radius_px)
        self.converter = DetectionMapToPoints()
        self.points_key = points_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            points = self.converter(d[key])
            d[key] = self.drawer(points, tuple(np.shape(d[key])[-2:]))
            if self.points_key:
                d[self.points_key] = points
        return d


class SaveDetectionsd(MapTransform):
    """Write one image's detections as the ``detect`` command does: ``<stem>.csv``, ``.geojson``, ``.json``.

    ``<stem>`` is the stem of the image file (read from ``"<image_key>_path"``, which
    :class:`mssn_monai.transforms.LoadRGBd` records). Files are written atomically.

    Args:
        keys: the points key (``(N, 3)`` rows ``x, y, probability``), default ``"points"``.
        output_dir: output folder (created).
        spacing_um: pixel spacing in um/px, for the count per mm^2.
        settings: extra settings recorded in the JSON summary (e.g. whether stain normalisation ran).
        detector: an ``MSSNDetector`` whose :meth:`~MSSNDetector.settings` (read at each call, so after
            its weights are loaded) are recorded too.
        image_key: key of the image (for its path, its size and the overlay).
        overlay: also write ``<stem>_overlay.png`` (detections drawn on the original image).
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = DetectionKeys.POINTS,
        output_dir: str | os.PathLike = "./eval",
        spacing_um: float = DEFAULT_SPACING_UM,
        settings: Mapping[str, Any] | None = None,
        detector: Any = None,
        image_key: str = "image",
        overlay: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.spacing_um = float(spacing_um)
        self.settings = dict(settings or {})
        self.detector = detector
        self.image_key = image_key
        self.overlay = bool(overlay)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from mssn_monai.io import read_image_rgb
        from mssn_monai.outputs import write_detection_outputs

        d = dict(data)
        if d.get(error_key(self.image_key)):  # the loader skipped this file (and said why): nothing to write
            return d
        path = d.get(path_key(self.image_key))
        if path is None:
            raise KeyError(f"SaveDetectionsd needs '{path_key(self.image_key)}' (the image file) in the data.")
        path = Path(str(path))
        shape = tuple(np.shape(d[self.image_key])[-2:])
        settings = {**(self.detector.settings() if self.detector is not None else {}), **self.settings}
        for key in self.key_iterator(d):
            image = read_image_rgb(path) if self.overlay else None
            result = {DetectionKeys.DETECTIONS: np.asarray(d[key], dtype=np.float64).reshape(-1, 3)}
            d[f"{key}_summary"] = write_detection_outputs(
                self.output_dir / path.stem, image, result, self.spacing_um, settings, self.overlay, size=shape
            )
        return d

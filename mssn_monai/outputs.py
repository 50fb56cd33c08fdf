"""One image's detection files, written the same way by the CLI, the bundle's transforms and the apps.

Per image ``<out>/<stem>``: ``.csv`` rows ``x,y,score``, ``.geojson`` (QuPath points), ``.json`` (the
summary: size, spacing, count, mitoses per mm^2, settings in force) and optionally ``_overlay.png``.
Every file is written atomically (:func:`mssn_monai.io.atomic_write`), and the JSON summary last, so
an image whose ``.json`` exists has all its files. Outputs are named by the rule of
:func:`mssn_monai.io.output_stems`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mssn_monai.constants import MATCH_RADIUS_UM
from mssn_monai.io import detections_to_geojson, write_detections_csv, write_image, write_json
from mssn_monai.keys import DetectionKeys

__all__ = ["SYNTHETIC_WEIGHTS_NOTE", "write_detection_outputs"]

SYNTHETIC_WEIGHTS_NOTE = (
    "weights trained on synthetic data only unless retrained: not for use on real slides as shipped"
)
"""Recorded in every JSON summary."""


def write_detection_outputs(
    stem: Path,
    image: np.ndarray | None,
    result: Mapping[str, np.ndarray],
    spacing: float,
    settings: Mapping[str, Any],
    overlay: bool = False,
    size: tuple[int, int] | None = None,
) -> dict:
    """Write one image's detections as ``<stem>.csv``, ``.geojson``, ``.json`` (and ``_overlay.png``).

    Args:
        stem: output path without suffix (``out/<image stem>``).
        image: ``(H, W, 3)`` uint8 RGB (for the size, and the overlay); may be ``None`` without overlay
            when ``size`` is given.
        result: the detector's result: ``"detections"`` ``(M, 3)`` x, y, probability; ``"candidates"``
            when known.
        spacing: pixel spacing in um/px (for the count per mm^2).
        settings: the thresholds used, recorded in the summary.
        overlay: also draw the detections on the image as a PNG.
        size: ``(H, W)`` of the image when ``image`` is not given.

    Returns:
        the JSON summary.
    """
    det = np.asarray(result[DetectionKeys.DETECTIONS], dtype=np.float64).reshape(-1, 3)
    if image is None and (size is None or overlay):
        raise ValueError("write_detection_outputs needs the image (for an overlay) or its size.")
    h, w = image.shape[:2] if image is not None else (int(size[0]), int(size[1]))
    area_mm2 = w * h * spacing**2 / 1e6
    candidates = result.get(DetectionKeys.CANDIDATES)
    summary = {
        "image": stem.name,
        "width": w,
        "height": h,
        "spacing_um_per_px": spacing,
        "area_mm2": area_mm2,
        "count": len(det),
        "mitoses_per_mm2": len(det) / area_mm2 if area_mm2 > 0 else 0.0,
        "candidates": len(candidates) if candidates is not None else None,
        "settings": dict(settings),
        "detections": [[round(float(x), 2), round(float(y), 2), float(p)] for x, y, p in det],
        "note": SYNTHETIC_WEIGHTS_NOTE,
    }
    write_detections_csv(stem.parent / f"{stem.name}.csv", det)
    write_json(stem.parent / f"{stem.name}.geojson", detections_to_geojson(det, stem.name))
    if overlay:
        from mssn_monai.visualize import draw_points

        picture = draw_points(
            image, [(det, (0, 200, 0), MATCH_RADIUS_UM / spacing)], labels=[[f"{p:.2f}" for p in det[:, 2]]]
        )
        write_image(stem.parent / f"{stem.name}_overlay.png", picture)
    # the summary last: its presence says the image's other files are complete (a killed run leaves none)
    write_json(stem.parent / f"{stem.name}.json", summary)
    return summary

"""The app's logic that needs no MONAI Label: labels in, model versions, uncertainty, ASAP XML, merged detections.

Kept free of ``monailabel`` imports so the project's own test suite (``tests/test_label_app.py``) covers it
without the label environment; the MONAI Label classes in ``lib.datastore``, ``lib.trainers`` and
``lib.activelearning`` are thin wrappers around it.

* **Labels**: a final label of the datastore is read by :func:`mssn_monai.data.annotations.read_point_labels`
  (ASAP XML, QuPath GeoJSON, DSA JSON; one class-name rule, see that module): :func:`check_label_file`
  at upload, :func:`datalist_records` at training.
* **Versions**: every training run writes a whole bundle ``v0001``, ``v0002``, ... under the versions
  folder (:func:`next_version_dir`); :func:`newest_bundle` is what ``/infer`` serves (the configured bundle
  while there is none). Older versions are kept.
* **Uncertainty**: :func:`field_uncertainty` runs the detector on a field and scores every candidate's
  calibrated probability against the operating threshold with
  :func:`mssn_monai.metrics.detection_uncertainty` (per mm²), the distance measured in units of the
  vote (:data:`VOTE_WIDTH`), so a steep calibration after training does not make every field look sure.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mssn_monai.constants import DEFAULT_SPACING_UM
from mssn_monai.data.annotations import PointLabels, read_point_labels
from mssn_monai.io import asap_xml as write_asap_document

__all__ = [
    "VERSION_PATTERN",
    "UNCERTAINTY_KEY",
    "check_label_file",
    "datalist_records",
    "write_datalist",
    "version_dirs",
    "newest_bundle",
    "next_version_dir",
    "field_uncertainty",
    "most_uncertain",
    "asap_xml",
    "write_asap_xml",
    "merge_detections",
]

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
"""Folder names of trained versions (``v0001``, ...); anything else under the versions folder is ignored."""

UNCERTAINTY_KEY = "mssn_uncertainty"
"""Key of an image's info in the datastore where the scoring task stores ``{"value", "model", "ts"}``."""


# ---------------------------------------------------------------- labels in


def check_label_file(path: str | os.PathLike, name: str | None = None) -> PointLabels:
    """Read a submitted label file, or raise one ``ValueError`` line naming it (``name``, else its path).

    Raises:
        ValueError: not ASAP XML, QuPath GeoJSON or DSA JSON, or malformed (also for a missing file).
    """
    try:
        return read_point_labels(path)
    except (ValueError, FileNotFoundError, OSError) as e:
        msg = str(e).removeprefix(f"{path}: ")
        raise ValueError(f"bad label file {name or path}: {msg}") from e


def datalist_records(
    items: Iterable[tuple[str, str, float | None]], default_spacing: float = DEFAULT_SPACING_UM
) -> list[dict[str, Any]]:
    """``(image path, label path, spacing or None)`` -> datalist records ``{image, mitoses, mimics, spacing}``.

    Raises:
        ValueError: a bad label file (the message names it).
    """
    records = []
    for image, label, spacing in items:
        points = check_label_file(label)
        spacing = float(spacing) if spacing else float(default_spacing)
        records.append({"image": str(image), **points.to_record(), "spacing": spacing})
    return records


def write_datalist(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, section: str = "training") -> Path:
    """Write ``{section: records}`` as JSON (absolute image paths) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({section: list(records)}, indent=1), encoding="utf-8")
    return path


# ---------------------------------------------------------------- model versions


def version_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete trained versions under ``root`` (``vNNNN`` with ``models/model.pt``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = VERSION_PATTERN.match(p.name)
        if m and p.is_dir() and (p / "models" / "model.pt").is_file() and (p / "configs" / "inference.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def newest_bundle(root: str | os.PathLike, default: str | os.PathLike) -> Path:
    """The newest trained version under ``root``, else ``default`` (the configured bundle)."""
    versions = version_dirs(root)
    return versions[-1] if versions else Path(default)


def next_version_dir(root: str | os.PathLike) -> Path:
    """The folder the next trained version goes to: one above the highest ``vNNNN`` present (complete or not)."""
    root = Path(root)
    numbers = [0]
    if root.is_dir():
        numbers += [int(m.group(1)) for p in root.iterdir() if (m := VERSION_PATTERN.match(p.name))]
    return root / f"v{max(numbers) + 1:04d}"


# ---------------------------------------------------------------- uncertainty


VOTE_WIDTH = 0.25
"""Distance from the operating point, in units of the vote (mean ``C1 - C0``, in ``[-1, 1]``), at which a
candidate counts ``1/e`` in :func:`field_uncertainty`."""


def field_uncertainty(
    fields: Any, image: np.ndarray, spacing: float, vote_width: float = VOTE_WIDTH
) -> dict[str, float]:
    """The detector's uncertainty on one field, per mm² (:func:`mssn_monai.metrics.detection_uncertainty`).

    Every stage-1 candidate counts, voted or not (one just below the vote's boundary is as unsure as one
    just above). The distance to the operating threshold is taken on the logit scale divided by the
    calibration's slope ``a`` (``p = sigmoid(a * votes + b)``), i.e. in units of the vote: training
    makes the calibration steeper (``a`` from about 10 to 100), which on the plain logit scale made every
    field's score collapse towards 0 and the choice between fields arbitrary.

    Args:
        fields: the bundle's :class:`~mssn_monai.networks.detector.FieldDetector`.
        image: ``(H, W, 3)`` uint8 field.
        spacing: its pixel spacing in um/px.
        vote_width: vote distance at which a candidate counts ``1/e``.

    Returns:
        ``{"value": uncertainty per mm², "candidates": stage-1 candidates, "threshold": operating
        threshold, "area_mm2": field area}``.
    """
    from mssn_monai.keys import DetectionKeys
    from mssn_monai.metrics import detection_uncertainty, image_area_mm2

    out = fields(image, float(spacing))
    probability = np.asarray(out[DetectionKeys.PROBABILITY], dtype=np.float64).reshape(-1)
    threshold = float(fields.detector.operating_threshold())
    threshold = min(max(threshold, 1e-3), 1.0 - 1e-3)  # an uncalibrated model stores 0
    slope = abs(float(fields.detector.fpr.calibration[0]))
    area = image_area_mm2(int(image.shape[1]), int(image.shape[0]), float(spacing))
    value = detection_uncertainty(probability, threshold, area, width=max(slope, 1e-6) * float(vote_width))
    return {"value": value, "candidates": int(probability.size), "threshold": threshold, "area_mm2": area}


def most_uncertain(scores: Mapping[str, float]) -> str | None:
    """The id with the highest uncertainty (ties: the smallest id), ``None`` for no scores."""
    finite = {k: float(v) for k, v in scores.items() if v is not None and math.isfinite(float(v))}
    if not finite:
        return None
    return min(finite, key=lambda k: (-finite[k], k))


# ---------------------------------------------------------------- infer outputs


def _hex(color: Any) -> str:
    if isinstance(color, str):
        return color
    if color is None:
        return "#000000"
    r, g, b = (int(c) for c in list(color)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def asap_xml(res_json: Mapping[str, Any]) -> str:
    """ASAP XML of MONAI Label's result (``name``, ``description``, ``model``, ``location``, ``size``,
    ``annotations``: per tile ``{"annotation": {"labels", "elements": [{"label", "contours"}]}}``).

    The same document as ``monailabel.utils.others.pathology.create_asap_annotations_xml`` but built with
    :mod:`xml.etree.ElementTree`, so every attribute is escaped (``H&E`` -> ``H&amp;E``) and any XML parser
    (Java's ``DocumentBuilder`` in the QuPath extension) reads it.
    """
    location = list(res_json.get("location") or (0, 0))[:2]
    size = list(res_json.get("size") or (0, 0))[:2]
    attributes = {
        "Name": str(res_json.get("name") or ""),
        "Description": str(res_json.get("description") or ""),
        "Model": str(res_json.get("model") or ""),
        "X": str(location[0]),
        "Y": str(location[1]),
        "W": str(size[0]),
        "H": str(size[1]),
    }
    annotations: list[dict[str, Any]] = []
    groups: dict[str, str] = {}
    for tile in res_json.get("annotations") or []:
        annotation = (tile or {}).get("annotation") or {}
        colors = annotation.get("labels") or {}
        for element in annotation.get("elements") or []:
            label = str(element.get("label"))
            color = _hex(colors.get(label))
            groups[label] = color
            for contour in element.get("contours") or []:
                annotations.append(
                    {"name": label, "type": "Polygon", "group": label, "color": color, "coordinates": contour}
                )
    return write_asap_document(annotations, groups, attributes)


def write_asap_xml(res_json: Mapping[str, Any], path: str | os.PathLike) -> tuple[str, int]:
    """Write :func:`asap_xml` to ``path``; return the path and the number of polygons."""
    text = asap_xml(res_json)
    Path(path).write_text(text, encoding="utf-8")
    return str(path), text.count("<Annotation ")


def merge_detections(tiles: Iterable[Mapping[str, Any] | None]) -> list[list[float]]:
    """One ``[[x, y, score], ...]`` list of every tile's ``detections`` (slide pixels), descending score,
    exact duplicates (a point reported by two tiles) once."""
    seen, rows = set(), []
    for tile in tiles:
        for row in (tile or {}).get("detections") or []:
            key = (float(row[0]), float(row[1]))
            if key not in seen:
                seen.add(key)
                rows.append([float(v) for v in row])
    rows.sort(key=lambda r: (-r[2], r[1], r[0]))
    return rows

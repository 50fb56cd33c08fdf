"""Point labels from the annotation files viewers write: ASAP XML, QuPath GeoJSON, DSA (HistomicsUI) JSON.

What a pathologist submits through MONAI Label (the QuPath extension sends ASAP XML; QuPath exports
GeoJSON; the Digital Slide Archive stores its own annotation JSON) is read here as two point sets in
level-0 pixels: mitoses and mimics (non-mitotic figures that look like one). Every shape counts once,
at one point: a point at itself, a polygon, rectangle or closed line at its centroid (area-weighted;
the vertex mean for a degenerate one), an open line at its vertex mean. ASAP ``PointSet`` and GeoJSON
``MultiPoint`` shapes count once per point.

Class names map to a kind by one rule (:func:`label_kind`): the name is lower-cased, ``_`` and ``-``
become spaces and repeated spaces one; then :data:`MITOSIS_NAMES` -> mitosis, :data:`MIMIC_NAMES` ->
mimic; any other name (a tumour region, "Other") is counted in ``ignored`` and not used.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = [
    "MITOSIS_NAMES",
    "MIMIC_NAMES",
    "PointLabels",
    "label_kind",
    "read_point_labels",
    "parse_asap_xml",
    "parse_geojson",
    "parse_dsa",
]

MITOSIS_NAMES: Final[frozenset[str]] = frozenset(
    {"mitotic figure", "mitotic figures", "mitosis", "mitoses", "mitotic", "mf"}
)
"""Normalised class names read as a mitosis (MIDOG's "mitotic figure", TUPAC/ICPR's "mitosis")."""

MIMIC_NAMES: Final[frozenset[str]] = frozenset(
    {
        "non mitotic figure", "non mitotic figures", "nonmitotic figure", "not mitotic figure", "mimic",
        "mimics", "not mitosis", "non mitosis", "nonmitosis", "hard negative", "imposter", "impostor",
        "mitotic like figure", "mitosis like figure", "mitotic figure lookalike",
    }
)  # fmt: skip
"""Normalised class names read as a mimic (MIDOG's "non-mitotic figure", the "hard negative" of MITOS-ATYPIA)."""


def _normalise(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", str(name).strip().lower())).strip()


def label_kind(name: str | None) -> str | None:
    """``"mitosis"``, ``"mimic"`` or ``None`` (not a label this detector learns from) for a class name."""
    if name is None:
        return None
    key = _normalise(name)
    if key in MITOSIS_NAMES:
        return "mitosis"
    if key in MIMIC_NAMES:
        return "mimic"
    return None


@dataclass
class PointLabels:
    """Mitoses and mimics of one image, ``(N, 2)`` float64 ``x, y`` in level-0 pixels each.

    ``ignored`` counts the shapes whose class is neither (by class name; ``""`` for no class).
    """

    mitoses: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    mimics: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    ignored: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_shapes(cls, shapes: Iterable[tuple[str | None, list[tuple[float, float]]]]) -> PointLabels:
        """From ``(class name, points)`` pairs (each point already one label)."""
        found: dict[str, list[tuple[float, float]]] = {"mitosis": [], "mimic": []}
        ignored: Counter[str] = Counter()
        for name, points in shapes:
            kind = label_kind(name)
            if kind is None:
                ignored[str(name or "")] += len(points)
            else:
                found[kind].extend(points)
        arr = {k: np.asarray(v, dtype=np.float64).reshape(-1, 2) for k, v in found.items()}
        return cls(arr["mitosis"], arr["mimic"], dict(ignored))

    def to_record(self) -> dict[str, list[list[float]]]:
        """The datalist's point keys: ``{"mitoses": [[x, y], ...], "mimics": [...]}``."""
        return {"mitoses": self.mitoses.tolist(), "mimics": self.mimics.tolist()}


def _finite_points(coords: Any, where: str) -> np.ndarray:
    try:
        pts = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: coordinates are not numbers ({e})") from e
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] < 2:
        raise ValueError(f"{where}: expected a list of [x, y] points, got shape {list(pts.shape)}")
    pts = pts[:, :2]
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{where}: coordinates must be finite numbers")
    return pts


def _centroid(ring: np.ndarray) -> tuple[float, float]:
    """Area-weighted centroid of a closed ring ``(N, 2)`` (shoelace), or the vertex mean when degenerate."""
    if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3:
        m = ring.mean(axis=0)
        return float(m[0]), float(m[1])
    x, y = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-9 * max(1.0, float(np.ptp(x) * np.ptp(y))):
        m = ring.mean(axis=0)
        return float(m[0]), float(m[1])
    return float(((x + x1) * cross).sum() / (6 * area)), float(((y + y1) * cross).sum() / (6 * area))


# ---------------------------------------------------------------- ASAP XML


def parse_asap_xml(text: str | bytes, where: str = "ASAP XML") -> PointLabels:
    """ASAP's ``<ASAP_Annotations>``: each ``<Annotation Type=... PartOfGroup=...>`` with ``<Coordinates>``.

    ``Dot`` is one point, ``PointSet`` one per coordinate, ``Polygon``, ``Rectangle`` and ``Spline``
    their centroid. The class is ``PartOfGroup``, else the annotation's ``Name``.

    Raises:
        ValueError: not well-formed XML, no ``Annotation`` elements under an ``Annotations`` root, or a
            coordinate that is not a finite number (the message starts with ``where``).
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"{where}: not well-formed XML ({e})") from e
    if root.tag != "ASAP_Annotations" and root.find(".//Annotations") is None:
        raise ValueError(f"{where}: not an ASAP annotation file (root <{root.tag}>, no <Annotations>)")
    shapes = []
    for i, ann in enumerate(root.iter("Annotation")):
        kind = (ann.get("Type") or "").strip().lower()
        name = ann.get("PartOfGroup")
        if name in (None, "", "None"):
            name = ann.get("Name")
        coords = sorted(ann.iter("Coordinate"), key=lambda c: float(c.get("Order", 0) or 0))
        try:
            raw = [(float(c.get("X", "nan")), float(c.get("Y", "nan"))) for c in coords]
        except ValueError as e:
            raise ValueError(f"{where}: annotation {i}: a coordinate is not a number ({e})") from e
        if not raw:
            continue
        pts = _finite_points(raw, f"{where}: annotation {i}")
        if kind in ("dot", "pointset", "point"):
            shapes.append((name, [(float(x), float(y)) for x, y in pts]))
        else:  # polygon, rectangle, spline, ...: one label at the centroid
            shapes.append((name, [_centroid(pts)]))
    return PointLabels.from_shapes(shapes)


# ---------------------------------------------------------------- GeoJSON (QuPath)


def _geojson_class(props: Any) -> str | None:
    if not isinstance(props, dict):
        return None
    cls = props.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return props.get("name") or props.get("label")


def _geometry_points(geom: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(geom, dict) or "type" not in geom:
        raise ValueError(f"{where}: a feature without a geometry")
    kind, coords = geom["type"], geom.get("coordinates")
    if kind == "GeometryCollection":
        return [p for i, g in enumerate(geom.get("geometries") or []) for p in _geometry_points(g, f"{where}[{i}]")]
    if kind == "Point":
        (x, y), *_ = _finite_points([coords], where)
        return [(float(x), float(y))]
    if kind == "MultiPoint":
        return [(float(x), float(y)) for x, y in _finite_points(coords, where)]
    if kind == "Polygon":
        return [_centroid(_finite_points(coords[0] if coords else [], where))]
    if kind == "MultiPolygon":  # one shape: the area-weighted centre of its outer rings
        rings = [_finite_points(p[0] if p else [], where) for p in coords or []]
        if not rings:
            raise ValueError(f"{where}: an empty MultiPolygon")
        return [_centroid(max(rings, key=lambda r: abs(_ring_area(r))))]
    if kind in ("LineString", "MultiLineString"):
        pts = _finite_points(coords if kind == "LineString" else [p for line in coords or [] for p in line], where)
        m = pts.mean(axis=0)
        return [(float(m[0]), float(m[1]))]
    raise ValueError(f"{where}: unsupported geometry type {kind!r}")


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum() / 2.0)


def parse_geojson(obj: Any, where: str = "GeoJSON") -> PointLabels:
    """A ``FeatureCollection``, one ``Feature`` or a list of features (QuPath's export), class from
    ``properties.classification.name`` (or a plain ``classification`` string, else ``name``).

    Raises:
        ValueError: not GeoJSON features, or a geometry without finite coordinates.
    """
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        features = obj.get("features")
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        features = [obj]
    elif isinstance(obj, list):
        features = obj
    else:
        raise ValueError(f"{where}: not GeoJSON (expected a FeatureCollection, a Feature or a list of features)")
    if not isinstance(features, list):
        raise ValueError(f"{where}: 'features' must be a list")
    shapes = []
    for i, feat in enumerate(features):
        if not isinstance(feat, dict):
            raise ValueError(f"{where}: feature {i} is not an object")
        shapes.append(
            (_geojson_class(feat.get("properties")), _geometry_points(feat.get("geometry"), f"{where}: feature {i}"))
        )
    return PointLabels.from_shapes(shapes)


# ---------------------------------------------------------------- DSA / HistomicsUI


def _dsa_elements(obj: Any) -> Iterator[dict]:
    docs = obj if isinstance(obj, list) else [obj]
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("annotation"), dict):
            doc = doc["annotation"]
        if not isinstance(doc, dict) or not isinstance(doc.get("elements"), list):
            raise ValueError("not a DSA annotation (expected 'elements', or 'annotation' holding them)")
        yield from doc["elements"]


def parse_dsa(obj: Any, where: str = "DSA annotation") -> PointLabels:
    """Digital Slide Archive annotation JSON: ``{"annotation": {"elements": [...]}}``, the bare
    ``{"elements": [...]}`` or a list of those. ``point`` elements at their ``center``, ``polyline`` at
    its centroid (closed) or vertex mean, ``rectangle`` / ``ellipse`` / ``circle`` at their ``center``;
    the class is ``label.value``, else ``group``.

    Raises:
        ValueError: not a DSA document, or an element without finite coordinates.
    """
    shapes = []
    try:
        elements = list(_dsa_elements(obj))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    for i, el in enumerate(elements):
        at = f"{where}: element {i}"
        if not isinstance(el, dict):
            raise ValueError(f"{at} is not an object")
        label = el.get("label")
        name = label.get("value") if isinstance(label, dict) else label if isinstance(label, str) else None
        name = name or el.get("group")
        kind = el.get("type")
        if kind in ("point", "rectangle", "ellipse", "circle", "arrow"):
            (x, y), *_ = _finite_points([el.get("center") or (el.get("points") or [None])[0]], at)
            shapes.append((name, [(float(x), float(y))]))
        elif kind == "polyline":
            pts = _finite_points(el.get("points"), at)
            if el.get("closed", False):
                shapes.append((name, [_centroid(pts)]))
            else:
                m = pts.mean(axis=0)
                shapes.append((name, [(float(m[0]), float(m[1]))]))
        else:
            shapes.append((None, []))  # heatmaps, pixelmaps, ...: not labels
    return PointLabels.from_shapes(shapes)


# ---------------------------------------------------------------- any of them, from a file


def read_point_labels(path: str | os.PathLike) -> PointLabels:
    """Read a label file in whichever of the three formats it is (by content: XML, GeoJSON, DSA).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file in none of the formats, or a malformed one; one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file")
    data = path.read_bytes()
    head = data.lstrip()[:1]
    if head == b"<":
        return parse_asap_xml(data, str(path))
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: neither XML nor JSON ({e})") from e
    is_dsa = isinstance(obj, dict) and ("annotation" in obj or "elements" in obj)
    is_dsa = is_dsa or (isinstance(obj, list) and bool(obj) and isinstance(obj[0], dict) and "annotation" in obj[0])
    return parse_dsa(obj, str(path)) if is_dsa else parse_geojson(obj, str(path))

"""MIDOG 2021 / 2022 / MIDOG++ (one COCO-like JSON database for all images).

Layout::

    <root>/MIDOG++.json          (or MIDOG.json, or any file given as ``annotations``)
    <root>/001.tiff ...          images, directly under root or anywhere below it

The JSON holds ``images`` (``file_name``, ``id``, ``width``, ``height``, optional ``tumor_type``),
``categories`` (1 = ``mitotic figure``, 2 = ``not mitotic figure``, the hard negatives) and
``annotations`` (``bbox``, ``category_id``, ``image_id``).

**``bbox`` is ``[x1, y1, x2, y2]``, not COCO's ``[x, y, w, h]``**; the point is the box centre
``((x1 + x2) / 2, (y1 + y2) / 2)``, i.e. ``(x1 + 25, y1 + 25)`` for MIDOG's 50x50 boxes.

Decisions:
    - Categories are matched by name (``mitotic figure`` -> mitoses; ``not mitotic figure``,
      ``non-mitotic figure``, ``hard negative``, ``imposter`` / ``impostor``, ``mitotic figure lookalike``
      -> mimics); when the JSON has no category names, ids 1 and 2 are used. Annotations of any other
      declared category are ignored; an undeclared category id is an error.
    - ``group`` is the image's ``case`` / ``case_id`` / ``slide`` / ``slide_id`` field when one exists,
      else the image's file name (each MIDOG image is its own case).
    - Every image listed in the JSON must be found (an incomplete download is an error, not a smaller
      data set), and its ``width`` / ``height`` must match the file.
    - Spacing defaults to 0.25 um/px for every image: the JSON does not give it, and the MIDOG scanners
      differ (0.23 / 0.23 / 0.25 / 0.26 um/px), so pass ``spacing`` when all images come from one scanner.
    - An image's ``tumor_type`` (MIDOG++) is its record's ``domain``, so validation images of every tumour
      type weigh the same when the operating threshold is chosen; without it there is no ``domain``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from mssn_monai.data.formats._common import check_point, check_root, check_spacing, make_record
from mssn_monai.io import image_size, read_json
from mssn_monai.keys import DatalistKeys

__all__ = ["MIDOG_SPACING_UM", "MIDOG_DATABASES", "read_midog"]

MIDOG_SPACING_UM = 0.25
"""Default pixel spacing in um/px (the MIDOG scanners range from 0.23 to 0.26)."""

MIDOG_DATABASES = ("MIDOG++.json", "MIDOG.json")
"""JSON databases looked for under ``root`` when ``annotations`` is not given, in this order."""

_MITOSIS_NAMES = {"mitotic figure", "mitosis", "mitoses", "mitotic figures"}
_MIMIC_NAMES = {
    "not mitotic figure",
    "non mitotic figure",
    "nonmitotic figure",
    "hard negative",
    "imposter",
    "impostor",
    "mitotic figure lookalike",
    "mitotic like figure",
}
_GROUP_FIELDS = ("case", "case_id", "slide", "slide_id")


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("-", " ").replace("_", " ").split())


def _category_roles(categories: Any, db: Path) -> dict[Any, str | None]:
    """Map category id -> ``"mitoses"`` / ``"mimics"`` / ``None`` (ignored)."""
    if not isinstance(categories, list):
        categories = []
    named = [c for c in categories if isinstance(c, dict) and "id" in c and isinstance(c.get("name"), str)]
    if not named:
        return {1: "mitoses", 2: "mimics"}
    roles: dict[Any, str | None] = {}
    for c in named:
        name = _norm(c["name"])
        roles[c["id"]] = "mitoses" if name in _MITOSIS_NAMES else "mimics" if name in _MIMIC_NAMES else None
    if "mitoses" not in roles.values():
        names = ", ".join(repr(c["name"]) for c in named)
        raise ValueError(f"{db}: no category named 'mitotic figure' among the categories ({names})")
    return roles


def _find_database(root: Path, annotations: str | os.PathLike | None) -> Path:
    if annotations is not None:
        db = Path(annotations).expanduser()
        if not db.is_file():
            raise FileNotFoundError(f"{db}: MIDOG annotation database not found")
        return db
    for name in MIDOG_DATABASES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{root}: no MIDOG annotation database ({' or '.join(MIDOG_DATABASES)}) in it; pass annotations=<file.json>"
    )


class _ImageFinder:
    """Locate ``file_name`` directly under ``root``, else anywhere below it (indexed once, on first need)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, list[Path]] | None = None

    def __call__(self, file_name: str, db: Path) -> Path:
        direct = self.root / file_name
        if direct.is_file():
            return direct
        if self._index is None:
            self._index = defaultdict(list)
            for p in sorted(self.root.rglob("*")):
                if p.is_file():
                    self._index[p.name].append(p)
        hits = self._index.get(Path(file_name).name, [])
        if not hits:
            raise FileNotFoundError(f"{db}: image {file_name!r} not found under {self.root}")
        if len(hits) > 1:
            raise ValueError(f"{db}: image {file_name!r} is ambiguous under {self.root}: {[str(h) for h in hits]}")
        return hits[0]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def read_midog(
    root: str | os.PathLike, annotations: str | os.PathLike | None = None, spacing: float | None = None
) -> list[dict[str, Any]]:
    """Read the MIDOG images and their mitotic figures / hard negatives into datalist records.

    Example: an annotation with ``"bbox": [10, 20, 60, 70]`` and category ``mitotic figure`` gives the
    mitosis ``[35.0, 45.0]``.

    Args:
        root: folder holding the images (directly or in sub-folders) and, by default, the JSON database.
        annotations: the JSON database (default: ``MIDOG++.json`` or ``MIDOG.json`` in ``root``).
        spacing: pixel spacing in um/px for every image (default 0.25; the MIDOG scanners have
            0.23 / 0.23 / 0.25 / 0.26).

    Returns:
        One record per image listed in the JSON, in JSON order: ``{"image", "mitoses", "mimics",
        "spacing", "group"}``, and ``"domain"`` (its ``tumor_type``) where the JSON gives one.

    Raises:
        FileNotFoundError: ``root``, the database or a listed image does not exist.
        ValueError: the database is not valid JSON or lists no image; an entry without the expected
            fields; a bbox that is not ``[x1, y1, x2, y2]`` with ``x1 <= x2``, ``y1 <= y2``; a centre outside
            its image; an image whose size differs from the JSON or that cannot be read.
    """
    spacing = check_spacing(spacing, MIDOG_SPACING_UM)
    root_path = check_root(root, "MIDOG")
    db = _find_database(root_path, annotations)
    data = read_json(db)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{db}: not a MIDOG/COCO database (expected a JSON object with an 'images' list)")
    if not data["images"]:
        raise ValueError(f"{db}: no images listed (looked for images[].file_name; root {root_path})")
    roles = _category_roles(data.get("categories"), db)
    find = _ImageFinder(root_path)

    images: dict[Any, dict[str, Any]] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or "id" not in entry:
            raise ValueError(f"{db}: images[{i}] needs 'file_name' (a string) and 'id'")
        if entry["id"] in images:
            raise ValueError(f"{db}: images[{i}] repeats id {entry['id']!r}")
        path = find(entry["file_name"], db)
        size = image_size(path)
        expected = (entry.get("width"), entry.get("height"))
        if expected != (None, None) and expected != size:
            raise ValueError(
                f"{db}: images[{i}] ({entry['file_name']}) says {expected[0]}x{expected[1]} px but {path} is "
                f"{size[0]}x{size[1]} px (width x height)"
            )
        group = next((str(entry[k]) for k in _GROUP_FIELDS if entry.get(k) is not None), entry["file_name"])
        images[entry["id"]] = {"path": path, "size": size, "group": group, "mitoses": [], "mimics": []}
        if entry.get("tumor_type") is not None:
            images[entry["id"]]["domain"] = str(entry["tumor_type"])

    annotations_list = data.get("annotations", [])
    if not isinstance(annotations_list, list):
        raise ValueError(f"{db}: 'annotations' must be a list")
    for i, ann in enumerate(annotations_list):
        where = f"{db}: annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise ValueError(f"{where}: needs 'image_id', 'category_id' and 'bbox'")
        if ann["image_id"] not in images:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not among the images")
        if ann["category_id"] not in roles:
            raise ValueError(f"{where}: category_id {ann['category_id']!r} is not among the categories")
        role = roles[ann["category_id"]]
        if role is None:
            continue
        bbox = ann.get("bbox")
        try:
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError("expected 4 numbers")
            x1, y1, x2, y2 = (_number(v) for v in bbox)
            if x2 < x1 or y2 < y1:
                raise ValueError("x2 < x1 or y2 < y1 (MIDOG boxes are [x1, y1, x2, y2], not [x, y, w, h])")
        except ValueError as e:
            raise ValueError(f"{where}: bad bbox {bbox!r}, expected [x1, y1, x2, y2] ({e})") from e
        image = images[ann["image_id"]]
        x, y = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        check_point(x, y, image["size"], image["path"], where)
        image[role].append([x, y])

    value = spacing if spacing is not None else MIDOG_SPACING_UM
    return [
        make_record(
            im["path"],
            im["mitoses"],
            im["mimics"],
            value,
            im["group"],
            **({DatalistKeys.DOMAIN: im["domain"]} if "domain" in im else {}),
        )  # fmt: skip
        for im in images.values()
    ]

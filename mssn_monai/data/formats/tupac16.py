"""AMIDA13 / TUPAC16 auxiliary mitosis data set (and its alternative labels).

Layout::

    <root>/mitoses_image_data/<case>/<nn>.tif             images, or spread over
    <root>/mitoses_image_data_part_1/<case>/<nn>.tif      ..._part_1, _part_2, _part_3
    <root>/mitoses_ground_truth/<case>/<nn>.csv           mitoses, lines "row,col" (y first!), no header
    <root>/nonmitoses_ground_truth/<case>/<nn>.csv        optional (alternative labels): mimics, same layout

Cases ``01``-``23`` hold 2000x2000 tiles, cases ``24``-``73`` one image each; about 0.25 um/px.

Decisions:
    - Rows are ``row,col`` on disk and become ``(x, y) = (col, row)`` here.
    - An image without a ground-truth CSV has no mitoses: that is how the data set encodes empty tiles.
      The ``mitoses_ground_truth`` folder itself must exist, though (without it every image would read
      as empty), and a CSV without an image is an error (an incomplete copy of the images).
    - Without ``nonmitoses_ground_truth`` every image has no mimics.
    - ``group`` is the case folder name; the same ``<case>/<nn>`` in two image folders is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mssn_monai.data.formats._common import (
    check_point,
    check_root,
    check_spacing,
    make_record,
    read_number_rows,
)
from mssn_monai.io import image_size

__all__ = ["TUPAC16_SPACING_UM", "read_tupac16"]

TUPAC16_SPACING_UM = 0.25
"""Default pixel spacing in um/px (about 0.25 for the auxiliary set's 40x images)."""

_IMAGE_DIRS = ("mitoses_image_data", "mitoses_image_data_part_*")
_MITOSES_DIR = "mitoses_ground_truth"
_MIMICS_DIR = "nonmitoses_ground_truth"


def _find_images(root: Path) -> dict[tuple[str, str], Path]:
    folders = sorted({d for pattern in _IMAGE_DIRS for d in root.glob(pattern) if d.is_dir()})
    images: dict[tuple[str, str], Path] = {}
    for folder in folders:
        for image in sorted(folder.glob("*/*")):
            if image.suffix.lower() not in (".tif", ".tiff") or not image.is_file():
                continue
            key = (image.parent.name, image.stem)
            if key in images:
                raise ValueError(f"{image}: image {key[0]}/{key[1]} also found as {images[key]}")
            images[key] = image
    return images


def _read_labels(
    folder: Path, images: dict[tuple[str, str], Path], sizes: dict[Path, tuple[int, int]]
) -> dict[tuple[str, str], list[list[float]]]:
    points: dict[tuple[str, str], list[list[float]]] = {}
    for csv in sorted(folder.glob("*/*.csv")):
        key = (csv.parent.name, csv.stem)
        image = images.get(key)
        if image is None:
            raise ValueError(
                f"{csv}: no image {key[0]}/{key[1]}.tif for it in mitoses_image_data or mitoses_image_data_part_*"
            )
        if image not in sizes:
            sizes[image] = image_size(image)
        rows = read_number_rows(csv, "row,col", ncols=(2,))
        for lineno, _text, (row, col) in rows:
            check_point(col, row, sizes[image], image, f"{csv}:{lineno}")
        points[key] = [[col, row] for _lineno, _text, (row, col) in rows]
    return points


def read_tupac16(
    root: str | os.PathLike, annotations: str | os.PathLike | None = None, spacing: float | None = None
) -> list[dict[str, Any]]:
    """Read the AMIDA13 / TUPAC16 auxiliary mitosis images below ``root`` into datalist records.

    Example: a line ``30,10`` in ``mitoses_ground_truth/01/01.csv`` gives the mitosis ``[10.0, 30.0]``
    (x = column 10, y = row 30).

    Args:
        root: folder holding ``mitoses_image_data`` (or ``mitoses_image_data_part_1..3``) and, unless
            ``annotations`` is given, ``mitoses_ground_truth``.
        annotations: folder holding ``mitoses_ground_truth`` (and optionally ``nonmitoses_ground_truth``),
            e.g. an alternative label set; default ``root``.
        spacing: pixel spacing in um/px for every image (default 0.25).

    Returns:
        One record per image, sorted by case and name: ``{"image", "mitoses", "mimics", "spacing",
        "group": case}``.

    Raises:
        FileNotFoundError: ``root``, ``annotations`` or the ``mitoses_ground_truth`` folder does not exist.
        ValueError: no ``<case>/<nn>.tif`` image found; a CSV line that does not parse as ``row,col``
            (``file:line``); a CSV without an image; a point outside its image; an unreadable image.
    """
    spacing = check_spacing(spacing, TUPAC16_SPACING_UM)
    root_path = check_root(root, "TUPAC16")
    labels_root = root_path if annotations is None else check_root(annotations, "TUPAC16 annotations")
    images = _find_images(root_path)
    if not images:
        raise ValueError(
            f"{root_path}: no TUPAC16 images found (looked for mitoses_image_data/<case>/<nn>.tif and "
            "mitoses_image_data_part_*/<case>/<nn>.tif below it)"
        )
    mitoses_dir = labels_root / _MITOSES_DIR
    if not mitoses_dir.is_dir():
        raise FileNotFoundError(f"{mitoses_dir}: no such folder (TUPAC16 ground truth, <case>/<nn>.csv with row,col)")
    sizes: dict[Path, tuple[int, int]] = {}
    mitoses = _read_labels(mitoses_dir, images, sizes)
    mimics_dir = labels_root / _MIMICS_DIR
    mimics = _read_labels(mimics_dir, images, sizes) if mimics_dir.is_dir() else {}
    records = []
    for key in sorted(images):
        image = images[key]
        if image not in sizes:  # no label file: still check the image can be read
            sizes[image] = image_size(image)
        records.append(
            make_record(
                image,
                mitoses.get(key, []),
                mimics.get(key, []),
                spacing if spacing is not None else TUPAC16_SPACING_UM,
                key[0],
            )
        )
    return records

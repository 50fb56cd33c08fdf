"""ICPR 2012 MITOS contest (Aperio and Hamamatsu scanners).

Layout::

    <root>/A00_v2/A00_01.bmp     one high-power field (Aperio, 2084x2084 px)
    <root>/A00_v2/A00_01.csv     its mitoses
    <root>/A00_v2/A00_01.jpg     an overlay (ignored)
    ...  A00_v2 ... A04_v2 (Aperio), H00_v2 ... H04_v2 (Hamamatsu)

Each CSV line is ONE mitosis, listing every pixel of it as interleaved integers ``x1,y1,x2,y2,...``
(x = column); the mitosis is placed at the mean of those pixels. There are no annotated mimics.

Decisions:
    - Every ``.bmp`` below ``root`` is a field; ``root`` may also be one slide folder.
    - A missing CSV is an error naming the field: the contest ships one CSV per field, so a missing one
      means an incomplete copy, and reading it as "no mitoses" would teach the model false negatives.
      An empty CSV means the field has no mitosis.
    - ``group`` is the slide folder (path relative to ``root``, e.g. ``A00_v2``).
    - The scanner, hence the default spacing, comes from the first letter of the slide folder
      (``A`` Aperio 0.2456 um/px, ``H`` Hamamatsu 0.2273 um/px), or else of the field name. It is also
      each record's ``domain`` (``aperio`` / ``hamamatsu``), so validation fields of both scanners weigh
      the same when the operating threshold is chosen.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mssn_monai.data.formats._common import (
    check_point,
    check_root,
    check_spacing,
    make_record,
    read_number_rows,
    reject_annotations,
    scanner_spacing,
)
from mssn_monai.io import image_size
from mssn_monai.keys import DatalistKeys

__all__ = ["ICPR2012_SCANNERS", "ICPR2012_SPACING_UM", "read_icpr2012"]

ICPR2012_SPACING_UM = {"A": 0.2456, "H": 0.2273}
"""Default pixel spacing in um/px by scanner letter: ``A`` = Aperio XT, ``H`` = Hamamatsu NanoZoomer."""

ICPR2012_SCANNERS = {"A": "aperio", "H": "hamamatsu"}
"""Each record's ``domain`` by scanner letter (as MITOS-ATYPIA-14's records name theirs)."""

_SCANNER_RE = re.compile(r"^([AH])\d\d", re.IGNORECASE)


def _scanner(image: Path) -> str | None:
    """``A`` (Aperio) or ``H`` (Hamamatsu) from the folder or file name; ``None`` when neither tells."""
    for name in (image.parent.name, image.stem):
        match = _SCANNER_RE.match(name)
        if match:
            return match.group(1).upper()
    return None


def _default_spacing(image: Path, scanner: str | None) -> float:
    expected = f"folder {image.parent.name!r}: A.. for Aperio or H.. for Hamamatsu, e.g. A00_v2"
    return scanner_spacing(scanner, ICPR2012_SPACING_UM, image, expected)


def _read_field(image: Path, root: Path, spacing: float | None) -> dict[str, Any]:
    csv = image.with_suffix(".csv")
    if not csv.is_file():
        raise FileNotFoundError(
            f"{image}: no annotation file {csv.name} beside it (ICPR 2012 ships one CSV per field; "
            "write an empty CSV for a field without mitoses)"
        )
    size = image_size(image)
    mitoses: list[list[float]] = []
    for lineno, _text, values in read_number_rows(csv, "interleaved pixel coordinates x1,y1,x2,y2,..."):
        if len(values) % 2:
            raise ValueError(
                f"{csv}:{lineno}: odd number of integers ({len(values)}), expected interleaved x1,y1,x2,y2,... pairs"
            )
        xs, ys = values[0::2], values[1::2]
        for x, y in zip(xs, ys, strict=True):
            check_point(x, y, size, image, f"{csv}:{lineno}")
        mitoses.append([sum(xs) / len(xs), sum(ys) / len(ys)])
    folder = image.parent
    group = folder.relative_to(root).as_posix() if folder != root else folder.name
    scanner = _scanner(image)
    domain = {DatalistKeys.DOMAIN: ICPR2012_SCANNERS[scanner]} if scanner is not None else {}
    return make_record(
        image, mitoses, [], spacing if spacing is not None else _default_spacing(image, scanner), group, **domain
    )


def read_icpr2012(
    root: str | os.PathLike, annotations: str | os.PathLike | None = None, spacing: float | None = None
) -> list[dict[str, Any]]:
    """Read the ICPR 2012 MITOS fields below ``root`` into datalist records.

    Example: a line ``10,20,12,20,11,23`` in ``A00_01.csv`` gives the mitosis ``[11.0, 21.0]``.

    Args:
        root: folder holding the slide folders (``A00_v2``, ``H00_v2``, ...) or one slide folder.
        annotations: not used (each field's CSV lies beside it); must be ``None``.
        spacing: pixel spacing in um/px for every field (default: 0.2456 for ``A..`` slides,
            0.2273 for ``H..`` slides).

    Returns:
        One record per field, sorted by path: ``{"image": absolute path, "mitoses": [[x, y], ...],
        "mimics": [], "spacing": um/px, "group": slide folder, "domain": "aperio" | "hamamatsu"}`` (no
        ``domain`` when the names do not tell the scanner).

    Raises:
        FileNotFoundError: ``root`` does not exist, or a field has no CSV.
        ValueError: no ``.bmp`` field below ``root``; a CSV line that does not parse or has an odd number
            of integers (``file:line``); a pixel outside its field; an unreadable image; an unknown scanner
            letter without ``spacing``.
    """
    reject_annotations(annotations, "icpr2012", "the CSV beside each field")
    spacing = check_spacing(spacing, ICPR2012_SPACING_UM["A"])
    root_path = check_root(root, "ICPR 2012")
    images = sorted(p for p in root_path.rglob("*") if p.suffix.lower() == ".bmp" and p.is_file())
    if not images:
        raise ValueError(
            f"{root_path}: no ICPR 2012 fields found (looked for <slide>/<field>.bmp below it, e.g. A00_v2/A00_01.bmp)"
        )
    return [_read_field(image, root_path, spacing) for image in images]

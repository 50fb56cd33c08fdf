"""Helpers shared by the dataset readers: root and spacing checks, image size, strict CSV rows, bounds.

Every reader converts its dataset's own conventions at this boundary, so what leaves
:mod:`mssn_monai.data.formats` is always a point ``(x, y)`` = (column, row) in level-0 pixels (floats),
with the pixel spacing in um/px. Errors name the file (and the line) they come from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mssn_monai.keys import DatalistKeys

__all__ = [
    "CsvRow",
    "check_root",
    "check_spacing",
    "reject_annotations",
    "read_number_rows",
    "check_point",
    "make_record",
]

CsvRow = tuple[int, str, list[float]]
"""One parsed CSV line: ``(line number starting at 1, raw text, numbers)``."""


def check_root(root: str | os.PathLike, dataset: str) -> Path:
    """Return ``root`` as an absolute path after checking it is an existing folder.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: {dataset} dataset root not found")
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: {dataset} dataset root is not a directory")
    return path.resolve()


def check_spacing(spacing: float | None, default: float) -> float | None:
    """Return ``spacing`` as a float (``None`` stays ``None``, meaning "use ``default``").

    Raises:
        ValueError: ``spacing`` is not a finite positive number of um/px.
    """
    if spacing is None:
        return None
    try:
        value = float(spacing)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spacing must be a positive number of um/px (e.g. {default}), got {spacing!r}") from e
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"spacing must be a positive number of um/px (e.g. {default}), got {spacing!r}")
    return value


def reject_annotations(annotations: str | os.PathLike | None, dataset: str, where: str) -> None:
    """Refuse an ``annotations`` argument for a format that keeps its labels beside the images.

    Raises:
        ValueError: ``annotations`` is given.
    """
    if annotations is not None:
        raise ValueError(
            f"{dataset} reads its annotations from {where}; an annotations file is not used, got {str(annotations)!r}"
        )


def read_number_rows(path: Path, expected: str, ncols: Sequence[int] | None = None) -> list[CsvRow]:
    """Read a header-less CSV of numbers: one row per non-blank line, cells separated by commas.

    A trailing comma is tolerated; anything else that is not a finite number is an error.

    Args:
        path: the CSV file.
        expected: what a row should look like, for error messages (e.g. ``"x,y,confidence"``).
        ncols: allowed numbers of cells per row (``None``: any).

    Returns:
        ``[(line number, line text, [numbers...]), ...]`` in file order; blank lines are skipped.

    Raises:
        FileNotFoundError: missing file.
        ValueError: a row does not parse, has a non-finite value or the wrong number of cells;
            the message is ``"<file>:<line>: ..."``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text CSV file ({e})") from e
    rows: list[CsvRow] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        cells = [c.strip() for c in stripped.split(",")]
        if len(cells) > 1 and cells[-1] == "":
            cells.pop()
        try:
            values = [float(c) for c in cells]
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: cannot parse {stripped!r} as {expected}") from e
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{path}:{lineno}: non-finite value in {stripped!r}, expected {expected}")
        if ncols is not None and len(values) not in ncols:
            raise ValueError(f"{path}:{lineno}: expected {expected}, got {len(values)} values in {stripped!r}")
        rows.append((lineno, stripped, values))
    return rows


def scanner_spacing(scanner: str | None, spacings: dict[str, float], where: Path, expected: str) -> float:
    """The default spacing of ``scanner`` in ``spacings``; a clear error when the names did not tell it.

    Args:
        scanner: the key a reader found in the file or folder names, or ``None``.
        spacings: um/px by scanner key.
        where: the file or folder named in the error.
        expected: what names would have told it (for the error message).
    """
    if scanner is None:
        raise ValueError(f"{where}: cannot tell the scanner ({expected}); pass spacing explicitly")
    return spacings[scanner]


def check_point(x: float, y: float, size: tuple[int, int], image: Path, where: str) -> None:
    """Check that ``(x, y)`` lies on the image: ``0 <= x <= width`` and ``0 <= y <= height``.

    The far border is included so that continuous coordinates (and 1-based pixel indices) of an
    object touching the last column or row are accepted.

    Args:
        x: column in pixels.
        y: row in pixels.
        size: ``(width, height)`` of the image in pixels.
        image: the image, for the message.
        where: the annotation's source (``file:line`` or a JSON entry), for the message.

    Raises:
        ValueError: the point is outside the image.
    """
    width, height = size
    if not (0.0 <= x <= width and 0.0 <= y <= height):
        raise ValueError(
            f"{where}: point (x={x:g}, y={y:g}) is outside the image {image} of {width}x{height} px (width x height)"
        )


def make_record(
    image: Path,
    mitoses: list[list[float]],
    mimics: list[list[float]],
    spacing: float,
    group: str,
    **extra: Any,
) -> dict[str, Any]:
    """One datalist record with the keys of :class:`~mssn_monai.data.datalist.DatalistKeys`."""
    record: dict[str, Any] = {
        DatalistKeys.IMAGE: str(image),
        DatalistKeys.MITOSES: mitoses,
        DatalistKeys.MIMICS: mimics,
        DatalistKeys.SPACING: float(spacing),
        DatalistKeys.GROUP: str(group),
    }
    record.update(extra)
    return record

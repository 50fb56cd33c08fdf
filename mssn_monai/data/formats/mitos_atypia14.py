"""ICPR 2014 MITOS-ATYPIA-14 contest (Aperio and Hamamatsu scanners); also our synthetic data's layout.

Layout::

    <root>/Training Aperio/A03/frames/x40/A03_00Aa.tiff      one x40 frame (Aperio, 1539x1376 px)
    <root>/Training Aperio/A03/mitosis/A03_00Aa_mitosis.csv      its mitoses
    <root>/Training Aperio/A03/mitosis/A03_00Aa_not_mitosis.csv  its annotated non-mitoses (mimics)
    ...  top folders "<Training|Testing> <Aperio|Hamamatsu>"

CSV lines are ``x,y,confidence`` (x = column, no header); the confidence says how strongly the
pathologists agreed (1.0 = all agreed). It is kept per point in ``mitosis_confidence`` /
``mimic_confidence``; a line ``x,y`` without it reads as confidence 1.0.

Decisions:
    - ``root`` may be the dataset root, one top folder (``Training Aperio``) or one slide folder.
    - Only ``frames/x40`` is read (x10 / x20 are downsampled copies of the same fields).
    - A slide without a ``mitosis/`` folder is unlabelled (the released Testing sets): its frames are
      skipped with a warning, never read as "no mitoses". In a labelled slide, a frame without
      ``<frame>_mitosis.csv`` is an error naming the frame; a missing ``_not_mitosis.csv`` means no mimics.
    - ``group`` is ``"<top folder>/<slide>"`` (slide names repeat between Training and Testing).
    - The scanner, hence the default spacing, comes from the folder names: a path part containing
      ``Aperio`` (0.2455 um/px) or ``Hamamatsu`` (0.2273 um/px), or else a slide named ``A..`` / ``H..``.
      It is also each record's ``domain`` (``aperio`` / ``hamamatsu``), so validation frames of both
      scanners weigh the same when the operating threshold is chosen.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
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

__all__ = ["MITOS_ATYPIA14_SPACING_UM", "read_mitos_atypia14"]

logger = logging.getLogger(__name__)

MITOS_ATYPIA14_SPACING_UM = {"aperio": 0.2455, "hamamatsu": 0.2273}
"""Default pixel spacing in um/px of the x40 frames by scanner (Aperio ScanScope XT, Hamamatsu NanoZoomer)."""

_SLIDE_RE = re.compile(r"^([AH])\d\d", re.IGNORECASE)


def _scanner(slide: Path) -> str | None:
    """``aperio`` or ``hamamatsu`` from the folder names or the slide name (A.. / H..); ``None`` when neither tells."""
    for part in (slide, *slide.parents):
        name = part.name.lower()
        for scanner in MITOS_ATYPIA14_SPACING_UM:
            if scanner in name:
                return scanner
    match = _SLIDE_RE.match(slide.name)
    if match:
        return "aperio" if match.group(1).upper() == "A" else "hamamatsu"
    return None


def _read_points(csv: Path, image: Path, size: tuple[int, int]) -> tuple[list[list[float]], list[float]]:
    points: list[list[float]] = []
    confidence: list[float] = []
    for lineno, _text, values in read_number_rows(csv, "x,y,confidence", ncols=(2, 3)):
        x, y = values[0], values[1]
        check_point(x, y, size, image, f"{csv}:{lineno}")
        points.append([x, y])
        confidence.append(values[2] if len(values) == 3 else 1.0)
    return points, confidence


def _read_frame(frame: Path, spacing: float | None) -> dict[str, Any]:
    slide = frame.parents[2]
    labels = slide / "mitosis"
    mitosis_csv = labels / f"{frame.stem}_mitosis.csv"
    if not mitosis_csv.is_file():
        raise FileNotFoundError(
            f"{frame}: no ground truth {mitosis_csv} (slide {slide.name} is labelled, so every frame needs "
            "one; write an empty file for a frame without mitoses)"
        )
    size = image_size(frame)
    mitoses, mitosis_confidence = _read_points(mitosis_csv, frame, size)
    mimics: list[list[float]] = []
    mimic_confidence: list[float] = []
    not_mitosis_csv = labels / f"{frame.stem}_not_mitosis.csv"
    if not_mitosis_csv.is_file():
        mimics, mimic_confidence = _read_points(not_mitosis_csv, frame, size)
    scanner = _scanner(slide)
    if spacing is None:
        expected = "no 'Aperio' or 'Hamamatsu' in the folder names, slide not named A.. or H.."
        spacing = scanner_spacing(scanner, MITOS_ATYPIA14_SPACING_UM, slide, expected)
    return make_record(
        frame,
        mitoses,
        mimics,
        spacing,
        f"{slide.parent.name}/{slide.name}",
        **{DatalistKeys.MITOSIS_CONFIDENCE: mitosis_confidence, DatalistKeys.MIMIC_CONFIDENCE: mimic_confidence},
        **({DatalistKeys.DOMAIN: scanner} if scanner is not None else {}),
    )


def read_mitos_atypia14(
    root: str | os.PathLike, annotations: str | os.PathLike | None = None, spacing: float | None = None
) -> list[dict[str, Any]]:
    """Read the labelled MITOS-ATYPIA-14 x40 frames below ``root`` into datalist records.

    Example: a line ``30.5,12,0.8`` in ``A03_00Aa_mitosis.csv`` gives the mitosis ``[30.5, 12.0]`` with
    confidence ``0.8``.

    Args:
        root: the dataset root (holding ``Training Aperio`` ...), one such top folder, or one slide folder.
        annotations: not used (the ground truth lies in each slide's ``mitosis/`` folder); must be ``None``.
        spacing: pixel spacing in um/px for every frame (default: 0.2455 for Aperio, 0.2273 for Hamamatsu).

    Returns:
        One record per labelled frame, sorted by path: ``{"image", "mitoses", "mimics", "spacing", "group",
        "mitosis_confidence", "mimic_confidence", "domain"}`` (``domain``: ``aperio`` or ``hamamatsu``,
        absent when the names do not tell the scanner).

    Raises:
        FileNotFoundError: ``root`` does not exist; a frame of a labelled slide has no ``_mitosis.csv``.
        ValueError: no labelled ``<slide>/frames/x40/*.tiff`` below ``root``; a CSV line that does not parse
            (``file:line``); a point outside its frame; an unreadable frame; an unknown scanner without
            ``spacing``.
    """
    reject_annotations(annotations, "mitos-atypia-14", "each slide's mitosis/ folder")
    spacing = check_spacing(spacing, MITOS_ATYPIA14_SPACING_UM["aperio"])
    root_path = check_root(root, "MITOS-ATYPIA-14")
    frames = sorted(
        p
        for p in root_path.rglob("*")
        if p.suffix.lower() in (".tif", ".tiff")
        and p.parent.name.lower() == "x40"
        and p.parent.parent.name.lower() == "frames"
        and p.is_file()
    )
    unlabelled = Counter(f.parents[2] for f in frames if not (f.parents[2] / "mitosis").is_dir())
    for slide, n in sorted(unlabelled.items()):
        logger.warning("%s: no mitosis/ folder, skipping its %d unlabelled frame(s)", slide, n)
    labelled = [f for f in frames if f.parents[2] not in unlabelled]
    if not labelled:
        found = f"found {len(frames)} frame(s), all in slides without a mitosis/ folder" if frames else "found none"
        raise ValueError(
            f"{root_path}: no labelled MITOS-ATYPIA-14 frames (looked for <slide>/frames/x40/<frame>.tiff with "
            f"<slide>/mitosis/<frame>_mitosis.csv below it; {found})"
        )
    return [_read_frame(frame, spacing) for frame in labelled]

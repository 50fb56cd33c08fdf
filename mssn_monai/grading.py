"""The Nottingham mitotic score (1-3) of a mitotic count, for the area it was counted in.

Elston and Ellis (Histopathology 1991; 19: 403-410, Table 2) scored the count in 10 high-power fields of
a Leitz Ortholux microscope, field diameter 0.59 mm, field area 0.274 mm² (2.74 mm² in all): 0-9
mitoses score 1, 10-19 score 2, 20 or more score 3. Because fields differ between microscopes, the UK
dataset (Royal College of Pathologists, *Pathology reporting of breast disease in surgical excision
specimens*, and the NHS Breast Screening Programme guidelines before it) tables the cut-offs for field
diameters 0.40-0.69 mm, obtained by scaling the 1991 cut-offs by the field area; e.g. a 0.44 mm field
(0.152 mm²) scores 0-5 / 6-10 / 11 or more. :func:`score_thresholds` applies that scaling to any
counted area: the lowest count of score 2 is ``round(10 * A / 2.74)`` and of score 3
``round(20 * A / 2.74)`` for a total area ``A`` in mm² (half-way rounded up), which gives the two rows
quoted above exactly. Check the table your laboratory uses before relying on a score.

A whole-slide hotspot of 2 mm² is 10 fields of 0.200 mm² (diameter 0.505 mm): score 2 from 7 mitoses,
score 3 from 15.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = [
    "ELSTON_ELLIS_AREA_MM2",
    "ELSTON_ELLIS_CUTOFFS",
    "ScoreThresholds",
    "score_thresholds",
    "mitotic_score",
    "field_diameter_mm",
]

ELSTON_ELLIS_AREA_MM2 = 10 * 0.274
"""Ten fields of the Leitz Ortholux (diameter 0.59 mm, 0.274 mm² each) Elston and Ellis counted in."""

ELSTON_ELLIS_CUTOFFS = (10, 20)
"""Lowest counts of score 2 and score 3 in :data:`ELSTON_ELLIS_AREA_MM2`."""


class ScoreThresholds(NamedTuple):
    """Lowest count of score 2 (``score2_from``) and of score 3 (``score3_from``) for one counted area."""

    area_mm2: float
    score2_from: int
    score3_from: int


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def score_thresholds(area_mm2: float) -> ScoreThresholds:
    """Cut-offs for a count made in ``area_mm2`` (e.g. 10 fields: ``10 * pi * (d / 2)**2``).

    Raises:
        ValueError: a non-finite or non-positive area.

    Example:
        >>> score_thresholds(10 * 0.274)
        ScoreThresholds(area_mm2=2.74, score2_from=10, score3_from=20)
    """
    if not (math.isfinite(area_mm2) and area_mm2 > 0):
        raise ValueError(f"area_mm2 must be a finite number > 0, got {area_mm2!r}.")
    ratio = area_mm2 / ELSTON_ELLIS_AREA_MM2
    lo, hi = ELSTON_ELLIS_CUTOFFS
    s2 = max(1, _round_half_up(lo * ratio))
    s3 = max(s2 + 1, _round_half_up(hi * ratio))
    return ScoreThresholds(float(area_mm2), s2, s3)


def mitotic_score(count: int, area_mm2: float) -> int:
    """The Nottingham mitotic score (1, 2 or 3) of ``count`` mitoses counted in ``area_mm2``.

    Example:
        >>> mitotic_score(6, 10 * math.pi * 0.22**2), mitotic_score(11, 10 * math.pi * 0.22**2)
        (2, 3)
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count!r}.")
    t = score_thresholds(area_mm2)
    return 3 if count >= t.score3_from else 2 if count >= t.score2_from else 1


def field_diameter_mm(area_mm2: float, fields: int = 10) -> float:
    """Diameter of each of ``fields`` equal circular fields that together cover ``area_mm2``."""
    return 2 * math.sqrt(area_mm2 / (fields * math.pi))

"""Nottingham mitotic score cut-offs: the published anchors and the boundaries either side."""

from __future__ import annotations

import math

import pytest

from mssn_monai.grading import field_diameter_mm, mitotic_score, score_thresholds


def _ten_fields(d_mm: float) -> float:
    return 10 * math.pi * (d_mm / 2) ** 2


@pytest.mark.parametrize(
    ("area", "s2", "s3"),
    [
        (10 * 0.274, 10, 20),  # Elston & Ellis 1991: 0.59 mm fields, 0-9 / 10-19 / >= 20
        (_ten_fields(0.44), 6, 11),  # 0.152 mm^2 fields: 0-5 / 6-10 / >= 11
        (2.0, 7, 15),  # a 2 mm^2 hotspot
    ],
)
def test_thresholds(area, s2, s3):
    t = score_thresholds(area)
    assert (t.score2_from, t.score3_from) == (s2, s3)
    assert mitotic_score(s2 - 1, area) == 1
    assert mitotic_score(s2, area) == 2
    assert mitotic_score(s3 - 1, area) == 2
    assert mitotic_score(s3, area) == 3
    assert mitotic_score(0, area) == 1


def test_thresholds_grow_with_area():
    prev = score_thresholds(0.5)
    for area in (1.0, 2.0, 3.0, 4.0):
        t = score_thresholds(area)
        assert t.score2_from >= prev.score2_from and t.score3_from > t.score2_from
        prev = t


def test_field_diameter():
    assert field_diameter_mm(_ten_fields(0.5)) == pytest.approx(0.5)
    assert field_diameter_mm(2.0) == pytest.approx(0.5046, abs=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="area_mm2 must be"):
        score_thresholds(0.0)
    with pytest.raises(ValueError, match="count must be"):
        mitotic_score(-1, 2.0)

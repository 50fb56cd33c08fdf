"""The operating threshold fitted on validation fields: pooled F1, or every domain weighing the same."""

from __future__ import annotations

import numpy as np
import pytest

from mssn_monai.handlers import best_operating_threshold


def _fields() -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Domain ``a``: one mitosis scored 0.2. Domain ``b``: four mitoses at 0.9 and four false positives at 0.2.

    Pooled: t = 0.9 keeps TP 4, FP 0, FN 1 (F1 8/9); t = 0.2 keeps TP 5, FP 4 (F1 10/14): 0.9 wins.
    By domain: at 0.9 a scores 0 and b 1 (mean 0.5); at 0.2 a scores 1 and b 8/12 (mean 0.833): 0.2 wins.
    """
    gt_a = np.array([[10.0, 10.0]])
    det_a = np.array([[10.0, 10.0, 0.2]])
    gt_b = np.array([[10.0 + 40 * i, 10.0] for i in range(4)])
    det_b = np.concatenate(
        [np.c_[gt_b, np.full(4, 0.9)], np.array([[10.0 + 40 * i, 300.0, 0.2] for i in range(4)])], axis=0
    )
    return [gt_a, gt_b], [det_a, det_b], [5.0, 5.0]


def test_pooled_f1_lets_the_largest_domain_choose():
    gts, dets, radii = _fields()
    # F1-best is 0.9; the middle of the gap down to the next lower score (0.2) is 0.55
    assert best_operating_threshold(gts, dets, radii) == pytest.approx(0.55)
    assert best_operating_threshold(gts, dets, radii, ["a", "a"]) == pytest.approx(0.55)  # one domain: pooled


def test_every_domain_weighs_the_same():
    gts, dets, radii = _fields()
    # mean of the domains' F1 is best at 0.2; nothing lower, so the middle of the gap down to 0 is 0.1
    assert best_operating_threshold(gts, dets, radii, ["a", "b"]) == pytest.approx(0.1)


def test_domains_need_one_label_per_field():
    gts, dets, radii = _fields()
    with pytest.raises(ValueError, match="one label per field"):
        best_operating_threshold(gts, dets, radii, ["a"])


def test_no_detection_gives_zero():
    assert best_operating_threshold([np.zeros((1, 2))], [np.zeros((0, 3))], [5.0], ["a"]) == 0.0

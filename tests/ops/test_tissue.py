"""Tissue mask on drawn images."""

from __future__ import annotations

import numpy as np
import pytest

from mssn_monai.ops.tissue import cell_boxes, mask_blocks, mask_cells, saturation, tissue_mask


def _drawn() -> np.ndarray:
    img = np.full((60, 80, 3), 242, dtype=np.uint8)  # glass
    img[10:40, 10:50] = (200, 120, 180)  # tissue (pink)
    img[20:24, 20:24] = (240, 240, 240)  # a small hole (lumen) inside it: filled
    img[50:52, 70:72] = (120, 60, 140)  # a 4-px speck of dust: dropped
    img[45:58, 55:60] = (90, 90, 90)  # dark grey pen / glass edge: not saturated, not tissue
    return img


def test_tissue_mask_on_drawn_image():
    mask = tissue_mask(_drawn(), max_hole_px=32, min_object_px=8)
    expected = np.zeros((60, 80), dtype=bool)
    expected[10:40, 10:50] = True
    np.testing.assert_array_equal(mask, expected)


def test_blank_slide_has_no_tissue():
    assert not tissue_mask(np.full((20, 20, 3), 245, dtype=np.uint8)).any()
    noisy = np.random.default_rng(0).integers(235, 250, size=(20, 20, 3)).astype(np.uint8)
    assert not tissue_mask(noisy).any()  # the floor on saturation: Otsu alone would split the noise


def test_saturation_values():
    s = saturation(np.array([[[255, 0, 0], [0, 0, 0], [100, 100, 100]]], dtype=np.uint8))
    np.testing.assert_allclose(s, [[1.0, 0.0, 0.0]])


def test_mask_blocks():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = True  # level-0 [0, 16) x [0, 16) at scale 16
    mask[9, 9] = True  # level-0 [144, 160)
    blocks = mask_blocks(mask, scale=16, block_px=64, size=(160, 160))
    assert blocks.shape == (3, 3)
    assert blocks.tolist() == [[True, False, False], [False, False, False], [False, False, True]]
    grown = mask_blocks(mask, scale=16, block_px=64, size=(160, 160), margin_px=50)
    assert grown[1, 1] and grown[0, 1] and not grown[0, 2]


def test_mask_cells_samples_the_widened_mask_at_each_cell_point():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 2] = True
    cells = mask_cells(mask, scale=8.0, cell_px=4.0)  # a mask pixel is 8 level-0 px, a cell 4: two cells per pixel
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:4, 4:6] = True
    np.testing.assert_array_equal(cells(0, 8, 0, 8), expected)
    window = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)  # col 8 is past the mask: its last column
    np.testing.assert_array_equal(cells(3, 5, 5, 9), window)
    near = mask_cells(mask, scale=8.0, cell_px=8.0, margin_px=8.0)  # one mask pixel of margin: a plus
    plus = np.zeros((4, 4), dtype=bool)
    plus[[0, 1, 1, 1, 2], [2, 1, 2, 3, 2]] = True
    np.testing.assert_array_equal(near(0, 4, 0, 4), plus)
    assert near(2, 6, 3, 7).shape == (4, 4)  # cells beyond the mask take the edge pixel's value
    assert not mask_cells(np.zeros((3, 3), bool), 8.0, 4.0, margin_px=50.0)(0, 5, 0, 5).any()


def test_cell_boxes_groups_and_merges_by_cost():
    a = np.zeros((4, 12), bool)
    a[1, 1] = a[2, 10] = True
    assert cell_boxes(a) == [(1, 2, 1, 2), (2, 3, 10, 11)]
    # context 5: one box of 2 x 10 cells (12 x 20 = 240 with context) costs less than two (2 x 11 x 11 = 242)
    assert cell_boxes(a, context=5) == [(1, 3, 1, 11)]
    # context 3: the cells are 9 apart (> 2 x 3 + 1: two groups) and one box (8 x 16 = 128) costs more than 2 x 49
    assert cell_boxes(a, context=3) == [(1, 2, 1, 2), (2, 3, 10, 11)]
    assert cell_boxes(a, max_boxes=1) == [(1, 3, 1, 11)]
    assert cell_boxes(np.zeros((3, 3), bool)) == []
    l_shape = np.zeros((6, 6), bool)
    l_shape[0, :] = l_shape[:, 0] = True
    assert cell_boxes(l_shape) == [(0, 6, 0, 6)]  # one 8-connected group: its bounding box
    many = np.zeros((40, 40), bool)
    many[::4, ::4] = True  # 100 specks, 4 cells apart
    assert cell_boxes(many, context=2) == [(0, 37, 0, 37)]  # 4 apart, within 2 x 2 + 1: one group
    boxes = cell_boxes(many, max_boxes=7)
    assert len(boxes) <= 7
    covered = np.zeros_like(many)
    for r0, r1, c0, c1 in boxes:
        covered[r0:r1, c0:c1] = True
    assert (covered | ~many).all()


def test_cell_boxes_refuses_bad_input():
    with pytest.raises(ValueError, match="mask"):
        cell_boxes(np.zeros(3, bool))
    with pytest.raises(ValueError, match="context"):
        cell_boxes(np.zeros((2, 2), bool), context=-1)

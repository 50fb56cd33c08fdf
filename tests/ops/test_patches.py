"""Batched patch extraction equals the one-patch rule, borders included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mssn_monai.networks.fnr import extract_patch, extract_patches


@pytest.mark.parametrize("size", [1, 4, 5, 12])
def test_batched_equals_single(size):
    rng = np.random.default_rng(size)
    img = rng.random((3, 7, 9))
    pts = np.array([[0, 0], [8.6, 6.4], [4, 3], [-3, 20], [2.5, 1.5]])
    out = extract_patches(img, pts, size)
    assert out.shape == (len(pts), 3, size, size)
    timg = torch.as_tensor(img)
    tout = extract_patches(timg, pts, size)
    for m, (x, y) in enumerate(pts):
        np.testing.assert_array_equal(out[m], extract_patch(img, x, y, size))
        assert torch.equal(tout[m], extract_patch(timg, x, y, size))


def test_empty_and_bad_input():
    assert extract_patches(np.zeros((3, 4, 4)), np.zeros((0, 2)), 3).shape == (0, 3, 3, 3)
    with pytest.raises(ValueError, match="shape"):
        extract_patches(np.zeros((4, 4)), np.zeros((1, 2)), 3)

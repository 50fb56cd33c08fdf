"""Patch ops (``mssn_monai.ops.patches``): the border rule shared by padding, single and batched patch
extraction and the detector's gather, and the centre-pixel convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mssn_monai.ops.patches import (
    _mirror,
    _mirror_indices,
    _mirror_tensor,
    as_pair,
    extract_patch,
    extract_patches,
    gather_patches,
    mirror_index,
    mirror_take,
    pad_symmetric,
)

# ---------------------------------------------------------------- border rule


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 4), (9, 13)])
@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 2, 3, 0), (7, 11, 13, 5)])
def test_pad_symmetric_matches_numpy(hw, pads):
    top, bottom, left, right = pads
    arr = np.random.default_rng(0).random((2, 3, *hw)).astype(np.float32)
    ref = np.pad(arr, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="symmetric")
    np.testing.assert_array_equal(pad_symmetric(arr, *pads), ref)
    got = pad_symmetric(torch.from_numpy(arr), *pads)
    np.testing.assert_array_equal(got.numpy(), ref)
    got_cl = pad_symmetric(torch.from_numpy(arr).contiguous(memory_format=torch.channels_last), *pads)
    assert got_cl.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(got_cl.numpy(), ref)


def test_pad_symmetric_rejects_bad_input():
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        pad_symmetric(np.zeros(5), 1, 1, 1, 1)
    with pytest.raises(ValueError, match=">= 0"):
        pad_symmetric(np.zeros((2, 2)), -1, 0, 0, 0)


def test_extract_patch_follows_the_border_rule():
    img = np.arange(9).reshape(1, 3, 3)
    np.testing.assert_array_equal(
        extract_patch(img, x=0, y=0, size=4)[0],
        [[4, 3, 3, 4], [1, 0, 0, 1], [1, 0, 0, 1], [4, 3, 3, 4]],
    )
    rng = np.random.default_rng(0)
    big = rng.random((3, 11, 7))
    padded = np.pad(big, ((0, 0), (60, 60), (60, 60)), mode="symmetric")
    for x, y, (h, w) in [(0, 0, (120, 120)), (6, 10, (72, 72)), (3, 4, (60, 120)), (5, 1, (7, 5))]:
        expected = padded[:, 60 + y - h // 2 : 60 + y - h // 2 + h, 60 + x - w // 2 : 60 + x - w // 2 + w]
        np.testing.assert_array_equal(extract_patch(big, x, y, (h, w)), expected)
        torch.testing.assert_close(extract_patch(torch.from_numpy(big), x, y, (h, w)), torch.from_numpy(expected))
    # float centres round to the nearest pixel, halves up
    np.testing.assert_array_equal(extract_patch(big, 2.5, 3.49, 8), extract_patch(big, 3, 3, 8))
    with pytest.raises(ValueError, match="positive"):
        extract_patch(big, 0, 0, 0)


# ---------------------------------------------------------------- batched extraction


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


def test_gather_patches_equals_extract_patch_and_scripts():
    """The detector's TorchScript gather (integer centres) is extract_patch, uint8 and float alike."""
    img = torch.randint(0, 256, (3, 6, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    centres = torch.tensor([[0, 0], [10, 5], [5, 3], [-4, 9], [20, -7]])
    scripted = torch.jit.script(gather_patches)
    for image in (img, img.float() / 255.0):
        for size in (1, 4, 7):
            got = gather_patches(image, centres, size)
            assert got.shape == (len(centres), 3, size, size) and got.dtype == image.dtype
            for m, (x, y) in enumerate(centres.tolist()):
                assert torch.equal(got[m], extract_patch(image, x, y, size))
            assert torch.equal(scripted(image, centres, size), got)
            inside = torch.tensor([[3, 3], [7, 2], [5, 3]])  # every patch of side <= 4 inside: plain windows
            if size <= 4:
                windows = gather_patches(image, inside, size)
                assert windows.is_contiguous() and windows.shape == (3, 3, size, size)
                for m, (x, y) in enumerate(inside.tolist()):
                    assert torch.equal(windows[m], extract_patch(image, x, y, size))
                assert torch.equal(scripted(image, inside, size), windows)


# ---------------------------------------------------------------- index helpers


def test_mirror_index_twins_agree_with_numpy_pad():
    for size in (1, 2, 5):
        ref = np.pad(np.arange(size), 13, mode="symmetric")
        np.testing.assert_array_equal(_mirror_indices(-13, size + 26, size), ref)
        np.testing.assert_array_equal(_mirror(np.arange(-13, size + 13), size), ref)
        np.testing.assert_array_equal(_mirror_tensor(torch.arange(-13, size + 13), size).numpy(), ref)
        got = mirror_index(-13, size + 26, size, torch.device("cpu"))
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), ref)


def test_mirror_take_is_a_view_inside_and_the_border_rule_outside():
    x = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7)
    for start, length in [(0, 7), (2, 3), (6, 1), (-3, 5), (4, 6), (-2, 12), (-20, 3)]:
        got = mirror_take(x, 1, start, length)
        want = x.index_select(1, mirror_index(start, length, 7, x.device))
        assert torch.equal(got, want), (start, length)
        inside = start >= 0 and start + length <= 7
        assert (got.data_ptr() == x[:, start:].data_ptr()) == inside, (start, length)  # a view only inside


def test_as_pair():
    assert as_pair(7, "size") == (7, 7)
    assert as_pair([7, 5], "size") == (7, 5)
    assert as_pair((np.int64(3), 4), "size") == (3, 4)
    for bad in (True, 2.0, "7", [1, 2, 3], [1.0, 2]):
        with pytest.raises(ValueError, match="size must be an int or a pair"):
            as_pair(bad, "size")

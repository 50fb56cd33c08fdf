"""uint8 <-> float intensities (``mssn_monai.ops.intensity``): one pair of conversions, one rounding rule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mssn_monai.ops.intensity import fit_stride, hwc_to_chw_float, to_float01, to_uint8


def test_every_level_round_trips():
    u8 = torch.arange(256, dtype=torch.uint8)
    f = to_float01(u8)
    assert f.dtype == torch.float32 and float(f.min()) == 0.0 and float(f.max()) == 1.0
    assert torch.equal(to_uint8(f), u8)


def test_halves_round_up():
    assert to_uint8(torch.tensor([0.5 / 255, 1.5 / 255])).tolist() == [1, 2]
    # just below and above a half go to the nearest level
    assert to_uint8(torch.tensor([0.49 / 255, 0.51 / 255, 254.49 / 255, 254.51 / 255])).tolist() == [0, 1, 254, 255]
    assert to_uint8(torch.tensor([0.5 / 255], dtype=torch.float64)).tolist() == [1]


def test_out_of_range_values_are_clamped():
    got = to_uint8(torch.tensor([-1.0, -1e-9, 1.0 + 1e-6, 2.0, float("inf"), float("-inf")]))
    assert got.dtype == torch.uint8 and got.tolist() == [0, 0, 255, 255, 255, 0]


def test_to_float01_keeps_float_input_and_shape():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    y = to_float01(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y, x.float(), atol=0, rtol=0)  # already in [0, 1]: not divided again
    u8 = torch.tensor([[0, 51], [102, 255]], dtype=torch.uint8)
    torch.testing.assert_close(to_float01(u8), u8.float() / 255.0, atol=0, rtol=0)


def test_to_float01_is_torchscript_able():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(to_float01)
    u8 = torch.arange(256, dtype=torch.uint8).reshape(4, 64)
    assert torch.equal(scripted(u8), to_float01(u8))
    x = torch.rand(3, 5, 7)
    assert torch.equal(scripted(x), to_float01(x))


def test_hwc_to_chw_float():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = hwc_to_chw_float(image[:, ::-1])  # a non-contiguous view works too
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32 and t.is_contiguous()
    np.testing.assert_array_equal(t.numpy(), np.moveaxis(image[:, ::-1], 2, 0).astype(np.float32) / 255.0)
    np.testing.assert_array_equal(to_uint8(t).permute(1, 2, 0).numpy(), image[:, ::-1])
    for bad in (np.zeros((5, 7), np.uint8), np.zeros((5, 7, 4), np.uint8)):
        with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
            hwc_to_chw_float(bad)


@pytest.mark.parametrize(
    ("h", "w", "limit", "step"),
    [(10, 10, 100, 1), (10, 10, 99, 2), (2048, 2048, 2048 * 2048, 1), (2049, 2048, 2048 * 2048, 2),
     (16384, 16384, 2048 * 2048, 8), (1, 5, 1, 5)],
)  # fmt: skip
def test_fit_stride_smallest_step_under_the_limit(h, w, limit, step):
    assert fit_stride(h, w, limit) == step
    assert -(-h // step) * -(-w // step) <= limit
    assert step == 1 or -(-h // (step - 1)) * -(-w // (step - 1)) > limit


@pytest.mark.parametrize(("h", "w", "step"), [(1024, 1024, 1), (2084, 2084, 3), (2048, 2048, 2), (1376, 1539, 2)])
def test_default_fit_bound_keeps_training_fields_whole(h, w, step):
    """The default bound (1024x1024 px since 0.18.0): a 1024x1024 training field is fitted on all of it,
    the 2084x2084 benchmark field on every 3rd row and column, a slide's 2048x2048 stain mosaic on every 2nd."""
    assert fit_stride(h, w) == step

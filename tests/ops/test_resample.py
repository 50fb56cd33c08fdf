"""Block-mean reduction and the point conversions between the full and the reduced pixel grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mssn_monai.ops.resample import downsample_mean, from_reduced_points, to_reduced_points


def test_block_means_exact_with_odd_edges():
    x = torch.arange(15.0).reshape(1, 1, 3, 5)  # rows 0-4, 5-9, 10-14
    got = downsample_mean(x, 2)
    want = torch.tensor([[[[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]]]])  # a cut block: the mean of what it holds
    torch.testing.assert_close(got, want)
    assert downsample_mean(x, 1) is not None and torch.equal(downsample_mean(x, 1), x)


def test_uint8_is_read_as_levels_and_channels_last_is_fine():
    u = torch.tensor([[[[0, 255], [255, 0]]]], dtype=torch.uint8).expand(1, 3, 2, 2)
    torch.testing.assert_close(downsample_mean(u, 2), torch.full((1, 3, 1, 1), 0.5))
    x = torch.rand(2, 3, 9, 7)
    torch.testing.assert_close(
        downsample_mean(x.contiguous(memory_format=torch.channels_last), 2), downsample_mean(x, 2)
    )
    assert downsample_mean(x, 3).shape == (2, 3, 3, 3)
    with pytest.raises(ValueError, match="factor must be an int >= 1"):
        downsample_mean(x, 0)


def test_points_map_pixel_centres_onto_pixel_centres():
    pts = np.array([[0.5, 0.5, 0.9], [30.5, 20.5, 0.1], [3.0, 4.0, 0.5]])
    red = to_reduced_points(pts, 2)
    np.testing.assert_allclose(red, [[0.0, 0.0, 0.9], [15.0, 10.0, 0.1], [1.25, 1.75, 0.5]])
    np.testing.assert_allclose(from_reduced_points(red, 2), pts)
    assert to_reduced_points(np.zeros((0, 2)), 2).shape == (0, 2)
    assert from_reduced_points(np.zeros((0, 3)), 2).shape == (0, 3)  # no rows: the columns stay


def test_downsample_mean_is_torchscript_able():
    scripted = torch.jit.script(downsample_mean)
    x = torch.rand(1, 3, 5, 6)
    torch.testing.assert_close(scripted(x, 2), downsample_mean(x, 2))

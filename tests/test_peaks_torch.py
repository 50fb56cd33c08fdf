"""find_peaks_torch against the numpy find_peaks: exact points and order, eager and scripted."""

import warnings

import numpy as np
import pytest
import torch

from mssn_monai.ops import find_peaks, find_peaks_torch
from mssn_monai.ops.peaks_torch import _greedy_keep

with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the bundle still scripts its models
    warnings.simplefilter("ignore", DeprecationWarning)
    _SCRIPTED = torch.jit.script(find_peaks_torch)


def _assert_same(m: np.ndarray, threshold: float, d: float, stride: int = 4, scripted: bool = True) -> np.ndarray:
    """Both torch versions equal the numpy one exactly (float64 comparison, NaN scores equal)."""
    ref = find_peaks(m, threshold, d, stride)
    t = torch.from_numpy(m.copy())
    fns = [find_peaks_torch, _SCRIPTED] if scripted else [find_peaks_torch]
    for fn in fns:
        got = fn(t, threshold, d, stride)
        assert got.dtype == t.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got.double().numpy(), ref)
    for band_cells in (1, 3 * m.shape[-1] + 1):  # the peak mask built in bands of 1 and 3 rows: the same points
        np.testing.assert_array_equal(find_peaks_torch(t, threshold, d, stride, band_cells).double().numpy(), ref)
    np.testing.assert_array_equal(t.numpy(), m)  # not modified
    return ref


def _zeros(h: int = 7, w: int = 9) -> np.ndarray:
    return np.zeros((h, w), dtype=np.float32)


def test_hand_made_maps():
    m = _zeros()
    m[3, 2] = 0.8
    np.testing.assert_array_equal(_assert_same(m, 0.5, 12)[:, :2], [[8, 12]])
    m[3, 4] = 0.7  # 8 px apart
    assert len(_assert_same(m, 0.5, 10)) == 1
    assert len(_assert_same(m, 0.5, 8)) == 2  # exactly min_distance_px apart: both stay
    m = _zeros()
    m[2, 2], m[4, 4] = 0.9, 0.7  # 8 * sqrt(2) px apart
    assert len(_assert_same(m, 0.5, 11)) == 2
    assert len(_assert_same(m, 0.5, 12)) == 1
    _assert_same(m, 0.5, float(np.sqrt(128.0)))  # squared distance rounds to just above 128
    m = _zeros(9, 9)
    m[0, 8], m[4, 4], m[8, 0], m[0, 0] = 0.6, 0.9, 0.6, 0.7  # order: score, then raster
    np.testing.assert_array_equal(_assert_same(m, 0.5, 4)[:, :2], [[16, 16], [0, 0], [32, 0], [0, 32]])
    m = _zeros(6, 8)
    m[0, 0], m[5, 7], m[0, 7], m[3, 0] = 0.9, 0.8, 0.7, 0.6  # border peaks
    assert len(_assert_same(m, 0.5, 8)) == 4
    _assert_same(m, 0.5, 8, stride=2)


def test_plateaus():
    m = _zeros()
    m[1:4, 3:6] = 1.0  # 3x3 plateau of 1.0: its centre
    np.testing.assert_array_equal(_assert_same(m, 0.5, 0), [[16, 8, 1.0]])
    m = _zeros()
    m[2:4, 1:4] = 1.0  # centroid between two cells: raster order wins
    np.testing.assert_array_equal(_assert_same(m, 0.5, 8), [[8, 8, 1.0]])
    m = _zeros()
    m[1, 1:6] = 1.0
    m[2:6, 1] = 1.0  # symmetric L: centroid off the plateau, exact tie
    np.testing.assert_array_equal(_assert_same(m, 0.5, 4), [[8, 4, 1.0]])
    m[6, 1] = 1.0
    np.testing.assert_array_equal(_assert_same(m, 0.5, 4), [[4, 8, 1.0]])
    m = _zeros(12, 12)
    m[np.arange(12), np.arange(12)] = 1.0  # diagonal: one 8-connected plateau
    m[0, 11] = m[11, 0] = 1.0
    _assert_same(m, 0.5, 0)
    _assert_same(m, 0.5, 6)


def test_equal_plateaus_closer_than_min_distance():
    m = _zeros(8, 12)
    m[2:4, 2:4] = 1.0
    m[2:4, 5:7] = 1.0  # two equal plateaus, one column apart
    m[6, 10] = m[6, 8] = 0.8  # two equal single cells 8 px apart
    ref = _assert_same(m, 0.5, 16)
    assert len(ref) == 2
    _assert_same(m, 0.5, 12)
    _assert_same(m, 0.5, 8)
    _assert_same(m, 0.5, 0)


def test_nan_cells():
    m = _zeros()
    m[3, 3], m[3, 4] = 0.8, np.nan
    m[0, 0] = np.nan
    np.testing.assert_array_equal(_assert_same(m, 0.5, 12)[:, :2], [[12, 12]])
    _assert_same(m, 0.0, 4)
    _assert_same(m, float("-inf"), 4)  # NaN cells pass a -inf threshold in find_peaks too
    _assert_same(np.full((3, 4), np.nan, dtype=np.float32), 0.5, 8)


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0)])
def test_empty_map(shape):
    got = find_peaks_torch(torch.zeros(shape), 0.5, 12)
    assert got.shape == (0, 3) and got.dtype == torch.float32
    assert _SCRIPTED(torch.zeros(shape), 0.5, 12).shape == (0, 3)


def test_all_below_threshold_inclusive_threshold_and_1x1():
    m = _zeros()
    m[3, 3] = 0.49
    assert _assert_same(m, 0.5, 12).shape == (0, 3)
    m[3, 3] = 0.5
    np.testing.assert_array_equal(_assert_same(m, 0.5, 12), [[12, 12, 0.5]])
    _assert_same(m, float(np.float32(0.49)), 12)  # threshold equal to a float32 value
    _assert_same(m, 0.49, 12)
    _assert_same(_zeros(5, 5), 0.0, 12)  # whole map one plateau
    for d in (0.0, 4.0, 100.0):
        _assert_same(np.full((1, 1), 0.7, dtype=np.float32), 0.5, d)
        _assert_same(np.full((1, 1), 0.7, dtype=np.float32), 0.8, d)
        _assert_same(np.full((1, 6), 0.7, dtype=np.float32), 0.5, d)


def test_min_distance_zero_keeps_every_cell_above_threshold():
    rng = np.random.default_rng(1)
    m = rng.random((9, 11)).astype(np.float32)
    assert len(_assert_same(m, 0.5, 0)) == int((m >= 0.5).sum())


@pytest.mark.parametrize("seed", range(40))
def test_randomized_oracle_quantized(seed):
    """Few levels: ties, plateaus and equal close peaks are frequent."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 30, size=2)
    levels = int(rng.integers(2, 6))
    m = (rng.integers(0, levels, size=(h, w)) / (levels - 1)).astype(np.float32)
    if seed % 4 == 0:
        m[rng.random((h, w)) < 0.05] = np.nan
    if seed % 3 == 0:
        m = m.astype(np.float64)
    for d, stride in ((0.0, 4), (3.0, 4), (4.0, 4), (8.0, 4), (11.4, 4), (16.0, 4), (30.0, 4), (5.0, 1), (10.0, 3)):
        threshold = float(rng.choice([0.0, 0.3, 0.5, 1.0]))
        _assert_same(m, threshold, d, stride, scripted=(d == 16.0))


def test_many_equal_peaks_use_offset_lookup():
    """Enough equal peaks that the close pairs are found per footprint offset rather than over all pairs."""
    rng = np.random.default_rng(7)
    m = (rng.random((80, 90)) < 0.3).astype(np.float32)
    for d in (4.5, 6.0, 8.0):
        _assert_same(m, 0.5, d, scripted=(d == 6.0))


def test_dtype_and_device():
    m = torch.rand(20, 25, generator=torch.Generator().manual_seed(0))
    for fn in (find_peaks_torch, _SCRIPTED):
        got = fn(m, 0.5, 8.0, 4)
        assert got.dtype == torch.float32 and got.device == m.device
        assert fn(m.double(), 0.5, 8.0, 4).dtype == torch.float64
    ref = find_peaks(m.numpy(), 0.5, 8)
    np.testing.assert_array_equal(find_peaks_torch(m.t(), 0.5, 8).double().numpy(), find_peaks(m.t().numpy(), 0.5, 8))
    np.testing.assert_array_equal(find_peaks_torch(m.requires_grad_(), 0.5, 8).double().numpy(), ref)
    m.requires_grad_(False)
    q = (m * 4).round().to(torch.int64)  # integer maps come back in float64
    got = find_peaks_torch(q, 2.0, 8)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), find_peaks(q.numpy(), 2.0, 8))
    np.testing.assert_array_equal(find_peaks_torch(m.half(), 0.0, 8).shape[1], 3)
    np.testing.assert_array_equal(find_peaks_torch(m, 0.5, 8).double().numpy(), ref)
    if torch.cuda.is_available():
        got = find_peaks_torch(m.cuda(), 0.5, 8.0)
        assert got.device.type == "cuda" and got.dtype == torch.float32
        np.testing.assert_array_equal(got.double().cpu().numpy(), ref)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(1, 4, 4), 0.5, 8.0), r"shape \[1, 4, 4\]"),
        ((torch.zeros(4), 0.5, 8.0), r"shape \[4\]"),
        ((torch.zeros(4, 4), 0.5, -1.0), "min_distance_px"),
        ((torch.zeros(4, 4), 0.5, float("inf")), "min_distance_px"),
        ((torch.zeros(4, 4), 0.5, float("nan")), "min_distance_px"),
        ((torch.zeros(4, 4), float("nan"), 8.0), "threshold"),
        ((torch.zeros(4, 4), 0.5, 8.0, 0), "stride"),
        ((torch.zeros(4, 4), 0.5, 8.0, 4, 0), "band_cells"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        find_peaks_torch(*args)
    with pytest.raises(torch.jit.Error, match=match):
        _SCRIPTED(*args)


def test_long_chain_of_equal_peaks_sequential_finish():
    """200 equal peaks in a row, each 8 px from the next: more parallel rounds than allowed."""
    m = np.zeros((3, 400), dtype=np.float32)
    m[1, ::2] = 1.0
    ref = _assert_same(m, 0.5, 9.0)
    np.testing.assert_array_equal(ref[:, 0], np.arange(0, 1600, 16))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_rounds_match_sequential(seed):
    rng = np.random.default_rng(seed)
    k = 60
    pairs = np.unique(np.sort(rng.integers(0, k, size=(150, 2)), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    expected = np.ones(k, dtype=bool)
    for i, j in pairs:  # the numpy rule
        if expected[i]:
            expected[j] = False
    first, second = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    for max_rounds in (0, 1, 2, 64):
        got = _greedy_keep(first, second, k, max_rounds)
        np.testing.assert_array_equal(got.numpy(), expected)


def test_huge_plateau_float_distances():
    """size * max(h, w) >= 2**31: find_peaks compares centroid distances in float64, and so must the port."""
    m = np.ones((2, 33000), dtype=np.float32)
    m[0, :7] = 0.5
    m[1, -3:] = 0.5
    _assert_same(m, 0.9, 0.0, scripted=False)

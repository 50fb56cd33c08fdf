"""Stage 1 at half resolution (``MultiScaleFNR(input_downsample=2)``): the detector reduces the field, its
maps are at stride 8 of the field, blocks still equal the whole field, TorchScript and checkpoints agree.

The shipped stage-1 weights with the buffer set to 2 stand in for weights trained at half resolution:
these are contracts of the plumbing, not of accuracy (that is measured by training, see the README)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_network
from mssn_monai.data.datalist import load_datalist
from mssn_monai.io import read_image_rgb
from mssn_monai.networks.detector import FieldDetector, MSSNDetector
from mssn_monai.networks.fnr import MultiScaleFNR
from mssn_monai.networks.fpr import SiameseEmbedding
from mssn_monai.ops.resample import downsample_mean

CONFIG = DEFAULT_BUNDLE / "configs" / "inference.json"
SAMPLES = DEFAULT_BUNDLE / "samples" / "datalist.json"


@pytest.fixture(scope="module")
def half() -> MSSNDetector:
    shipped = load_network(DEFAULT_BUNDLE / "models" / "model.pt", CONFIG, "network_def")
    fnr = copy.deepcopy(shipped.fnr)
    fnr.input_downsample.fill_(2)
    return MSSNDetector(fnr, shipped.fpr, tile_px=64, candidate_threshold=0.1).eval()


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    """An odd-sized 451x389 crop of a shipped sample around a mitosis (odd edges reduce to a cut block)."""
    rec = next(r for r in load_datalist(SAMPLES, "testing") if len(r["mitoses"]))
    image, (x, y) = read_image_rgb(rec["image"]), rec["mitoses"][0]
    y0 = int(np.clip(y - 200, 0, image.shape[0] - 451))
    x0 = int(np.clip(x - 170, 0, image.shape[1] - 389))
    return np.ascontiguousarray(image[y0 : y0 + 451, x0 : x0 + 389])


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255.0)


def test_maps_are_the_network_on_the_reduced_field(half, field):
    assert (half.stage1_downsample, half.output_stride, half.stage1_half_extent) == (2, 8, (120, 120))
    x = _chw(field)
    with torch.no_grad():
        maps = half.stage1_maps(x)
        direct = half.fnr(downsample_mean(x[None], 2))
    assert maps["fused"].shape == (-(-451 // 8), -(-389 // 8))
    for name, m in maps.items():
        torch.testing.assert_close(m, direct[name][0, 0], atol=1e-6, rtol=0)
    with torch.no_grad():
        cand = half.candidates(x, 0.2455)
    assert len(cand) and torch.all(cand[:, :2] % 8 == 0)  # a candidate sits on the stride-8 grid of the field


def test_blocks_equal_the_whole_field_at_half_resolution(half, field):
    """128-px blocks (windows start on multiples of 8, so the reduction is the whole field's) give the
    whole-field map bit for bit and the same detections, each block on its own too."""
    fields = FieldDetector(half, block_px=128)
    with torch.no_grad():
        ref_map = half.stage1_maps(_chw(field))["fused"]
        ref = half.detect(_chw(field), 0.2455)
    torch.testing.assert_close(fields.fused_map(field), ref_map, atol=0, rtol=0)
    got = fields(field, 0.2455)
    np.testing.assert_array_equal(got["candidates"], ref["candidates"].numpy())
    np.testing.assert_allclose(got["votes"], ref["votes"].numpy(), atol=1e-5)
    grid = fields.block_grid(*field.shape[:2])
    parts = dict(fields.detect_blocks(field, 0.2455, blocks=[(i, j) for i in range(grid[0]) for j in range(grid[1])]))
    cand = np.concatenate([p["candidates"] for p in parts.values()])
    by_position = lambda rows: rows[np.lexsort((rows[:, 0], rows[:, 1]))]  # noqa: E731
    np.testing.assert_allclose(by_position(cand), by_position(ref["candidates"].numpy()), atol=1e-6)
    assert len({(int(x) // 128, int(y) // 128) for x, y, _ in cand}) >= 3  # a real case: several blocks


def test_torchscript_equals_eager_at_half_resolution(half, field):
    scripted = torch.jit.script(half)
    x = _chw(field)
    with torch.no_grad():
        a, b = half.detect(x, 0.2455), scripted.detect(x, 0.2455)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


def test_the_reduction_travels_with_the_weights(half):
    """Saved weights say they are half-resolution weights; a fresh default network loading them runs at
    stride 8; weights saved before the buffer existed keep the constructed value."""
    state = half.state_dict()
    assert int(state["fnr.input_downsample"]) == 2
    fresh = MSSNDetector(MultiScaleFNR(), SiameseEmbedding())
    fresh.load_state_dict(state)
    assert fresh.output_stride == 8
    old = {k: v for k, v in state.items() if k != "fnr.input_downsample"}
    again = MSSNDetector(MultiScaleFNR(input_downsample=2), SiameseEmbedding())
    again.load_state_dict(old)
    assert again.stage1_downsample == 2
    default = MSSNDetector(MultiScaleFNR(), SiameseEmbedding())
    default.load_state_dict(old)
    assert default.output_stride == 4
    with pytest.raises(ValueError, match="input_downsample must be an int >= 1"):
        MultiScaleFNR(input_downsample=0)


def test_adapt_measures_batchnorm_on_what_stage_1_reads(half, field):
    """``adapt``'s stage-1 alignment feeds the network the reduced tiles, as detection does."""
    from mssn_monai.adapt import _tiles

    tiles = list(_tiles(FieldDetector(half), [field], tile=256, per_image=2))
    assert [tuple(t.shape) for t in tiles] == [(1, 3, 128, 128)] * 2

"""Tiled stage 1 (``MSSNDetector.stage1_maps``): stitched tiles equal the whole-image maps, and a figure on a
seam is found once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mssn_monai.networks.detector import MSSNDetector, balanced_step
from mssn_monai.networks.fnr import MultiScaleFNR
from mssn_monai.networks.fpr import SiameseEmbedding


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(1)
    model = MultiScaleFNR(stem_channels=(4, 8), head_channels=4, features=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _detector(net: MultiScaleFNR, tile_px: int) -> MSSNDetector:
    return MSSNDetector(net, SiameseEmbedding(), candidate_threshold=0.5, min_distance_um=4.0, tile_px=tile_px).eval()


def _maps(net: MultiScaleFNR, image: np.ndarray, tile_px: int) -> dict[str, np.ndarray]:
    with torch.no_grad():
        maps = _detector(net, tile_px).stage1_maps(torch.from_numpy(image).permute(2, 0, 1))
    return {k: v.numpy() for k, v in maps.items()}


def test_tiles_equal_whole_image(net):
    image = np.random.default_rng(0).integers(0, 256, (150, 203, 3), dtype=np.uint8)
    with torch.no_grad():
        whole = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)
    for tile in (20, 36, 1000):
        tiled = _maps(net, image, tile)
        assert set(tiled) == set(whole)
        for key, value in whole.items():
            np.testing.assert_allclose(tiled[key], value[0, 0].numpy(), atol=1e-5, err_msg=f"{key} tile {tile}")
        # peaks are found on the stitched map: the same candidates as untiled, none doubled on a seam
        det = _detector(net, tile)
        a = det.peaks(torch.from_numpy(tiled["fused"]), 0.25).numpy()
        b = det.peaks(whole["fused"][0, 0], 0.25).numpy()
        np.testing.assert_allclose(a[:, :2], b[:, :2])


def test_balanced_step_splits_into_equal_tiles_of_about_the_tile():
    assert balanced_step(521, 256) == 261  # a 2084-px field: two tiles of 1044 px, not 1024 + 1024 + 36
    assert balanced_step(512, 256) == 256 and balanced_step(100, 256) == 100 and balanced_step(1, 256) == 1
    assert balanced_step(383, 256) == 383 and balanced_step(384, 256) == 192  # 1.5 tiles rounds up to two
    for length in range(1, 2000, 7):
        step = balanced_step(length, 256)
        parts = -(-length // step)
        assert step <= 1.5 * 256 and (parts == 1 or length - (parts - 1) * step > step // 2), length
    assert torch.jit.script(balanced_step)(521, 256) == 261


def test_region_outside_map_is_rejected(net):
    with pytest.raises(ValueError, match="not inside"):
        net.forward_region(torch.zeros(1, 3, 16, 16), 0, 5, 0, 1)


def test_peak_on_a_seam_is_reported_once(net):
    """A bright peak straddling the boundary of two tiles gives one candidate, at the same place as untiled."""
    image = np.full((96, 96, 3), 220, np.uint8)
    maps_whole = _maps(net, image, 4096)
    # build a synthetic fused map with a plateau across the seam at column 8 (pixel 32) of a 32-px tiling
    fused = np.zeros_like(maps_whole["fused"])
    fused[10, 7:10] = 0.9
    cands = _detector(net, 32).peaks(torch.from_numpy(fused), 0.25).numpy()
    assert len(cands) == 1 and tuple(cands[0, :2]) == (32.0, 40.0)
    tiled = _maps(net, image, 32)
    np.testing.assert_allclose(tiled["fused"], maps_whole["fused"], atol=1e-5)

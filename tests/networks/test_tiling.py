"""Tiled dense FNR: stitched tiles equal the whole-image maps, and a figure on a seam is found once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mssn_monai.inference import fnr_probability_maps, maps_to_candidates
from mssn_monai.networks.fnr import MultiScaleFNR


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


def test_tiles_equal_whole_image(net):
    image = np.random.default_rng(0).integers(0, 256, (150, 203, 3), dtype=np.uint8)
    with torch.no_grad():
        whole = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)
    for tile in (20, 36, 1000):
        tiled = fnr_probability_maps(net, image, tile_px=tile)
        assert set(tiled) == set(whole)
        for key, value in whole.items():
            np.testing.assert_allclose(tiled[key], value[0, 0].numpy(), atol=1e-5, err_msg=f"{key} tile {tile}")
        # peaks are found on the stitched map: the same candidates as untiled, none doubled on a seam
        ref = {"fused": whole["fused"][0, 0].numpy()}
        a = maps_to_candidates({"fused": tiled["fused"]}, 0.25, threshold=0.5, min_distance_um=4.0)["fused"]
        b = maps_to_candidates(ref, 0.25, threshold=0.5, min_distance_um=4.0)["fused"]
        np.testing.assert_allclose(a[:, :2], b[:, :2])


def test_region_outside_map_is_rejected(net):
    with pytest.raises(ValueError, match="not inside"):
        net.forward_region(torch.zeros(1, 3, 16, 16), 0, 5, 0, 1)


def test_peak_on_a_seam_is_reported_once(net):
    """A bright peak straddling the boundary of two tiles gives one candidate, at the same place as untiled."""
    image = np.full((96, 96, 3), 220, np.uint8)
    maps_whole = fnr_probability_maps(net, image, tile_px=4096)
    # build a synthetic fused map with a plateau across the seam at column 8 (pixel 32) of a 32-px tiling
    for maps in (maps_whole,):
        fused = np.zeros_like(maps["fused"])
        fused[10, 7:10] = 0.9
        cands = maps_to_candidates({"fused": fused}, spacing=0.25, threshold=0.5, min_distance_um=4.0)["fused"]
        assert len(cands) == 1 and tuple(cands[0, :2]) == (32.0, 40.0)
    tiled = fnr_probability_maps(net, image, tile_px=32)
    np.testing.assert_allclose(tiled["fused"], maps_whole["fused"], atol=1e-5)

"""Shape contracts, dense == patch equivalence and receptive-field arithmetic of the FNR networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mssn_monai.networks import (
    FUSED_KEY,
    OUTPUT_STRIDE,
    FNRSubModel,
    MultiScaleFNR,
    conv_receptive_field,
)
from mssn_monai.ops.patches import extract_patch

ALL = [str(m) for m in FNRSubModel]
TINY = {"stem_channels": [4, 6], "head_channels": 4, "features": 3}
EXPECTED_PATCHES = {
    "square72": [(72, 72)],
    "square96": [(96, 96)],
    "crossbar": [(120, 60), (60, 120)],
    "dilated120": [(120, 120)],
}


def _randomise_norms(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine terms, then switch to eval."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1.0 + 0.2 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=g))
    return net.eval()


def _tiny(seed: int = 0, **kwargs) -> MultiScaleFNR:
    torch.manual_seed(seed)
    return _randomise_norms(MultiScaleFNR(**{**TINY, **kwargs}), seed)


# ---------------------------------------------------------------- shape contracts


@pytest.mark.parametrize("hw", [(33, 57), (1, 1), (130, 250), (4, 4), (5, 3), (2, 9)])
def test_dense_map_shape(hw):
    h, w = hw
    net = _tiny()
    with torch.inference_mode():
        out = net(torch.rand(2, 3, h, w))
    assert list(out) == ALL + [FUSED_KEY]
    for prob in out.values():
        assert prob.shape == (2, 1, math.ceil(h / 4), math.ceil(w / 4))
        assert torch.all((prob >= 0) & (prob <= 1))


def test_default_widths_shape_and_fused_is_max():
    net = MultiScaleFNR().eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 33, 57))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (1, 1, 9, 15) for k in ALL + [FUSED_KEY]}
    expected = torch.stack([out[k] for k in ALL]).amax(0)
    assert torch.equal(out[FUSED_KEY], expected)


def test_channels_last_input_same_result():
    net = _tiny()
    x = torch.rand(1, 3, 41, 29)
    with torch.inference_mode():
        ref = net(x)
        got = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-6, rtol=0)


def test_classify_patches_shapes_and_larger_sample():
    net = _tiny()
    x = torch.rand(5, 3, 124, 128)
    with torch.inference_mode():
        logits = net.classify_patches(x)
        centre = net.classify_patches(x[:, :, 2:122, 4:124])
    assert list(logits) == ALL
    for key, value in logits.items():
        assert value.shape == (5,)
        torch.testing.assert_close(value, centre[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 120, 120), r"\(3, 120, 120\)"),
        ((1, 1, 120, 120), r"\(1, 1, 120, 120\)"),
        ((1, 3, 118, 120), r"h >= 120 .*\(1, 3, 118, 120\)"),
        ((1, 3, 121, 121), r"even .*\(1, 3, 121, 121\)"),
    ],
)
def test_classify_patches_rejects_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        _tiny().classify_patches(torch.rand(*shape))


def test_forward_rejects_bad_input():
    net = _tiny()
    with pytest.raises(ValueError, match=r"\(3, 20, 20\)"):
        net(torch.rand(3, 20, 20))
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        net(torch.zeros(1, 3, 20, 20, dtype=torch.uint8))


# ---------------------------------------------------------------- dense == patch classification


def _check_dense_equals_patches(net: MultiScaleFNR, image: torch.Tensor, cells: list[tuple[int, int]]) -> None:
    with torch.inference_mode():
        dense = net(image[None])
        patches = torch.stack([extract_patch(image, x=4 * j, y=4 * i, size=120) for i, j in cells])
        probs = {k: torch.sigmoid(v) for k, v in net.classify_patches(patches).items()}
    probs[FUSED_KEY] = torch.stack(list(probs.values())).amax(0)
    rows, cols = torch.tensor(cells).T
    for key, prob in probs.items():
        torch.testing.assert_close(dense[key][0, 0, rows, cols], prob, atol=1e-5, rtol=0, msg=key)


def test_dense_equals_patch_classification_every_cell():
    """Every cell of every map (tiny widths, odd image smaller than the largest patch on one axis)."""
    net = _tiny(seed=1)
    image = torch.rand(3, 37, 130, generator=torch.Generator().manual_seed(1))
    cells = [(i, j) for i in range(math.ceil(37 / 4)) for j in range(math.ceil(130 / 4))]
    _check_dense_equals_patches(net, image, cells)


def test_dense_equals_patch_classification_default_widths():
    """Default widths at random cells, borders included."""
    torch.manual_seed(2)
    net = _randomise_norms(MultiScaleFNR(), seed=2)
    image = torch.rand(3, 70, 93, generator=torch.Generator().manual_seed(2))
    rng = np.random.default_rng(2)
    cells = [(int(rng.integers(0, 18)), int(rng.integers(0, 24))) for _ in range(24)] + [(0, 0), (17, 23), (0, 23)]
    _check_dense_equals_patches(net, image, cells)


def test_dense_equals_patch_on_1x1_image():
    net = _tiny(seed=3)
    image = torch.rand(3, 1, 1)
    _check_dense_equals_patches(net, image, [(0, 0)])


# ---------------------------------------------------------------- receptive field = patch


def test_stem_receptive_field_and_stride():
    net = _tiny()
    assert conv_receptive_field([net.stem1.conv, net.stem2.conv]) == ((8, 8), (OUTPUT_STRIDE, OUTPUT_STRIDE))


def test_receptive_fields_equal_patch_sizes():
    net = MultiScaleFNR()
    assert net.patch_sizes() == EXPECTED_PATCHES
    assert net.receptive_fields() == EXPECTED_PATCHES
    assert net.sample_size == (120, 120)


@pytest.mark.parametrize("name", ALL)
def test_gradient_support_is_exactly_the_patch(name):
    """Each sub-model's logit depends on every pixel of its centre crop(s) of the 120x120 sample and on nothing else."""
    # widths 8/4, not TINY: with 4/3 channels whole paths can be dead ReLUs and leave zero gradients
    net = _tiny(seed=4, sub_models=[name], head_channels=8, features=4)
    x = torch.rand(4, 3, 120, 120, requires_grad=True, generator=torch.Generator().manual_seed(4))
    net.classify_patches(x)[name].sum().backward()
    support = (x.grad.abs().sum(dim=(0, 1)) > 0).numpy()
    expected = np.zeros((120, 120), dtype=bool)
    for ph, pw in EXPECTED_PATCHES[name]:
        expected[60 - ph // 2 : 60 + ph // 2, 60 - pw // 2 : 60 + pw // 2] = True
    np.testing.assert_array_equal(support, expected)


def test_custom_patch_size_and_dilations():
    net = _tiny(sub_models=["square72", "crossbar"], patch_sizes={"square72": 64, "crossbar": [96, 44]})
    assert net.receptive_fields() == {"square72": [(64, 64)], "crossbar": [(96, 44), (44, 96)]}
    assert net.sample_size == (96, 96)
    # span (64 - 8) / 4 = 14 cells, body [1, 2] uses 6, the 3-tap feature conv spans 8: dilation 4
    assert net.heads["square72"].branches[0][-1].conv.dilation == (4, 4)
    image = torch.rand(3, 23, 31)
    with torch.inference_mode():
        dense = net(image[None])
        patches = torch.stack([extract_patch(image, 4 * j, 4 * i, 96) for i, j in [(0, 0), (3, 5), (5, 7)]])
        logits = net.classify_patches(patches)
    torch.testing.assert_close(dense["crossbar"][0, 0, [0, 3, 5], [0, 5, 7]], torch.sigmoid(logits["crossbar"]))


# ---------------------------------------------------------------- config knobs


def test_subset_of_sub_models_and_order():
    net = _tiny(sub_models=["dilated120", "square72"])
    assert net.sub_models == ("dilated120", "square72")
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 9, 9))
    assert list(out) == ["dilated120", "square72", FUSED_KEY]
    assert net.sample_size == (120, 120)
    small = _tiny(sub_models=["square72"])
    assert small.sample_size == (72, 72)
    assert small.classify_patches(torch.rand(2, 3, 72, 72))["square72"].shape == (2,)


def test_knob_mappings_and_head_channels():
    net = MultiScaleFNR(head_channels={"square96": 8}, features=5, sub_models=["square96", "crossbar"])
    assert net.heads["square96"].branches[0][0].conv.out_channels == 8
    assert net.heads["crossbar"].branches[0][0].conv.out_channels == 20
    assert net.heads["crossbar"].classifier.in_channels == 10
    # knobs for sub-models that are not built are accepted and ignored
    MultiScaleFNR(sub_models=["square72"], patch_sizes={"dilated120": 120})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sub_models": ["square27"]}, "did you mean 'square72'"),
        ({"sub_models": "square72"}, "non-empty list"),
        ({"sub_models": []}, "non-empty list"),
        ({"sub_models": ["crossbar", "crossbar"]}, "repeated"),
        ({"patch_sizes": {"sqare96": 96}}, "patch_sizes: .*did you mean 'square96'"),
        ({"patch_sizes": {"square72": 70}}, "multiple of 4"),
        ({"patch_sizes": {"square72": 68}}, "leaving 9"),
        ({"patch_sizes": {"square72": [72, 72, 1]}}, "pair"),
        ({"dilations": {"square72": [7]}, "final_kernels": {"square72": 2}}, "holes"),
        ({"dilations": {"square72": [0, 2]}}, ">= 1"),
        ({"dilations": {"square72": 2}}, "must be a list"),
        ({"final_kernels": {"dilated120": 1}}, "1 taps"),
        ({"head_channels": 0}, "head_channels"),
        ({"stem_channels": [16]}, r"\[c1, c2\]"),
        ({"features": -1}, "features"),
    ],
)
def test_bad_knobs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleFNR(**kwargs)


def test_training_mode_backward():
    net = MultiScaleFNR(**TINY).train()
    logits = net.classify_patches(torch.rand(4, 3, 120, 120))
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(v, torch.ones(4)) for v in logits.values())
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())

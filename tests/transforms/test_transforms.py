"""Colour transforms: exact behaviour on hand-made inputs, determinism, dict wrappers, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from skimage.color import hed_from_rgb, rgb_from_hed

from mssn_monai.data.synthetic import StainStyle, generate_field
from mssn_monai.transforms import (
    RUIFROK_HED_FROM_RGB,
    NormalizeHEStain,
    NormalizeHEStaind,
    RandHEStainJitter,
    RandHEStainJitterd,
    RandHSVJitter,
    RandHSVJitterd,
    estimate_he_stains,
)


def _random_rgb(seed: int = 0, size: int = 16, low: float = 0.02) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, 1.0, (3, size, size)).astype(np.float32)


def _field_chw(style: StainStyle, seed: int, size: int = 192) -> np.ndarray:
    return np.moveaxis(generate_field((size, size), seed=seed, style=style).image, -1, 0).astype(np.float32) / 255.0


# ---- RandHEStainJitter ---------------------------------------------------------------------------


def test_matrix_is_skimage_ruifrok():
    np.testing.assert_allclose(RUIFROK_HED_FROM_RGB, hed_from_rgb)
    np.testing.assert_allclose(RUIFROK_HED_FROM_RGB @ rgb_from_hed, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_stain_jitter_identity_round_trips(as_tensor):
    img = _random_rgb(low=1e-3)
    t = RandHEStainJitter(sigma=0.0, bias=0.0)
    out = t(torch.from_numpy(img) if as_tensor else img)
    assert isinstance(out, torch.Tensor) == as_tensor
    assert out.dtype == (torch.float32 if as_tensor else np.float32)
    np.testing.assert_allclose(np.asarray(out), img, atol=1e-5)


def test_stain_jitter_forced_draw_is_identity_and_matches_formula():
    img = _random_rgb(seed=3, low=0.05)
    t = RandHEStainJitter(sigma=0.3, bias=0.05)
    t.randomize()
    t.alpha, t.beta = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(t(img, randomize=False), img, atol=1e-5)
    # a hand-written draw against the textbook formula (float64, row vectors)
    t.alpha, t.beta = np.array([0.8, 1.2, 1.0]), np.array([0.02, -0.01, 0.0])
    od = -np.log(img.astype(np.float64).reshape(3, -1).T)
    conc = od @ hed_from_rgb * t.alpha + t.beta
    expected = np.clip(np.exp(-(conc @ rgb_from_hed)), 0, 1).T.reshape(img.shape)
    np.testing.assert_allclose(t(img, randomize=False), expected, atol=1e-5)


def test_stain_jitter_keeps_white_under_scaling():
    white = np.ones((3, 4, 4), np.float32)
    t = RandHEStainJitter(sigma=0.5, bias=0.0)
    t.set_random_state(seed=0)
    for _ in range(5):
        np.testing.assert_allclose(t(white), white, atol=1e-6)


def test_stain_jitter_output_range_and_no_mutation():
    img = _random_rgb(seed=1, low=0.0)
    img[:, 0, 0] = 0.0
    img[:, 0, 1] = 1.0
    before = img.copy()
    t = RandHEStainJitter(sigma=0.9, bias=0.5)
    t.set_random_state(seed=1)
    for _ in range(5):
        out = t(img)
        assert out.min() >= 0.0 and out.max() <= 1.0 and np.isfinite(out).all()
    np.testing.assert_array_equal(img, before)


def test_stain_jitter_same_seed_same_output_and_prob_zero():
    img = _random_rgb(seed=2)
    a = RandHEStainJitter().set_random_state(seed=7)
    b = RandHEStainJitter().set_random_state(seed=7)
    out_a, out_b = a(img), b(img)
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.allclose(out_a, img)
    assert RandHEStainJitter(prob=0.0)(img) is img


def test_stain_jitter_batch_and_errors():
    batch = torch.rand(2, 3, 5, 5)
    assert RandHEStainJitter()(batch).shape == (2, 3, 5, 5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\), got shape \(5, 5, 3\)"):
        RandHEStainJitter()(np.zeros((5, 5, 3), np.float32))
    with pytest.raises(TypeError, match="got dtype uint8"):
        RandHEStainJitter()(np.zeros((3, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="sigma must be in"):
        RandHEStainJitter(sigma=1.0)
    with pytest.raises(ValueError, match="bias must be"):
        RandHEStainJitter(bias=-0.1)


# ---- RandHSVJitter -------------------------------------------------------------------------------


def test_hsv_identity_and_hue_rotation():
    img = _random_rgb(seed=4, low=0.0)
    np.testing.assert_allclose(RandHSVJitter(0.0, 0.0, 0.0)(img), img, atol=1e-6)
    t = RandHSVJitter(hue=0.5)
    t.randomize()
    t.hue_shift, t.saturation_scale, t.value_scale = 1.0 / 3.0, 1.0, 1.0
    red = np.zeros((3, 1, 2), np.float32)
    red[0] = [1.0, 0.5]  # pure red at V=1 and V=0.5
    np.testing.assert_allclose(t(red, randomize=False)[:, 0], [[0.0, 0.0], [1.0, 0.5], [0.0, 0.0]], atol=1e-6)


def test_hsv_grey_unchanged_by_hue_and_saturation_and_value_scales():
    grey = np.full((3, 2, 2), 0.4, np.float32)
    t = RandHSVJitter(hue=0.5, saturation=1.0, value=0.0).set_random_state(seed=0)
    for _ in range(3):
        np.testing.assert_allclose(t(grey), grey, atol=1e-6)
    t = RandHSVJitter(0.0, 0.0, 0.5)
    t.randomize()
    t.value_scale = 0.5
    colour = np.array([0.8, 0.4, 0.2], np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(t(colour, randomize=False), colour * 0.5, atol=1e-6)


def test_hsv_range_type_and_errors():
    t = RandHSVJitter(hue=0.5, saturation=1.0, value=1.0).set_random_state(seed=3)
    out = t(torch.from_numpy(_random_rgb(seed=5, low=0.0)))
    assert isinstance(out, torch.Tensor) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="hue must be in"):
        RandHSVJitter(hue=0.6)


# ---- dictionary wrappers -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RandHEStainJitterd, RandHSVJitterd])
def test_dict_wrapper_one_draw_for_all_keys(cls):
    img = _random_rgb(seed=6)
    t = cls(keys=["image", "partner"]).set_random_state(seed=11)
    out = t({"image": img, "partner": img.copy(), "label": 1})
    np.testing.assert_array_equal(out["image"], out["partner"])
    assert not np.allclose(out["image"], img)
    assert out["label"] == 1
    again = cls(keys=["image", "partner"]).set_random_state(seed=11)({"image": img, "partner": img})
    np.testing.assert_array_equal(again["image"], out["image"])


@pytest.mark.parametrize("cls", [RandHEStainJitterd, RandHSVJitterd, NormalizeHEStaind])
def test_dict_wrapper_missing_key_is_named(cls):
    with pytest.raises(KeyError, match="partner"):
        cls(keys=["image", "partner"])({"image": _random_rgb()})
    out = cls(keys=["image", "partner"], allow_missing_keys=True)({"image": _random_rgb()})
    assert set(out) == {"image"}


def test_dict_wrapper_in_compose_is_deterministic():
    img = _random_rgb(seed=8)
    chain = [RandHEStainJitterd("image", prob=0.5), RandHSVJitterd("image", prob=0.5)]
    a = Compose(chain).set_random_state(seed=3)
    b = Compose([RandHEStainJitterd("image", prob=0.5), RandHSVJitterd("image", prob=0.5)]).set_random_state(seed=3)
    for _ in range(4):
        np.testing.assert_array_equal(a({"image": img})["image"], b({"image": img})["image"])


# ---- NormalizeHEStain ----------------------------------------------------------------------------


def test_normalizer_brings_two_stainings_of_one_field_together():
    rng = np.random.default_rng(101)
    style_a, style_b = StainStyle.random(rng), StainStyle.random(rng)
    a, b = _field_chw(style_a, seed=1), _field_chw(style_b, seed=1)
    norm = NormalizeHEStain()
    fit_a = norm.fit(a)
    assert fit_a is not None
    # the estimated hematoxylin vector is the one the generator used (first row = H, not E)
    assert np.dot(fit_a[1][0], style_a.stain_h) > 0.99
    before = np.linalg.norm(a.mean(axis=(1, 2)) - b.mean(axis=(1, 2)))
    after = np.linalg.norm(norm(a).mean(axis=(1, 2)) - norm(b).mean(axis=(1, 2)))
    assert after < 0.5 * before


def test_normalizer_falls_back_unchanged_without_tissue():
    norm = NormalizeHEStain()
    blank = np.full((3, 32, 32), 0.95, np.float32)
    assert norm.fit(blank) is None
    assert norm(blank) is blank
    few = blank.copy()
    few[:, :3, :3] = 0.3  # 9 tissue pixels < min_tissue_pixels
    assert norm(few) is few
    grey = np.random.default_rng(0).uniform(0.2, 0.6, (1, 32, 32)).repeat(3, axis=0).astype(np.float32)
    assert norm(grey) is grey  # no H&E colour: implausible vectors, unchanged


def test_normalizer_type_range_and_fixed_white():
    rng = np.random.default_rng(3)
    img = torch.from_numpy(_field_chw(StainStyle.random(rng), seed=2, size=96))
    out = NormalizeHEStain(white=1.0)(img)
    assert isinstance(out, torch.Tensor) and out.shape == img.shape and out.dtype == img.dtype
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="target_stains must be"):
        NormalizeHEStain(target_stains=[[1, 0, 0]])
    with pytest.raises(ValueError, match="one image"):
        NormalizeHEStain()(torch.rand(2, 3, 8, 8))


def test_normalizer_fits_large_images_on_a_regular_subsample_and_applies_pixel_by_pixel():
    """fit on an image over max_fit_pixels = fit on every s-th row and column; apply on a crop = crop of the whole."""
    rng = np.random.default_rng(5)
    img = _field_chw(StainStyle.random(rng), seed=3, size=96)  # 9216 pixels
    small = NormalizeHEStain(max_fit_pixels=1100)  # -> every 3rd row and column (32 x 32 = 1024)
    fitted = small.fit(img)
    for a, b in zip(fitted, NormalizeHEStain().fit(np.ascontiguousarray(img[:, ::3, ::3])), strict=True):
        np.testing.assert_array_equal(a, b)
    whole = small.apply(img, fitted)
    np.testing.assert_array_equal(small.apply(img[:, 10:50, 20:70], fitted), whole[:, 10:50, 20:70])
    np.testing.assert_array_equal(small(img), whole)
    with pytest.raises(ValueError, match="max_fit_pixels"):
        NormalizeHEStain(max_fit_pixels=0)


def test_normalizer_apply_uint8_looks_up_the_same_numbers():
    """apply_uint8 on uint8 pixels = apply on the float copy, to the bit, for every level of every channel."""
    from mssn_monai.ops.intensity import hwc_to_chw_float, to_uint8

    rng = np.random.default_rng(7)
    norm = NormalizeHEStain()
    field = to_uint8(torch.from_numpy(_field_chw(StainStyle.random(rng), seed=4, size=96))).permute(1, 2, 0).numpy()
    fitted = norm.fit_field(field)
    assert fitted is not None
    every_level = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).astype(np.uint8)
    every_level = np.concatenate([every_level, every_level[..., :1]], axis=-1)  # (256, 256, 3): all pairs
    for image in (field, every_level, field[::-1, 5:40]):  # and a non-contiguous view
        out = norm.apply_uint8(image, fitted)
        assert out.dtype == torch.float32 and out.shape == (3, *image.shape[:2])
        assert torch.equal(out, norm.apply(hwc_to_chw_float(image), fitted))
    with pytest.raises(ValueError, match="uint8"):
        norm.apply_uint8(field.astype(np.float32), fitted)


def test_estimate_he_stains_on_pure_mixture():
    # an exact two-stain mixture with known vectors: the estimate recovers them (H first)
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.random.default_rng(0).uniform(0.0, 1.5, (2000, 2))
    conc[:300, 1] = 0.0  # pure hematoxylin pixels
    conc[300:600, 0] = 0.0  # pure eosin pixels
    est, max_conc = estimate_he_stains(conc @ stains, alpha=0.0)
    np.testing.assert_allclose(est, stains, atol=1e-6)
    np.testing.assert_allclose(max_conc, np.percentile(conc[np.linalg.norm(conc @ stains, axis=1) > 0.15], 99, 0))


def test_rand_jpeg_compression():
    from mssn_monai.transforms import RandJPEGCompression, RandJPEGCompressiond

    rng = np.random.default_rng(0)
    smooth = np.repeat(np.linspace(0.2, 0.8, 32, dtype=np.float32)[None, None, :], 32, axis=1)
    img = np.concatenate([smooth, smooth[:, ::-1], 0.5 * np.ones_like(smooth)])
    t = RandJPEGCompression(quality=(90, 90))
    out = t(img)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert 0 < np.abs(out - img).mean() < 0.02  # changed, but a smooth image survives quality 90
    noisy = rng.random((3, 32, 32)).astype(np.float32)
    low = RandJPEGCompression(quality=(10, 10))(torch.as_tensor(noisy))
    assert isinstance(low, torch.Tensor) and float((low - torch.as_tensor(noisy)).abs().mean()) > 0.05
    assert RandJPEGCompression(prob=0.0)(img) is img
    d = RandJPEGCompressiond(["a", "b"], quality=(30, 95))
    d.set_random_state(3)
    res = d({"a": torch.as_tensor(img), "b": torch.as_tensor(img)})
    assert torch.equal(res["a"], res["b"])  # one draw for both keys
    with pytest.raises(ValueError, match="quality"):
        RandJPEGCompression(quality=(0, 50))

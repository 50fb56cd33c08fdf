"""Colour transforms for domain shift: H&E stain jitter, HSV jitter and Macenko stain normalisation.

Image convention (every transform here): channel-first RGB float ``(3, H, W)`` in ``[0, 1]``
(``uint8 / 255``), a ``numpy.ndarray`` or a ``torch.Tensor`` (a MONAI ``MetaTensor`` included); the
output has the input's type, dtype and device. Leading batch axes, ``(..., 3, H, W)``, are accepted
too; a random transform then applies one draw to the whole batch.

Colour model: light through a stained section follows Beer-Lambert, so the optical density
``OD = -ln(I / I0)`` of a pixel (per RGB channel, ``I0`` = the white of the scanner) is a linear mix of
per-stain OD vectors weighted by stain amounts (concentrations). The Ruifrok-Johnston matrix
(:data:`skimage.color.rgb_from_hed`, rows hematoxylin, eosin, DAB) and its inverse
(:data:`skimage.color.hed_from_rgb`) convert between OD and concentrations. Unlike
:func:`skimage.color.rgb2hed`, concentrations here are in plain OD units (natural log, no ``1 / ln(1e-6)``
rescaling) and are not clipped at zero, so ``RGB -> HED -> RGB`` is exact for every pixel above
:data:`MIN_INTENSITY`.

MONAI already has gamma (``RandAdjustContrast``), brightness (``RandScaleIntensity``,
``RandShiftIntensity``), blur (``RandGaussianSmooth``), noise (``RandGaussianNoise``), flips, 90-degree
rotations and zoom; those are used as they are in the bundle configs and not re-implemented here.

Why not MONAI's ``monai.apps.pathology.transforms.NormalizeHEStains`` (Macenko)? Checked against MONAI
1.6.1 on our synthetic fields: (1) it takes only ``(H, W, 3)`` uint8 numpy images; (2) it raises
``ValueError`` on a patch without tissue (all pixels below the absorbance threshold), which background
patches and blank tiles are; (3) its hematoxylin/eosin ordering puts the vector with the *lower* red/blue
OD ratio first as hematoxylin (MONAI PR #8551), but in OD space hematoxylin has the higher red/blue
ratio (Ruifrok H = (0.65, 0.70, 0.29), E = (0.07, 0.99, 0.11)), so on our fields it returns eosin first
and maps each stain onto the other's reference colour; (4) the white point is fixed (``tli=240``).
:class:`NormalizeHEStain` is our Macenko variant without those problems.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from skimage.color import hed_from_rgb, rgb_from_hed

from mssn_monai.constants import MAX_FIT_PIXELS
from mssn_monai.ops.intensity import fit_stride, hwc_to_chw_float, to_float01, to_uint8

__all__ = [
    "RandJPEGCompression",
    "MIN_INTENSITY",
    "RUIFROK_RGB_FROM_HED",
    "RUIFROK_HED_FROM_RGB",
    "MACENKO_REFERENCE_STAINS",
    "MACENKO_REFERENCE_MAX_CONCENTRATIONS",
    "rgb_to_od",
    "od_to_rgb",
    "estimate_he_stains",
    "RandHEStainJitter",
    "RandHSVJitter",
    "NormalizeHEStain",
]

logger = logging.getLogger(__name__)

MIN_INTENSITY: Final[float] = 1e-6
"""Intensities are clipped to at least this before ``-ln`` (as in :func:`skimage.color.separate_stains`)."""

RUIFROK_RGB_FROM_HED: Final[np.ndarray] = np.array(rgb_from_hed, dtype=np.float64)
"""``(3, 3)`` rows: OD vectors (R, G, B) of hematoxylin, eosin, DAB (Ruifrok & Johnston 2001, via skimage)."""

RUIFROK_HED_FROM_RGB: Final[np.ndarray] = np.array(hed_from_rgb, dtype=np.float64)
"""``(3, 3)`` inverse of :data:`RUIFROK_RGB_FROM_HED`: ``conc = od @ RUIFROK_HED_FROM_RGB`` (row vectors)."""

MACENKO_REFERENCE_STAINS: Final[tuple[tuple[float, float, float], ...]] = (
    (0.5626, 0.7201, 0.4062),
    (0.2159, 0.8012, 0.5581),
)
"""Reference OD vectors (rows: hematoxylin, eosin; columns R, G, B) of Macenko et al.'s reference slide
(``HERef`` of the authors' MATLAB code, also MONAI's default ``target_he``)."""

MACENKO_REFERENCE_MAX_CONCENTRATIONS: Final[tuple[float, float]] = (1.9705, 1.0308)
"""99th-percentile hematoxylin and eosin concentrations (OD units) of that reference slide (``maxCRef``)."""


def _check_rgb(img: NdarrayOrTensor, name: str) -> None:
    """Raise unless ``img`` is a floating ``(..., 3, H, W)`` array or tensor."""
    if not isinstance(img, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} expects a numpy array or torch tensor (..., 3, H, W), got {type(img).__name__}.")
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"{name} expects a channel-first RGB image (..., 3, H, W), got shape {tuple(img.shape)}.")
    floating = img.dtype.is_floating_point if isinstance(img, torch.Tensor) else np.issubdtype(img.dtype, np.floating)
    if not floating:
        raise TypeError(f"{name} expects a float image in [0, 1] (uint8 / 255), got dtype {img.dtype}.")


def _as_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    """A plain tensor view of ``img`` (no copy for numpy arrays and tensors; MetaTensor metadata dropped)."""
    if isinstance(img, torch.Tensor):
        return img.as_tensor() if hasattr(img, "as_tensor") else img
    return torch.from_numpy(np.ascontiguousarray(img))


def rgb_to_od(img: torch.Tensor, white: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Optical density ``-ln(max(I, MIN_INTENSITY) / white)`` per channel.

    Args:
        img: ``(..., 3, H, W)`` float tensor, intensities in [0, 1].
        white: the intensity of an empty pixel (``I0``): a scalar or a tensor broadcastable to ``img``
            (e.g. ``(3, 1, 1)`` per channel).

    Returns:
        ``(..., 3, H, W)`` OD (0 for white; negative for pixels brighter than ``white``).
    """
    od = torch.log(img.clamp_min(MIN_INTENSITY)).neg_()
    if isinstance(white, torch.Tensor) or white != 1.0:
        od += torch.log(torch.as_tensor(white, dtype=img.dtype, device=img.device))
    return od


def od_to_rgb(od: torch.Tensor, white: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Inverse of :func:`rgb_to_od`, clipped to [0, 1]: ``clip(white * exp(-od), 0, 1)``."""
    return (torch.as_tensor(white, dtype=od.dtype, device=od.device) * torch.exp(-od)).clamp_(0.0, 1.0)


def _mix_channels(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Row-vector colour map over the channel axis: ``out[..., d, h, w] = sum_c x[..., c, h, w] * matrix[c, d]``."""
    return (matrix.T @ x.reshape(*x.shape[:-2], -1)).reshape(x.shape)


class RandHEStainJitter(RandomizableTransform):
    """Randomly change the amount of each stain, in optical-density space (Tellez et al. 2018).

    Per call it draws, per stain ``s`` of (hematoxylin, eosin, DAB/residual), a scale
    ``alpha_s ~ U(1 - sigma, 1 + sigma)`` and a shift ``beta_s ~ U(-bias, bias)``, then::

        conc = OD(img) @ hed_from_rgb                     # Ruifrok-Johnston deconvolution
        out  = clip(exp(-((conc * alpha + beta) @ rgb_from_hed)), 0, 1)

    The whole map is one ``3 x 3`` matrix plus an offset on OD, so it costs a log, a tiny matrix product
    and an exp per pixel (about 0.2 ms for a 120x120 patch on one CPU core). With ``alpha = 1`` and
    ``beta = 0`` it is the identity for every pixel above :data:`MIN_INTENSITY`; scaling alone keeps
    white white (``OD = 0``); the shift tints everything, background included.

    Defaults, and why: ``sigma=0.25`` varies each stain amount by up to 25 %. That spans the spread of
    stain amounts between slides of our synthetic generator (hematoxylin x0.75-1.3, eosin x0.6-1.4,
    i.e. about +-27 % and +-40 % around their means) and sits at Tellez et al.'s "HED-strong" setting
    (scales in [0.8, 1.2]), the kind of strong colour augmentation their 2019 study found to help most
    on unseen centres. ``bias=0.03`` OD shifts a pure stain's intensity by about 3 %, the order of
    background-tint differences between scanners; much larger shifts colour white background visibly.
    Both are in plain OD units (see the module docstring); published shifts are often on skimage's
    rescaled ``rgb2hed`` scale, so their numbers do not transfer one to one.

    Args:
        sigma: half-width of the scale range, in [0, 1).
        bias: half-width of the shift range, in OD units, >= 0.
        prob: probability of applying the jitter.

    Raises:
        ValueError: ``sigma`` outside [0, 1) or a negative ``bias``.

    Example:
        >>> t = RandHEStainJitter(sigma=0.25, bias=0.03, prob=1.0)
        >>> _ = t.set_random_state(seed=0)
        >>> t(np.full((3, 4, 4), 0.5, np.float32)).shape
        (3, 4, 4)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, sigma: float = 0.25, bias: float = 0.03, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        if not (math.isfinite(sigma) and 0.0 <= sigma < 1.0):
            raise ValueError(f"sigma must be in [0, 1) so that stain scales stay positive, got {sigma!r}.")
        if not (math.isfinite(bias) and bias >= 0.0):
            raise ValueError(f"bias must be a finite number >= 0 (OD units), got {bias!r}.")
        self.sigma = float(sigma)
        self.bias = float(bias)
        self.alpha = np.ones(3)
        self.beta = np.zeros(3)

    def randomize(self, data: object = None) -> None:
        """Draw whether to apply and, if so, ``alpha`` (3,) and ``beta`` (3,) for H, E, DAB."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.alpha = self.R.uniform(1.0 - self.sigma, 1.0 + self.sigma, size=3)
        self.beta = self.R.uniform(-self.bias, self.bias, size=3)

    def od_transform(self) -> tuple[np.ndarray, np.ndarray]:
        """The current draw as an OD map ``od_out = od @ matrix + offset``: ``matrix`` (3, 3), ``offset`` (3,)."""
        matrix = RUIFROK_HED_FROM_RGB @ np.diag(self.alpha) @ RUIFROK_RGB_FROM_HED
        offset = self.beta @ RUIFROK_RGB_FROM_HED
        return matrix, offset

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Jitter ``img`` (``(..., 3, H, W)`` float in [0, 1]); returns the same type, clipped to [0, 1].

        Args:
            img: the image.
            randomize: draw new parameters first (``False`` reuses the last draw, as dict wrappers do).
        """
        _check_rgb(img, type(self).__name__)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = _as_tensor(img)
        matrix, offset = self.od_transform()
        m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
        b = torch.as_tensor(offset, dtype=x.dtype, device=x.device)[:, None, None]
        out = od_to_rgb(_mix_channels(rgb_to_od(x), m) + b)
        return convert_to_dst_type(out, img)[0]


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(..., 3, H, W)`` RGB in [0, 1] -> hue in [0, 1) (a fraction of a turn), saturation, value: ``(..., H, W)``.

    Grey pixels get hue 0, black gets saturation 0.
    """
    r, g, b = rgb.unbind(-3)
    value, argmax = rgb.max(dim=-3)
    chroma = value - rgb.min(dim=-3).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # hue sextant by the largest channel; where two channels tie, both formulas give the same hue
    hue = torch.where(
        argmax == 0,
        (g - b) / safe_chroma,
        torch.where(argmax == 1, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0),
    )
    hue = torch.where(chroma > 0, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))  # 0 for black: chroma is 0
    return hue, saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`.

    ``c_n = V - V S clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 H) mod 6`` and ``n`` = 5, 3, 1 for R, G, B.
    """
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hue.dtype, device=hue.device).view(3, 1, 1)
    k = torch.remainder(n + 6.0 * hue.unsqueeze(-3), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value.unsqueeze(-3) * (1.0 - saturation.unsqueeze(-3) * ramp)


class RandHSVJitter(RandomizableTransform):
    """Randomly shift hue and scale saturation and value (brightness) of an RGB image.

    Covers scanner colour differences that are not a change of stain amounts (colour profiles, white
    balance, sensor gamut); :class:`RandHEStainJitter` covers the staining. Per call it draws a hue
    shift ``dh ~ U(-hue, hue)`` (fraction of a full turn, wrapped), a saturation scale
    ``ks ~ U(1 - saturation, 1 + saturation)`` and a value scale ``kv ~ U(1 - value, 1 + value)``, then
    ``H' = (H + dh) mod 1``, ``S' = clip(ks S, 0, 1)``, ``V' = clip(kv V, 0, 1)``. Grey pixels
    (``S = 0``) keep their colour under hue and saturation changes.

    Defaults: ``hue=0.04`` (about +-14 degrees) moves colours by a quarter of the hue gap between
    hematoxylin and eosin (about 245 and 300 degrees with Ruifrok's vectors), so nuclei stay
    blue-purple and stroma pink; ``saturation=0.2`` (faded to vivid stains); ``value=0.1`` (scanner
    exposure; more brightness is MONAI's ``RandScaleIntensity``'s job).

    Args:
        hue: half-width of the hue shift, fraction of a turn, in [0, 0.5].
        saturation: half-width of the saturation scale range, in [0, 1].
        value: half-width of the value scale range, in [0, 1].
        prob: probability of applying the jitter.

    Raises:
        ValueError: a half-width outside its range.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, hue: float = 0.04, saturation: float = 0.2, value: float = 0.1, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        for name, v, hi in (("hue", hue, 0.5), ("saturation", saturation, 1.0), ("value", value, 1.0)):
            if not (math.isfinite(v) and 0.0 <= v <= hi):
                raise ValueError(f"{name} must be in [0, {hi:g}], got {v!r}.")
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.value = float(value)
        self.hue_shift = 0.0
        self.saturation_scale = 1.0
        self.value_scale = 1.0

    def randomize(self, data: object = None) -> None:
        """Draw whether to apply and, if so, ``hue_shift``, ``saturation_scale`` and ``value_scale``."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.hue_shift = float(self.R.uniform(-self.hue, self.hue))
        self.saturation_scale = float(self.R.uniform(1.0 - self.saturation, 1.0 + self.saturation))
        self.value_scale = float(self.R.uniform(1.0 - self.value, 1.0 + self.value))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Jitter ``img`` (``(..., 3, H, W)`` float in [0, 1]); returns the same type.

        Args:
            img: the image.
            randomize: draw new parameters first (``False`` reuses the last draw, as dict wrappers do).
        """
        _check_rgb(img, type(self).__name__)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = _as_tensor(img).clamp(0.0, 1.0)
        hue, sat, val = _rgb_to_hsv(x)
        out = _hsv_to_rgb(
            torch.remainder(hue + self.hue_shift, 1.0),
            (sat * self.saturation_scale).clamp_(0.0, 1.0),
            (val * self.value_scale).clamp_(0.0, 1.0),
        )
        return convert_to_dst_type(out, img)[0]


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def estimate_he_stains(
    od: np.ndarray,
    beta: float = 0.15,
    alpha: float = 1.0,
    min_tissue_pixels: int = 100,
    max_angle_deg: float = 35.0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Estimate the hematoxylin and eosin OD vectors of an image (Macenko et al. 2009), or ``None``.

    Tissue pixels are those with ``||od||_2 > beta``. Their OD is projected onto the plane of the two
    main principal directions; the stain vectors are the directions at the ``alpha`` and
    ``100 - alpha`` percentiles of the angle in that plane. The principal directions are signed so that
    they point into the positive OD octant, which keeps the angles away from the +-pi wrap. Each
    estimate is matched to the Ruifrok hematoxylin or eosin vector it is closer to (the assignment with
    the larger summed cosine), not by a colour-ratio rule.

    Args:
        od: ``(N, 3)`` optical densities (rows are pixels).
        beta: tissue threshold on the OD norm (0.15 as in Macenko et al.).
        alpha: percentile (0-50) of the extreme angles, for robustness to outliers.
        min_tissue_pixels: fewer tissue pixels than this gives ``None``.
        max_angle_deg: an estimate further than this from its Ruifrok reference vector, or negative in
            any channel beyond rounding, gives ``None`` (one stain missing, or no H&E at all).

    Returns:
        ``(stains, max_concentrations)``: ``stains`` ``(2, 3)`` unit OD vectors (rows H, E), and the
        99th percentile of each stain's concentration over the tissue pixels ``(2,)``; or ``None`` when
        the image has too little tissue or the estimate is not plausible H&E.
    """
    od = np.asarray(od, dtype=np.float64).reshape(-1, 3)
    tissue = od[np.linalg.norm(od, axis=1) > beta]
    if len(tissue) < max(int(min_tissue_pixels), 3):
        return None
    _, vecs = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vecs[:, [2, 1]]  # largest eigenvalue first
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    candidates = _unit_rows(np.stack([plane @ [np.cos(a), np.sin(a)] for a in (lo, hi)]))
    ref = _unit_rows(RUIFROK_RGB_FROM_HED[:2])
    cos = candidates @ ref.T  # (candidate, reference)
    stains = candidates if cos[0, 0] + cos[1, 1] >= cos[0, 1] + cos[1, 0] else candidates[::-1]
    if np.any(stains < -1e-3):
        return None
    stains = _unit_rows(np.clip(stains, 0.0, None))
    angles = np.degrees(np.arccos(np.clip(np.sum(stains * ref, axis=1), -1.0, 1.0)))
    if not np.all(angles <= max_angle_deg):
        return None
    conc = tissue @ np.linalg.pinv(stains)  # (N, 2)
    max_conc = np.percentile(conc, 99, axis=0)
    if not (np.all(np.isfinite(max_conc)) and np.all(max_conc > 1e-6)):
        return None
    return stains, max_conc


class RandJPEGCompression(RandomizableTransform):
    """Randomly JPEG-compress an RGB image at a quality drawn from a range (scanner and archive artefacts).

    Whole-slide scanners and image servers store tiles as JPEG (quality 70-90 is common), which blurs
    chromatin texture and adds block artefacts; a detector that relies on fine texture must see them in
    training. The image is quantised to 8 bits, encoded and decoded with Pillow, and returned as float.

    Args:
        quality: ``(low, high)`` JPEG quality range (1-100), drawn uniformly per call.
        prob: probability of applying the compression.

    Raises:
        ValueError: a quality outside [1, 100] or ``low > high``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, quality: Sequence[int] = (50, 95), prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        low, high = (int(q) for q in quality)
        if not 1 <= low <= high <= 100:
            raise ValueError(f"quality must be (low, high) with 1 <= low <= high <= 100, got {quality!r}.")
        self.quality_range = (low, high)
        self.quality = high

    def randomize(self, data: object = None) -> None:
        """Draw whether to apply and, if so, the ``quality``."""
        super().randomize(None)
        if self._do_transform:
            self.quality = int(self.R.randint(self.quality_range[0], self.quality_range[1] + 1))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Compress ``img`` (``(3, H, W)`` float in [0, 1]); returns the same type, dtype and device."""
        import io

        from PIL import Image

        _check_rgb(img, type(self).__name__)
        if img.ndim != 3:
            raise ValueError(f"{type(self).__name__} expects one image (3, H, W), got shape {tuple(img.shape)}.")
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        u8 = to_uint8(torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, 0, -1)))).numpy()
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=self.quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out = to_float01(torch.from_numpy(np.asarray(im.convert("RGB")).copy())).permute(2, 0, 1).numpy()
        if isinstance(img, torch.Tensor):
            return torch.as_tensor(out, dtype=img.dtype, device=img.device)
        return out.astype(arr.dtype, copy=False)


class NormalizeHEStain(Transform):
    """Deterministic Macenko stain normalisation to a reference H&E appearance, with a safe fallback.

    For each call: estimate the image's white point, its hematoxylin and eosin OD vectors and their
    99th-percentile concentrations (:func:`estimate_he_stains`), unmix every pixel into (H, E)
    concentrations by least squares, rescale each so that its 99th percentile matches the reference,
    and render with the reference stain vectors on a white of ``target_white``. The residual OD
    (outside the H-E plane) is dropped, as in Macenko et al.

    Fallback: when the image has fewer than ``min_tissue_pixels`` tissue pixels, or the estimate is not
    plausible H&E (a stain missing, vectors far from H&E), the image is returned unchanged; nothing is
    raised and nothing is logged per call (it happens for every blank or background-only patch).
    :meth:`fit` tells which case applies.

    Use it on whole fields, not small patches: the estimate needs both stains and some background. At
    inference apply it to the field before tiling; in training apply it to each image once at load (see
    ``field_transform`` of :class:`mssn_monai.data.patches.PatchSampleDataset`), so both see the same.

    Args:
        target_stains: ``(2, 3)`` reference OD vectors, rows hematoxylin then eosin, columns R, G, B
            (normalised to unit length). Default :data:`MACENKO_REFERENCE_STAINS`.
        target_max_concentrations: ``(2,)`` reference 99th-percentile H and E concentrations, OD units.
        target_white: intensity of empty glass in the output, in (0, 1].
        white: intensity of empty glass in the input: a float or an RGB triple in (0, 1], or ``None`` to
            estimate it per channel as the ``white_percentile`` of the image (floored at 0.5), which
            follows scanner white points but assumes some background is in view.
        white_percentile: percentile for the white estimate.
        beta: tissue threshold on the OD norm.
        alpha: angle percentile of the Macenko estimate.
        min_tissue_pixels: fewer tissue pixels than this -> unchanged.
        max_angle_deg: tolerance of the estimated vectors around Ruifrok H and E.
        max_fit_pixels: a larger image is fitted on a regular subsample (every ``s``-th row and column,
            :func:`fit_stride`) of at most this many pixels; bounds the fit's memory on large fields.

    Raises:
        ValueError: a target of the wrong shape, non-positive concentrations or whites.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        target_stains: Sequence[Sequence[float]] | np.ndarray = MACENKO_REFERENCE_STAINS,
        target_max_concentrations: Sequence[float] | np.ndarray = MACENKO_REFERENCE_MAX_CONCENTRATIONS,
        target_white: float = 1.0,
        white: float | Sequence[float] | None = None,
        white_percentile: float = 99.0,
        beta: float = 0.15,
        alpha: float = 1.0,
        min_tissue_pixels: int = 100,
        max_angle_deg: float = 35.0,
        max_fit_pixels: int = MAX_FIT_PIXELS,
    ) -> None:
        if isinstance(max_fit_pixels, bool) or not isinstance(max_fit_pixels, int) or max_fit_pixels < 1:
            raise ValueError(f"max_fit_pixels must be a positive int, got {max_fit_pixels!r}.")
        self.max_fit_pixels = max_fit_pixels
        stains = np.asarray(target_stains, dtype=np.float64)
        if stains.shape != (2, 3) or not np.all(np.isfinite(stains)) or np.any(np.linalg.norm(stains, axis=1) == 0):
            raise ValueError(f"target_stains must be (2, 3) non-zero rows (H, E) x (R, G, B), got {stains.tolist()!r}.")
        max_conc = np.asarray(target_max_concentrations, dtype=np.float64)
        if max_conc.shape != (2,) or not np.all(max_conc > 0):
            raise ValueError(f"target_max_concentrations must be 2 positive numbers, got {max_conc.tolist()!r}.")
        if not 0.0 < target_white <= 1.0:
            raise ValueError(f"target_white must be in (0, 1], got {target_white!r}.")
        if white is not None:
            w = np.broadcast_to(np.asarray(white, dtype=np.float64), (3,))
            if not np.all((w > 0) & (w <= 1)):
                raise ValueError(f"white must be None or in (0, 1] (one value or R, G, B), got {white!r}.")
        if not 50.0 <= white_percentile <= 100.0:
            raise ValueError(f"white_percentile must be in [50, 100], got {white_percentile!r}.")
        self.target_stains = _unit_rows(stains)
        self.target_max_concentrations = max_conc
        self.target_white = float(target_white)
        self.white = None if white is None else np.broadcast_to(np.asarray(white, dtype=np.float64), (3,)).copy()
        self.white_percentile = float(white_percentile)
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.max_angle_deg = float(max_angle_deg)

    def _white_of(self, x: np.ndarray) -> np.ndarray:
        if self.white is not None:
            return self.white
        flat = x.reshape(3, -1)
        if flat.shape[1] > 200_000:  # a strided subsample gives the same percentile to 1e-3 at a fraction of the cost
            flat = flat[:, :: flat.shape[1] // 100_000]
        return np.clip(np.percentile(flat, self.white_percentile, axis=1), 0.5, 1.0)

    def fit(self, img: NdarrayOrTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Estimate the image's white ``(3,)``, stain vectors ``(2, 3)`` and max concentrations ``(2,)``.

        Args:
            img: ``(3, H, W)`` float RGB in [0, 1].

        Returns:
            ``(white, stains, max_concentrations)``, or ``None`` when the image would be returned unchanged.
        """
        _check_rgb(img, type(self).__name__)
        if img.ndim != 3:
            raise ValueError(f"{type(self).__name__} expects one image (3, H, W), got shape {tuple(img.shape)}.")
        t = _as_tensor(img).detach()
        stride = fit_stride(int(t.shape[-2]), int(t.shape[-1]), self.max_fit_pixels)
        x = t[:, ::stride, ::stride].cpu().to(torch.float64).numpy()
        white = self._white_of(x)
        od = -np.log(np.clip(x.reshape(3, -1).T, MIN_INTENSITY, None) / white)
        est = estimate_he_stains(od, self.beta, self.alpha, self.min_tissue_pixels, self.max_angle_deg)
        return None if est is None else (white, *est)

    def fit_field(self, image: np.ndarray | Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """:meth:`fit` on a whole ``(H, W, 3)`` uint8 field without converting all of it to float.

        Only the regular subsample :meth:`fit` would use (every :func:`fit_stride`-th row and column) is
        read and converted, so a large field, or a lazily read one (anything sliceable with steps, e.g.
        :class:`mssn_monai.io.TiledTiffImage`), costs the memory of the subsample only.

        Returns:
            as :meth:`fit`.
        """
        step = fit_stride(int(image.shape[0]), int(image.shape[1]), self.max_fit_pixels)
        return self.fit(hwc_to_chw_float(np.asarray(image[::step, ::step])))

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalise ``img`` (``(3, H, W)`` float in [0, 1]); returns the same type, or ``img`` itself on fallback."""
        fitted = self.fit(img)
        return img if fitted is None else self.apply(img, fitted)

    def apply(self, img: NdarrayOrTensor, fitted: tuple[np.ndarray, np.ndarray, np.ndarray]) -> NdarrayOrTensor:
        """Normalise ``img`` with statistics :meth:`fit` estimated (on it, or on the whole field it is cut from).

        Pixel by pixel, so a crop normalised with its field's statistics equals the same crop of the
        normalised field: what lets a large field be normalised block by block.

        Args:
            img: ``(3, H, W)`` float RGB in [0, 1].
            fitted: ``(white, stains, max_concentrations)`` from :meth:`fit`.

        Returns:
            the normalised image, same type, dtype and device.
        """
        white, stains, max_conc = fitted
        x = _as_tensor(img)
        w = torch.as_tensor(white, dtype=x.dtype, device=x.device).view(3, 1, 1)
        od = rgb_to_od(x.clamp(0.0, 1.0), w)
        out = od_to_rgb(_mix_channels(od, self._render_matrix(stains, max_conc, x)), self.target_white)
        return convert_to_dst_type(out, img)[0]

    def apply_uint8(self, image: np.ndarray, fitted: tuple[np.ndarray, np.ndarray, np.ndarray]) -> torch.Tensor:
        """:meth:`apply` of ``hwc_to_chw_float(image)``, with the optical density looked up, not computed.

        A uint8 channel has 256 levels, so their optical densities are computed once (the same float32
        operations :meth:`apply` runs on every pixel) and each pixel's are looked up: the same numbers,
        without a logarithm per pixel or the float copy of the input (what :class:`FieldDetector`
        reads fields and slide blocks with).

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            fitted: ``(white, stains, max_concentrations)`` from :meth:`fit`.

        Returns:
            ``(3, H, W)`` float32 tensor in ``[0, 1]``.
        """
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {tuple(image.shape)} {image.dtype}.")
        white, stains, max_conc = fitted
        levels = torch.arange(256, dtype=torch.float32).div(255.0).expand(3, 256)
        table = rgb_to_od(levels, torch.as_tensor(white, dtype=torch.float32).view(3, 1)).numpy()  # (3, 256)
        od = np.empty((3, *image.shape[:2]), dtype=np.float32)
        for c in range(3):  # numpy: uint8 indices, written in place
            np.take(table[c], image[..., c], out=od[c])
        mixed = _mix_channels(torch.from_numpy(od), self._render_matrix(stains, max_conc, torch.from_numpy(od)))
        # od_to_rgb's operations, in place on the fresh mixed tensor: the same numbers without 3 temporaries
        white_out = torch.as_tensor(self.target_white, dtype=mixed.dtype)
        return torch.exp_(mixed.neg_()).mul_(white_out).clamp_(0.0, 1.0)

    def _render_matrix(self, stains: np.ndarray, max_conc: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """The ``(3, 3)`` OD map of :meth:`apply`: concentrations (``od @ pinv(stains)``) rescaled per stain,
        rendered with the target stains; dtype and device of ``like``."""
        matrix = np.linalg.pinv(stains) @ np.diag(self.target_max_concentrations / max_conc) @ self.target_stains
        return torch.as_tensor(matrix, dtype=like.dtype, device=like.device)

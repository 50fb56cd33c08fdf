"""Dictionary wrappers of :mod:`mssn_monai.transforms.array`: same knobs, same defaults, keys added.

Each random wrapper draws once per call (whether to apply, and the parameters) and applies that draw to
every key, so an image and its Siamese partner or its context patch change colour together. A key in
``keys`` that is missing from the data raises ``KeyError`` naming it, unless ``allow_missing_keys``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform

from mssn_monai.transforms.array import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAINS,
    NormalizeHEStain,
    RandHEStainJitter,
    RandHSVJitter,
    RandJPEGCompression,
)

__all__ = ["RandHEStainJitterd", "RandHSVJitterd", "RandJPEGCompressiond", "NormalizeHEStaind"]


class _RandColourd(RandomizableTransform, MapTransform):
    """Shared body of the random wrappers: one draw per call, applied to every key."""

    def __init__(self, keys: KeysCollection, transform: RandomizableTransform, prob: float, allow_missing: bool):
        MapTransform.__init__(self, keys, allow_missing)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> _RandColourd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))  # raises KeyError naming a missing key before anything is drawn
        self.randomize(None)
        if not self._do_transform or not keys:
            return d
        self.transform.randomize()
        for key in keys:
            d[key] = self.transform(d[key], randomize=False)
        return d


class RandHEStainJitterd(_RandColourd):
    """Dictionary version of :class:`~mssn_monai.transforms.array.RandHEStainJitter` (one draw for all keys).

    Args:
        keys: keys of the ``(3, H, W)`` float RGB images to jitter.
        sigma: half-width of the per-stain scale range (see the array transform).
        bias: half-width of the per-stain OD shift range.
        prob: probability of applying the jitter to the sample.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    backend = RandHEStainJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        sigma: float = 0.25,
        bias: float = 0.03,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandHEStainJitter(sigma=sigma, bias=bias, prob=1.0), prob, allow_missing_keys)


class RandHSVJitterd(_RandColourd):
    """Dictionary version of :class:`~mssn_monai.transforms.array.RandHSVJitter` (one draw for all keys).

    Args:
        keys: keys of the ``(3, H, W)`` float RGB images to jitter.
        hue: half-width of the hue shift, fraction of a turn.
        saturation: half-width of the saturation scale range.
        value: half-width of the value scale range.
        prob: probability of applying the jitter to the sample.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    backend = RandHSVJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        hue: float = 0.04,
        saturation: float = 0.2,
        value: float = 0.1,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = RandHSVJitter(hue=hue, saturation=saturation, value=value, prob=1.0)
        super().__init__(keys, transform, prob, allow_missing_keys)


class RandJPEGCompressiond(_RandColourd):
    """Dictionary version of :class:`~mssn_monai.transforms.array.RandJPEGCompression` (one draw for all keys).

    Args:
        keys: keys of the ``(3, H, W)`` float RGB images to compress.
        quality: ``(low, high)`` JPEG quality range.
        prob: probability of applying the compression to the sample.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    backend = RandJPEGCompression.backend

    def __init__(
        self,
        keys: KeysCollection,
        quality: Sequence[int] = (50, 95),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandJPEGCompression(quality=quality, prob=1.0), prob, allow_missing_keys)


class NormalizeHEStaind(MapTransform):
    """Dictionary version of :class:`~mssn_monai.transforms.array.NormalizeHEStain` (each key on its own).

    Every image is normalised with its own stain estimate (Macenko is per image by design).

    Args:
        keys: keys of the ``(3, H, W)`` float RGB images to normalise.
        target_stains, target_max_concentrations, target_white, white, white_percentile, beta, alpha,
            min_tissue_pixels, max_angle_deg: see :class:`~mssn_monai.transforms.array.NormalizeHEStain`.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    backend = NormalizeHEStain.backend

    def __init__(
        self,
        keys: KeysCollection,
        target_stains: Sequence[Sequence[float]] | np.ndarray = MACENKO_REFERENCE_STAINS,
        target_max_concentrations: Sequence[float] | np.ndarray = MACENKO_REFERENCE_MAX_CONCENTRATIONS,
        target_white: float = 1.0,
        white: float | Sequence[float] | None = None,
        white_percentile: float = 99.0,
        beta: float = 0.15,
        alpha: float = 1.0,
        min_tissue_pixels: int = 100,
        max_angle_deg: float = 35.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeHEStain(
            target_stains=target_stains,
            target_max_concentrations=target_max_concentrations,
            target_white=target_white,
            white=white,
            white_percentile=white_percentile,
            beta=beta,
            alpha=alpha,
            min_tissue_pixels=min_tissue_pixels,
            max_angle_deg=max_angle_deg,
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d

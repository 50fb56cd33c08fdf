"""Loading whole fields for evaluation and inference: image file -> ``(3, H, W)`` float tensor in [0, 1]."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from mssn_monai.io import read_image_rgb
from mssn_monai.keys import DatalistKeys, error_key, path_key
from mssn_monai.ops.intensity import hwc_to_chw_float

__all__ = ["LoadRGB", "LoadRGBd"]

logger = logging.getLogger(__name__)


class LoadRGB(Transform):
    """Read an image file as a channel-first float32 RGB tensor ``(3, H, W)`` in [0, 1].

    Grayscale, RGBA, 16-bit and float files are converted as :func:`mssn_monai.io.read_image_rgb` says.
    """

    def __call__(self, path: str) -> torch.Tensor:
        image = read_image_rgb(path)
        return hwc_to_chw_float(image)


class LoadRGBd(MapTransform):
    """Dictionary version of :class:`LoadRGB`; also turns point lists into ``(N, 2)`` float32 arrays.

    The file path is kept under ``"<key>_path"``.

    Args:
        keys: image keys to load (default ``"image"``).
        point_keys: keys holding ``[[x, y], ...]`` lists (default ``mitoses`` and ``mimics``); missing
            ones become empty ``(0, 2)`` arrays so that records collate alike.
        allow_missing_keys: don't raise when an image key is absent.
        on_error: ``"raise"`` (default) or ``"skip"``: a file that cannot be read (missing, truncated,
            too large, unsupported) is then logged as one warning line, replaced by a ``(3, 1, 1)`` black
            image, and the reason kept under ``"<key>_error"``, so a run over many images goes on
            (:class:`~mssn_monai.transforms.SaveDetectionsd` writes nothing for such a record).
    """

    def __init__(
        self,
        keys: KeysCollection = DatalistKeys.IMAGE,
        point_keys: Sequence[str] = (DatalistKeys.MITOSES, DatalistKeys.MIMICS),
        allow_missing_keys: bool = False,
        on_error: str = "raise",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        self.on_error = on_error
        self.loader = LoadRGB()
        self.point_keys = tuple(point_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[path_key(key)] = str(d[key])
            try:
                d[key] = self.loader(d[key])
            except (ValueError, OSError) as e:  # read_image_rgb's one-line reasons (OSError: missing file)
                if self.on_error == "raise":
                    raise
                logger.warning("skipped %s", e)  # the reason names the file
                d[key], d[error_key(key)] = torch.zeros((3, 1, 1), dtype=torch.float32), str(e)
        for key in self.point_keys:
            d[key] = np.asarray(d.get(key, []), dtype=np.float32).reshape(-1, 2)
        return d

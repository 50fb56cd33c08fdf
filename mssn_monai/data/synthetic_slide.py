"""A small pyramidal synthetic slide: tissue islands on glass, written as a tiled, multi-level TIFF.

For tests and the benchmark. Each island is a field of :func:`mssn_monai.data.synthetic.generate_field`
cut to an ellipse and laid on a glass background (RGB about 242, slight noise); one island (``hot``)
is rendered with a higher mitotic rate, so the slide has a known hotspot. The file is a BigTIFF with
level 0 in 256x256 deflate tiles and ``levels - 1`` reduced levels (each half the previous, 2x2 means)
in SubIFDs, and resolution tags in centimetres (``spacing`` um/px at level 0), the layout of OME-TIFF
pyramids that QuPath and tifffile read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mssn_monai.constants import APERIO_SPACING_UM
from mssn_monai.data.synthetic import generate_field

__all__ = ["SyntheticSlide", "generate_slide", "write_pyramid"]

GLASS_RGB = 242


@dataclass
class SyntheticSlide:
    """A written slide and its ground truth in level-0 pixels.

    Args:
        path: the TIFF.
        size: ``(H, W)`` of level 0.
        spacing: level-0 spacing in um/px.
        mitoses: ``(N, 2)`` x, y of the mitoses inside the islands.
        islands: ``(K, 4)`` ``x0, y0, x1, y1`` boxes of the islands.
        hot: index of the high-rate island.
    """

    path: Path
    size: tuple[int, int]
    spacing: float
    mitoses: np.ndarray
    islands: np.ndarray
    hot: int


def write_pyramid(
    path: str | os.PathLike,
    image: np.ndarray,
    spacing: float | None,
    levels: int = 3,
    tile: int = 256,
) -> None:
    """Write ``(H, W, 3)`` uint8 as a tiled pyramidal TIFF (level 0, then ``levels - 1`` SubIFDs).

    Args:
        spacing: level-0 um/px for the resolution tags; ``None`` writes none (a file with no spacing).
    """
    import tifffile

    path = Path(path)
    opts = {"tile": (tile, tile), "compression": "zlib", "photometric": "rgb"}

    def res(level: int) -> dict:
        if spacing is None:
            return {}
        px_per_cm = 1e4 / (spacing * 2**level)
        return {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(image, subifds=levels - 1, **opts, **res(0))
        level = image
        for i in range(1, levels):
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            tw.write(level, subfiletype=1, **opts, **res(i))


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0


def generate_slide(
    path: str | os.PathLike,
    size: tuple[int, int] = (3072, 2048),
    island: int = 1024,
    n_islands: int = 3,
    seed: int = 0,
    spacing: float | None = APERIO_SPACING_UM,
    mitosis_rate: float = 2.5,
    hot_rate: float = 12.0,
    levels: int = 3,
) -> SyntheticSlide:
    """Render and write a synthetic slide of ``n_islands`` tissue islands on glass (see module docstring).

    Args:
        path: the TIFF to write.
        size: ``(width, height)`` of level 0 in pixels.
        island: island side in pixels (each island is an ``island x island`` field cut to an ellipse).
        n_islands: islands, placed on a regular grid with a glass gap (as many as fit, at most this many).
        seed: the same seed gives the same slide.
        spacing: level-0 um/px written in the resolution tags (``None``: no spacing in the file).
        mitosis_rate: mean mitoses per 1024x1024 field of the ordinary islands.
        hot_rate: the same for the hot island (island 0).
        levels: pyramid levels (level 0 included).

    Returns:
        a :class:`SyntheticSlide`.

    Raises:
        ValueError: when not one island fits the slide.
    """
    width, height = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    canvas = np.clip(rng.normal(GLASS_RGB, 1.5, size=(height, width, 3)), 0, 255).astype(np.uint8)
    gap = max(island // 8, 16)
    per_row = max((width - gap) // (island + gap), 0)
    per_col = max((height - gap) // (island + gap), 0)
    slots = [(r, c) for r in range(per_col) for c in range(per_row)][:n_islands]
    if n_islands >= 1 and not slots:
        raise ValueError(
            f"no island of {island} px fits a {width}x{height} slide with its {gap}-px glass margin: "
            f"the slide needs at least {island + 2 * gap} px on each side."
        )
    mask = _ellipse(island, island)
    inner = _ellipse(island - 48, island - 48)  # mitoses at least 24 px inside the edge
    inner = np.pad(inner, 24)
    boxes, points = [], []
    field_spacing = spacing if spacing is not None else APERIO_SPACING_UM
    for k, (r, c) in enumerate(slots):
        x0, y0 = gap + c * (island + gap), gap + r * (island + gap)
        rate = hot_rate if k == 0 else mitosis_rate
        field = generate_field(
            (island, island), seed=int(rng.integers(2**31)), spacing=field_spacing, mitosis_rate=rate
        )
        region = canvas[y0 : y0 + island, x0 : x0 + island]
        region[mask] = field.image[mask]
        for x, y in field.mitoses:
            if inner[int(round(min(y, island - 1))), int(round(min(x, island - 1)))]:
                points.append((x + x0, y + y0))
        boxes.append((x0, y0, x0 + island, y0 + island))
    write_pyramid(path, canvas, spacing, levels=levels)
    return SyntheticSlide(
        Path(path),
        (height, width),
        float(field_spacing),
        np.asarray(points, dtype=np.float64).reshape(-1, 2),
        np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
        0,
    )

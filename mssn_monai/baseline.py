"""A classical, non-learned mitosis detector: how hard is the benchmark without learning?

Steps, all in micrometres converted once with the image's spacing:

1. colour deconvolution into hematoxylin / eosin / DAB optical densities
   (:func:`skimage.color.rgb2hed`, Ruifrok & Johnston vectors), keep hematoxylin;
2. divide by the image's typical nuclear hematoxylin density (the median over pixels above the
   image's mean density), so that the darkness score means "times darker than an ordinary nucleus" whatever the
   stain strength;
3. Laplacian-of-Gaussian blob detection (:func:`skimage.feature.blob_log`) for blobs 4-15 um across;
4. keep blobs whose core (Gaussian-weighted mean over about 1.5 um) is at least ``darkness`` times the
   typical nucleus; the score is that ratio.

It finds dark, compact objects: most mitotic figures, and also apoptotic bodies, lymphocytes and
pyknotic nuclei. Its precision on the synthetic benchmark is what the learned stages must beat.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from mssn_monai.constants import DEFAULT_SPACING_UM
from mssn_monai.ops.resample import from_reduced_points

__all__ = ["hematoxylin_density", "detect_baseline"]

logger = logging.getLogger(__name__)


def hematoxylin_density(image: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density of an ``(H, W, 3)`` uint8 RGB image, as ``(H, W)`` float32 >= 0."""
    from skimage.color import rgb2hed

    return np.clip(rgb2hed(image)[..., 0], 0.0, None).astype(np.float32)


def detect_baseline(
    image: np.ndarray,
    spacing: float = DEFAULT_SPACING_UM,
    min_diameter_um: float = 4.0,
    max_diameter_um: float = 15.0,
    darkness: float = 2.0,
    min_distance_um: float = 6.0,
) -> np.ndarray:
    """Detect dark compact blobs.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        spacing: pixel spacing in um/px.
        min_diameter_um: smallest blob diameter searched, in um.
        max_diameter_um: largest blob diameter searched, in um.
        darkness: minimum core darkness relative to the median nucleus (dimensionless).
        min_distance_um: two detections closer than this are merged (the darker one is kept).

    Returns:
        ``(N, 3)`` float array of ``x, y, score`` (pixels, pixels, darkness ratio), by decreasing score.
    """
    from skimage.feature import blob_log

    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 um/px, got {spacing!r}")
    hema = hematoxylin_density(image)
    if hema.max() <= 0:
        return np.zeros((0, 3))
    px = 1.0 / spacing
    # work at about 1 um / 2 px: blob sizes of 4-15 um need no finer grid, and it is 4x faster
    factor = max(1, int(np.floor(px / 2.0)))
    small = ndimage.uniform_filter(hema, factor)[factor // 2 :: factor, factor // 2 :: factor] if factor > 1 else hema
    spx = px / factor
    # stroma and background make up most pixels, so the pixels above the mean are mostly nuclei, and
    # the rare very dark figures barely move their median (Otsu would split dark figures from nuclei)
    nuclear = small[small > small.mean()]
    reference = float(np.median(nuclear)) if nuclear.size else 0.0
    if reference <= 0:
        return np.zeros((0, 3))
    norm = small / reference
    core = ndimage.gaussian_filter(norm, 1.5 * spx / 2.0)
    sig = lambda d_um: d_um * spx / 2.0 / np.sqrt(2.0)  # noqa: E731 - LoG sigma of a blob of diameter d
    blobs = blob_log(
        core,
        min_sigma=sig(min_diameter_um),
        max_sigma=sig(max_diameter_um),
        num_sigma=6,
        threshold=0.05,
        overlap=0.5,
        exclude_border=False,
    )
    if len(blobs) == 0:
        return np.zeros((0, 3))
    rows, cols = blobs[:, 0], blobs[:, 1]
    score = core[rows.astype(int), cols.astype(int)]
    keep = score >= darkness
    det = from_reduced_points(np.stack([cols[keep], rows[keep], score[keep]], axis=1), factor)  # block centres
    det = det[np.argsort(-det[:, 2], kind="stable")]
    return _suppress(det, min_distance_um * px)


def _suppress(det: np.ndarray, min_dist: float) -> np.ndarray:
    """Greedy non-maximum suppression of points sorted by decreasing score."""
    kept: list[int] = []
    for i in range(len(det)):
        if all(np.hypot(*(det[i, :2] - det[j, :2])) >= min_dist for j in kept):
            kept.append(i)
    return det[kept].reshape(-1, 3)

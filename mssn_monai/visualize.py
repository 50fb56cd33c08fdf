"""Overlay pictures: points drawn as circles on a field, for reports and the README."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["draw_points"]


def draw_points(
    image: np.ndarray,
    layers: Sequence[tuple[np.ndarray, tuple[int, int, int], float]],
    width: int = 3,
    labels: Sequence[Sequence[str] | None] | None = None,
) -> np.ndarray:
    """Draw circles around points on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        layers: ``(points, rgb colour, radius in px)`` per layer; ``points`` is ``(N, >=2)`` with x, y first.
        width: circle line width in px.
        labels: optional text per point, per layer (``None`` for no text).

    Returns:
        ``(H, W, 3)`` uint8 RGB with the circles drawn.
    """
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(im)
    for k, (points, colour, radius) in enumerate(layers):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, np.asarray(points).shape[-1] if len(points) else 2)
        names = labels[k] if labels is not None else None
        for i, (x, y) in enumerate(pts[:, :2]):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=tuple(colour), width=width)
            if names is not None:
                draw.text((x + radius + 2, y - 5), str(names[i]), fill=(0, 0, 0))
    return np.asarray(im)

"""Overlay pictures: points drawn as circles on a field, for reports and the README."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["draw_points", "draw_pr_curve"]


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


def draw_pr_curve(
    recall: Sequence[float],
    precision: Sequence[float],
    marker: tuple[float, float] | None = None,
    title: str = "",
    size: int = 480,
) -> np.ndarray:
    """A precision-recall curve as an RGB picture (Pillow only, no plotting library).

    Args:
        recall: ``(T,)`` recall at each threshold (thresholds in order), in [0, 1].
        precision: ``(T,)`` precision at the same thresholds, in [0, 1].
        marker: ``(recall, precision)`` of the operating point, drawn as a red dot.
        title: text above the plot.
        size: side of the square picture in pixels.

    Returns:
        ``(size, size, 3)`` uint8 RGB.
    """
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    left, top, right, bottom = 50, 30, size - 20, size - 45

    def xy(r: float, p: float) -> tuple[float, float]:
        return left + r * (right - left), bottom - p * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for t in range(0, 11, 2):
        v = t / 10
        draw.line([xy(v, 0), (xy(v, 0)[0], bottom + 4)], fill=(0, 0, 0))
        draw.text((xy(v, 0)[0] - 8, bottom + 6), f"{v:.1f}", fill=(0, 0, 0))
        draw.line([(left - 4, xy(0, v)[1]), xy(0, v)], fill=(0, 0, 0))
        draw.text((left - 32, xy(0, v)[1] - 6), f"{v:.1f}", fill=(0, 0, 0))
    draw.text(((left + right) / 2 - 18, size - 20), "recall", fill=(0, 0, 0))
    draw.text((4, top - 22), "precision", fill=(0, 0, 0))
    if title:
        draw.text((left + 70, 8), title, fill=(0, 0, 0))
    points = [xy(float(r), float(p)) for r, p in zip(recall, precision, strict=True)]  # in threshold order
    if len(points) > 1:
        draw.line(points, fill=(30, 80, 200), width=2)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 80, 200))
    if marker is not None:
        x, y = xy(*marker)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(220, 30, 30))
    return np.asarray(im)

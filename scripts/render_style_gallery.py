"""Render the style gallery: mitoses and mimics of every synthetic style, one row per style.

Each row shows crops centred on ground-truth points of fields drawn from one style (several slides
of it): first the mitoses (one per phase the style produces, atypical forms included, then more),
labelled in green, then the mimics (one per kind), labelled in orange.

Usage::

    .venv/bin/python scripts/render_style_gallery.py --out docs/images/style_gallery.png --seed 0
"""

from __future__ import annotations

import fire
import numpy as np
from PIL import Image, ImageDraw

from mssn_monai.data.synthetic import MIMIC_KINDS, MITOSIS_PHASES, STYLES, draw_look, generate_field

_GREEN, _ORANGE, _BLACK = (0, 120, 0), (200, 90, 0), (0, 0, 0)


def _crops(
    style: str, rng: np.random.Generator, crop_um: float, n_fields: int, size: int
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """Crops around the mitoses and the mimics of ``n_fields`` fields, each from a fresh slide of ``style``."""
    mitoses: dict[str, list[np.ndarray]] = {}
    mimics: dict[str, list[np.ndarray]] = {}
    for _ in range(n_fields):
        look = draw_look(style, rng)
        look.morphology.mimic_rates = {k: 3.0 * v for k, v in look.morphology.mimic_rates.items()}
        f = generate_field((size, size), rng, style=look, mitosis_rate=30.0)
        half = int(round(crop_um / f.spacing / 2))
        for points, names, out in ((f.mitoses, f.mitosis_phases, mitoses), (f.mimics, f.mimic_kinds, mimics)):
            for (x, y), name in zip(points.astype(int), names, strict=True):
                if half <= x < size - half and half <= y < size - half:
                    out.setdefault(name, []).append(f.image[y - half : y + half, x - half : x + half])
    return mitoses, mimics


def _pick(crops: dict[str, list[np.ndarray]], order: tuple[str, ...], n: int) -> list[tuple[str, np.ndarray]]:
    """One crop per name in ``order`` first, then more of the names that have them, up to ``n``."""
    picked, depth = [], 0
    while len(picked) < n and any(len(v) > depth for v in crops.values()):
        picked += [(k, crops[k][depth]) for k in order if len(crops.get(k, [])) > depth]
        depth += 1
    return picked[:n]


def main(
    out: str = "docs/images/style_gallery.png",
    seed: int = 0,
    n_mitoses: int = 7,
    n_mimics: int = 6,
    crop_um: float = 26.0,
    tile: int = 96,
    n_fields: int = 4,
    size: int = 768,
) -> None:
    """Write the gallery PNG (256 dithered colours, to stay well under 1 MB).

    Args:
        out: output PNG path.
        seed: seed of every field drawn.
        n_mitoses: mitosis crops per row.
        n_mimics: mimic crops per row.
        crop_um: side of a crop in um.
        tile: side of a crop in the picture, in px.
        n_fields: fields (each from a fresh slide) rendered per style.
        size: side of a rendered field in px.
    """
    rng = np.random.default_rng(seed)
    label_w, text_h, gap = 70, 13, 4
    cols = n_mitoses + n_mimics
    width = label_w + cols * (tile + 2) + gap
    height = len(STYLES) * (tile + text_h + 4) + 4
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, style in enumerate(STYLES):
        y0 = 4 + row * (tile + text_h + 4)
        draw.text((4, y0 + tile // 2 - 6), style, fill=_BLACK)
        mitoses, mimics = _crops(style, rng, crop_um, n_fields, size)
        cells = [(name, crop, _GREEN) for name, crop in _pick(mitoses, MITOSIS_PHASES, n_mitoses)]
        cells += [(name, crop, _ORANGE) for name, crop in _pick(mimics, MIMIC_KINDS, n_mimics)]
        for col, (name, crop, colour) in enumerate(cells):
            x0 = label_w + col * (tile + 2) + (gap if col >= n_mitoses else 0)
            sheet.paste(Image.fromarray(crop).resize((tile, tile), Image.LANCZOS), (x0, y0))
            draw.text((x0 + 1, y0 + tile), name, fill=colour)
        print(f"{style}: mitoses {sorted(mitoses)}, mimics {sorted(mimics)}")
    palette = sheet.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    sheet.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    print(f"wrote {out} ({width}x{height})")


if __name__ == "__main__":
    fire.Fire(main)

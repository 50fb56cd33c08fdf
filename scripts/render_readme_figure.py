"""Render the README's picture: a synthetic field with its ground truth and the baseline's detections.

Usage::

    .venv/bin/python scripts/render_readme_figure.py --out docs/images/synthetic_overlay.png --seed 7
"""

from __future__ import annotations

import fire

from mssn_monai.baseline import detect_baseline
from mssn_monai.data.synthetic import generate_field
from mssn_monai.io import write_image
from mssn_monai.visualize import draw_points


def main(out: str = "docs/images/synthetic_overlay.png", seed: int = 7, size: int = 1024) -> None:
    """Write the overlay PNG: green = mitosis, orange = annotated mimic, blue dots = baseline detections."""
    f = generate_field((size, size), seed=seed, mitosis_rate=5.0)
    det = detect_baseline(f.image, f.spacing)
    r = 8.0 / f.spacing
    picture = draw_points(
        f.image,
        [(f.mitoses, (0, 170, 0), r * 1.3), (f.mimics, (255, 140, 0), r * 1.1), (det, (30, 60, 255), 4.0)],
        labels=[f.mitosis_phases, f.mimic_kinds, None],
    )
    write_image(out, picture)
    print(f"wrote {out}: {len(f.mitoses)} mitoses, {len(f.mimics)} mimics, {len(det)} baseline detections")


if __name__ == "__main__":
    fire.Fire(main)

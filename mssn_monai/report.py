"""A slide's report: detections, the 2 mm² hotspot, the mitotic score, a density heat map, one HTML page.

Per slide ``<out>/<stem>``:

- ``.csv`` rows ``x,y,score`` (level-0 pixels);
- ``.geojson`` (QuPath): the detections as points (classification ``Mitotic figure``, measurement
  ``score``) and the hotspot's outline as an annotation (classification ``Hotspot``, its count);
- ``.xml`` (ASAP): the detections as ``Dot`` annotations, the hotspot as a ``Polygon``;
- ``_heatmap.npy`` (mitoses per mm² in a window of the hotspot's size centred on each thumbnail pixel,
  float32, 0 off tissue) and ``_heatmap.png`` (over the thumbnail);
- ``.json``: counts, densities, the hotspot, the score and its cut-offs, settings, versions;
- ``.html``: one self-contained page (pictures embedded as base64) a pathologist can open without a server.

The hotspot is the window with the most detections, found exactly (:mod:`mssn_monai.ops.hotspot`): a
circle of ``area_mm2`` (default 2 mm²), a square of that area, or ``hpf`` = ``hpf_count`` fields of
``hpf_diameter_mm`` counted as one circle of their total area. Its count is scored with
:func:`mssn_monai.grading.mitotic_score` for that area (the Elston-Ellis cut-offs scaled by area, as the
UK RCPath table).
"""

from __future__ import annotations

import base64
import html
import io as _io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mssn_monai import __version__
from mssn_monai.grading import field_diameter_mm, mitotic_score, score_thresholds
from mssn_monai.io import asap_xml, atomic_write, detections_to_geojson, write_detections_csv, write_json
from mssn_monai.ops.hotspot import best_circle, best_square
from mssn_monai.visualize import draw_points

__all__ = ["HOTSPOT_SHAPES", "find_hotspot", "density_map", "write_slide_report"]

HOTSPOT_SHAPES = ("circle", "square", "hpf")

_MITOSIS_COLOUR = "#dc1e1e"
_HOTSPOT_COLOUR = "#1e64dc"


def find_hotspot(
    detections: np.ndarray,
    spacing_um: float,
    shape: str = "circle",
    area_mm2: float = 2.0,
    hpf_diameter_mm: float = 0.5,
    hpf_count: int = 10,
) -> dict[str, Any]:
    """The window with the most detections, its outline and its score.

    Args:
        detections: ``(N, 3)`` level-0 ``x, y, score``.
        spacing_um: level-0 um/px.
        shape: ``circle`` or ``square`` of ``area_mm2``, or ``hpf``: ``hpf_count`` fields of diameter
            ``hpf_diameter_mm`` (one circle of their total area).
        area_mm2: window area for ``circle`` and ``square``.
        hpf_diameter_mm, hpf_count: the fields for ``hpf``.

    Returns:
        ``{"shape", "area_mm2", "count", "per_mm2", "per_2mm2", "centre" [x, y], "outline" [[x, y], ...],
        "score", "score2_from", "score3_from", "field_diameter_mm", "fields"}`` (level-0 pixels).
    """
    if shape not in HOTSPOT_SHAPES:
        raise ValueError(f"hotspot shape must be one of {', '.join(HOTSPOT_SHAPES)}, got {shape!r}")
    if shape == "hpf":
        area_mm2 = hpf_count * math.pi * (hpf_diameter_mm / 2) ** 2
        fields, diameter = int(hpf_count), float(hpf_diameter_mm)
    else:
        fields, diameter = 10, field_diameter_mm(area_mm2)
    if not (math.isfinite(area_mm2) and area_mm2 > 0):
        raise ValueError(f"hotspot area must be > 0 mm^2, got {area_mm2!r}")
    px_per_mm = 1000.0 / spacing_um
    pts = np.asarray(detections, dtype=np.float64).reshape(-1, 3)
    if shape == "square":
        side = math.sqrt(area_mm2) * px_per_mm
        hot = best_square(pts, side)
        cx, cy = hot.centre
        h = side / 2
        outline = [[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h], [cx - h, cy - h]]
    else:
        radius = math.sqrt(area_mm2 / math.pi) * px_per_mm
        hot = best_circle(pts, radius)
        cx, cy = hot.centre
        t = np.linspace(0, 2 * np.pi, 73)
        outline = [[cx + radius * math.cos(a), cy + radius * math.sin(a)] for a in t]
    thresholds = score_thresholds(area_mm2)
    return {
        "shape": shape,
        "area_mm2": float(area_mm2),
        "count": int(hot.count),
        "per_mm2": hot.count / area_mm2,
        "per_2mm2": hot.count * 2.0 / area_mm2,
        "centre": None if hot.count == 0 else [round(cx, 2), round(cy, 2)],
        "outline": [] if hot.count == 0 else [[round(x, 2), round(y, 2)] for x, y in outline],
        "score": mitotic_score(int(hot.count), area_mm2),
        "score2_from": thresholds.score2_from,
        "score3_from": thresholds.score3_from,
        "field_diameter_mm": round(diameter, 4),
        "fields": fields,
    }


def density_map(
    detections: np.ndarray, shape: tuple[int, int], scale: float, spacing_um: float, area_mm2: float = 2.0
) -> np.ndarray:
    """Mitoses per mm² in a circle of ``area_mm2`` centred on each pixel of a thumbnail: ``(h, w)`` float32.

    Args:
        detections: ``(N, 2+)`` level-0 ``x, y``.
        shape: ``(h, w)`` of the thumbnail.
        scale: level-0 pixels per thumbnail pixel.
        spacing_um: level-0 um/px.

    Counts are binned to thumbnail pixels first, so the map is the hotspot search on a grid (its
    maximum is at most the exact hotspot's density).
    """
    from scipy.signal import fftconvolve

    h, w = int(shape[0]), int(shape[1])
    counts = np.zeros((h, w), dtype=np.float64)
    pts = np.asarray(detections, dtype=np.float64)
    pts = pts.reshape(len(pts), -1) if len(pts) else np.zeros((0, 2))
    if len(pts):
        cols = np.clip((pts[:, 0] / scale).astype(int), 0, w - 1)
        rows = np.clip((pts[:, 1] / scale).astype(int), 0, h - 1)
        np.add.at(counts, (rows, cols), 1.0)
    r = math.sqrt(area_mm2 / math.pi) * 1000.0 / spacing_um / scale
    k = int(math.ceil(r))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    disk = (xx**2 + yy**2 <= r * r).astype(np.float64)
    window = fftconvolve(counts, disk, mode="same") if len(pts) else counts
    return (np.clip(np.round(window, 6), 0, None) / area_mm2).astype(np.float32)


_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def _colourise(values: np.ndarray, vmax: float) -> np.ndarray:
    """``(h, w, 3)`` uint8 of ``values`` in ``[0, vmax]`` on an inferno-like ramp."""
    t = np.clip(values / vmax, 0, 1) * (len(_ANCHORS) - 1) if vmax > 0 else np.zeros_like(values)
    i = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    return (_ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f).round().astype(np.uint8)


def _heat_picture(thumb: np.ndarray, density: np.ndarray, mask: np.ndarray) -> np.ndarray:
    vmax = float(density.max())
    colour = _colourise(density, vmax).astype(np.float64)
    alpha = (0.15 + 0.6 * np.clip(density / vmax, 0, 1) if vmax > 0 else np.zeros_like(density))[..., None]
    alpha = alpha * mask[..., None]
    return (thumb[..., :3] * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def _png_bytes(picture: np.ndarray) -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return buf.getvalue()


def _draw(thumb: np.ndarray, detections: np.ndarray, hotspot: Mapping[str, Any], scale: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    points = np.asarray(detections, dtype=np.float64).reshape(-1, 3)[:, :2] / scale
    marked = draw_points(thumb[..., :3], [(points, (220, 30, 30), 2.0)], width=1)
    img = Image.fromarray(marked)
    d = ImageDraw.Draw(img)
    if hotspot["outline"]:
        d.line([(x / scale, y / scale) for x, y in hotspot["outline"]], fill=(30, 100, 220), width=2)
    return np.asarray(img)


def _weights_version(bundle: str | Path | None) -> str:
    from mssn_monai.checkpoints import DEFAULT_BUNDLE
    from mssn_monai.io import read_json

    root = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    try:
        meta = read_json(root / "configs" / "metadata.json")
        return f"{meta.get('name', root.name)} {meta.get('version', '?')}"
    except (OSError, ValueError):
        return f"{root.name} (no metadata.json)"


def write_slide_report(
    stem: Path,
    run: Mapping[str, Any],
    hotspot: Mapping[str, Any],
    bundle: str | Path | None = None,
) -> dict[str, Any]:
    """Write every output of one slide (see the module docstring); returns the JSON summary.

    Args:
        stem: ``<out>/<slide stem>``.
        run: :func:`mssn_monai.slide.detect_slide`'s result.
        hotspot: :func:`find_hotspot`'s result.
        bundle: the bundle the weights came from (for the version).
    """
    from mssn_monai.outputs import SYNTHETIC_WEIGHTS_NOTE

    det = np.asarray(run["detections"], dtype=np.float64).reshape(-1, 3)
    slide = run["slide"]
    thumb, mask, scale = run["thumbnail"], run["mask"], float(run["thumb_scale"])
    tissue = float(run["tissue_mm2"])
    density = density_map(det, mask.shape, scale, slide.spacing_um, hotspot["area_mm2"]) * mask
    summary = {
        "slide": slide.path.name,
        "width": slide.size[1],
        "height": slide.size[0],
        "spacing_um_per_px": slide.spacing_um,
        "spacing_source": slide.spacing_source,
        "level": run["level"],
        "complete": bool(run["complete"]),
        "tissue_blocks": run["blocks"],
        "tissue_mm2": round(tissue, 4),
        "count": len(det),
        "mitoses_per_mm2_tissue": len(det) / tissue if tissue > 0 else None,
        "hotspot": dict(hotspot),
        "heatmap_max_per_mm2": float(density.max()) if density.size else 0.0,
        "seconds": round(float(run["seconds"]), 2),
        "tissue_mm2_per_s": tissue / run["seconds"] if run["seconds"] > 0 else None,
        "settings": dict(run["settings"]),
        "software": f"mssn_monai {__version__}",
        "weights": _weights_version(bundle),
        "note": SYNTHETIC_WEIGHTS_NOTE,
    }
    out = stem.parent
    name = stem.name
    write_detections_csv(out / f"{name}.csv", det)
    geo = detections_to_geojson(det, name)
    if hotspot["outline"]:
        geo["features"].append(
            {
                "type": "Feature",
                "id": f"hotspot-{name}",
                "geometry": {"type": "Polygon", "coordinates": [hotspot["outline"]]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"Hotspot {hotspot['area_mm2']:.2f} mm2 ({hotspot['shape']})",
                    "classification": {"name": "Hotspot", "color": [30, 100, 220]},
                    "measurements": {
                        "count": hotspot["count"],
                        "mitoses_per_mm2": hotspot["per_mm2"],
                        "mitotic_score": hotspot["score"],
                    },
                    "isLocked": False,
                },
            }
        )
    write_json(out / f"{name}.geojson", geo)
    annotations = [
        {
            "name": f"mitosis {i} ({p:.3f})",
            "type": "Dot",
            "group": "Mitotic figure",
            "color": _MITOSIS_COLOUR,
            "coordinates": [(round(x, 2), round(y, 2))],
        }
        for i, (x, y, p) in enumerate(det)
    ]
    groups = {"Mitotic figure": _MITOSIS_COLOUR}
    if hotspot["outline"]:
        annotations.append(
            {
                "name": f"hotspot {hotspot['count']} mitoses",
                "type": "Polygon",
                "group": "Hotspot",
                "color": _HOTSPOT_COLOUR,
                "coordinates": hotspot["outline"][:-1],
            }
        )
        groups["Hotspot"] = _HOTSPOT_COLOUR
    with atomic_write(out / f"{name}.xml", encoding="utf-8") as f:
        f.write(asap_xml(annotations, groups, {"Name": name, "Model": summary["weights"]}))
    with atomic_write(out / f"{name}_heatmap.npy", mode="wb") as f:
        np.save(f, density.astype(np.float32))
    heat_png = _png_bytes(_heat_picture(thumb, density, mask))
    with atomic_write(out / f"{name}_heatmap.png", mode="wb") as f:
        f.write(heat_png)
    marked_png = _png_bytes(_draw(thumb, det, hotspot, scale))
    with atomic_write(out / f"{name}.html", encoding="utf-8") as f:
        f.write(_html(summary, marked_png, heat_png))
    write_json(out / f"{name}.json", summary)  # last: its presence says the other files are complete
    return summary


def _html(summary: Mapping[str, Any], marked_png: bytes, heat_png: bytes) -> str:
    e = html.escape
    hot = summary["hotspot"]

    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    centre = (
        "none (no detections)" if hot["centre"] is None else f"x {hot['centre'][0]:.0f}, y {hot['centre'][1]:.0f} px"
    )
    rows = [
        ("Mitoses detected", f"{summary['count']}"),
        ("Tissue area", f"{summary['tissue_mm2']:.2f} mm²"),
        (
            "Mitoses per mm² of tissue",
            "n/a" if summary["mitoses_per_mm2_tissue"] is None else f"{summary['mitoses_per_mm2_tissue']:.2f}",
        ),
        (f"Hotspot ({hot['shape']}, {hot['area_mm2']:.3f} mm²)", f"<b>{hot['count']}</b> mitoses at {centre}"),
        ("Hotspot density", f"{hot['per_2mm2']:.1f} per 2 mm²; {hot['per_mm2']:.2f} per mm²"),
        (
            "Nottingham mitotic score",
            f"<b>{hot['score']}</b> (score 2 from {hot['score2_from']}, score 3 from {hot['score3_from']} mitoses "
            f"in {hot['fields']} fields of {hot['field_diameter_mm']:.3f} mm)",
        ),
        (
            "Slide",
            f"{e(summary['slide'])}: {summary['width']}x{summary['height']} px, "
            f"{summary['spacing_um_per_px']:.4f} um/px ({e(summary['spacing_source'])})",
        ),
        (
            "Run",
            f"level {summary['level']}, {summary['tissue_blocks']} tissue blocks, {summary['seconds']:.1f} s, "
            f"complete: {summary['complete']}",
        ),
        ("Software / weights", f"{e(summary['software'])} / {e(summary['weights'])}"),
        ("Settings", e(", ".join(f"{k}={v}" for k, v in summary["settings"].items()))),
    ]
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Mitoses: {e(summary["slide"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
th{{text-align:left;padding-right:1em;vertical-align:top}} img{{max-width:48%;border:1px solid #ccc;margin:0.5%}}
.warn{{background:#fff3cd;padding:0.7em;border:1px solid #e0c060}}</style>
</head><body>
<h1>Mitotic count: {e(summary["slide"])}</h1>
<p class="warn"><b>Research use only.</b> The shipped detector weights are trained on synthetic data only
({e(summary["note"])}). Counts and the score are not a diagnosis.</p>
<table>
{table}
</table>
<h2>Slide with detections (red) and the hotspot (blue) &middot;
mitotic density (per mm², window of the hotspot's size)</h2>
{img(marked_png, "thumbnail with detections and hotspot")}{img(heat_png, "mitotic density heat map")}
<p>Score cut-offs: Elston &amp; Ellis, Histopathology 1991;19:403-410 (0-9 / 10-19 / &ge;20 mitoses in 10 fields of
0.274 mm²), scaled by the counted area as in the UK RCPath breast dataset's field-diameter table.</p>
</body></html>
"""

"""Whole slides: a generated pyramidal TIFF end to end (tissue, blocks, resume, report files)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile

from mssn_monai.data.slides import open_slide
from mssn_monai.data.synthetic_slide import generate_slide, write_pyramid
from mssn_monai.ops.hotspot import best_circle
from mssn_monai.report import find_hotspot


def test_spacing_from_tags_override_and_refusal(tmp_path):
    img = np.full((300, 500, 3), 240, dtype=np.uint8)
    write_pyramid(tmp_path / "tags.tif", img, spacing=0.25, levels=2, tile=128)
    s = open_slide(tmp_path / "tags.tif")
    assert s.spacing_um == pytest.approx(0.25) and s.spacing_source == "TIFF resolution tags"
    assert s.sizes == [(300, 500), (150, 250)] and s.downsample(1) == 2.0
    assert open_slide(tmp_path / "tags.tif", spacing=0.5).spacing_um == 0.5
    write_pyramid(tmp_path / "none.tif", img, spacing=None, levels=1, tile=128)
    with pytest.raises(ValueError, match=r"none\.tif: no level-0 pixel spacing .* pass --spacing UM"):
        open_slide(tmp_path / "none.tif")
    assert open_slide(tmp_path / "none.tif", spacing=0.3).spacing_source == "--spacing"
    with pytest.raises(FileNotFoundError, match="no such slide"):
        open_slide(tmp_path / "missing.tif")


def test_levels_are_read_lazily_and_equal_the_written_pyramid(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(300, 520, 3), dtype=np.uint8)
    write_pyramid(tmp_path / "p.tif", img, spacing=0.25, levels=3, tile=128)
    s = open_slide(tmp_path / "p.tif")
    np.testing.assert_array_equal(s.level_image(0)[10:200, 7:333], img[10:200, 7:333])
    assert s.level_image(2)[:, :].shape == (75, 130, 3)
    thumb, scale = s.thumbnail(200)
    assert thumb.shape == (75, 130, 3) and scale == 4.0
    with pytest.raises(ValueError, match="does not exist"):
        s.level_image(3)


def test_a_slide_too_small_for_one_island_is_refused(tmp_path):
    """Asking for islands that cannot fit is an error, not a slide of bare glass."""
    with pytest.raises(ValueError, match="no island of 4096 px fits a 4352x4352 slide .* at least 5120 px"):
        generate_slide(tmp_path / "small.tif", size=(4352, 4352), island=4096, n_islands=1)
    assert not (tmp_path / "small.tif").exists()


def test_hotspot_of_the_report_is_exact_and_scored():
    spacing = 0.25  # 4000 px per mm
    r_px = np.sqrt(2.0 / np.pi) * 4000
    base = np.array([[10000.0, 10000.0]])
    ring = base + r_px * 0.999 * np.array(
        [[np.cos(a), np.sin(a)] for a in np.linspace(0, np.pi, 7)]
    )  # 7 on a semicircle
    far = np.array([[30000.0, 30000.0], [30100.0, 30000.0]])
    pts = np.concatenate([ring, far])
    det = np.concatenate([pts, np.full((len(pts), 1), 0.9)], axis=1)
    hot = find_hotspot(det, spacing)
    assert hot["count"] == 7 == best_circle(pts, r_px).count
    assert hot["score"] == 2 and (hot["score2_from"], hot["score3_from"]) == (7, 15)
    assert hot["per_mm2"] == pytest.approx(3.5) and hot["per_2mm2"] == pytest.approx(7.0)
    sq = find_hotspot(det, spacing, shape="square", area_mm2=1.0)
    assert sq["count"] >= 2 and len(sq["outline"]) == 5
    hpf = find_hotspot(det, spacing, shape="hpf", hpf_diameter_mm=0.44, hpf_count=10)
    assert hpf["area_mm2"] == pytest.approx(10 * np.pi * 0.22**2) and hpf["score3_from"] == 11
    empty = find_hotspot(np.zeros((0, 3)), spacing)
    assert empty["count"] == 0 and empty["score"] == 1 and empty["outline"] == []


@pytest.fixture(scope="module")
def tiny_slide(tmp_path_factory):
    """Two tissue islands (the first with many mitoses) in a 4608x2304 slide: a 3x2 grid of 2048-px
    blocks, of which only the two top-left ones hold tissue."""
    path = tmp_path_factory.mktemp("slide") / "tiny.tif"
    return generate_slide(path, size=(4608, 2304), island=896, n_islands=2, seed=3, hot_rate=14.0, levels=3)


@pytest.mark.slow
def test_slide_end_to_end_resume_and_report(tiny_slide, tmp_path, capsys):
    from mssn_monai.checkpoints import load_detector
    from mssn_monai.cli import main
    from mssn_monai.ops.matching import match_points
    from mssn_monai.slide import detect_slide

    fields = load_detector()
    # a run "killed" after one block, then resumed: the same detections as one uninterrupted run
    part = detect_slide(str(tiny_slide.path), str(tmp_path / "a"), fields, max_blocks=1, progress=False)
    assert not part["complete"] and part["blocks"] == 2 and part["blocks_done"] == 1
    record = json.loads((tmp_path / "a" / "tiny.progress.json").read_text())
    assert list(record["blocks"]) == ["0,0"]
    args = ["slide", "--input", str(tiny_slide.path), "--area-mm2", "0.05", "--noprogress"]
    main([*args, "--out", str(tmp_path / "a"), "--resume"])
    main([*args, "--out", str(tmp_path / "b")])
    a = json.loads((tmp_path / "a" / "tiny.json").read_text())
    b = json.loads((tmp_path / "b" / "tiny.json").read_text())
    assert a["complete"] and a["tissue_blocks"] == 2
    assert a["count"] == b["count"] and a["hotspot"] == b["hotspot"]
    csv_a = np.loadtxt(tmp_path / "a" / "tiny.csv", delimiter=",", ndmin=2)
    csv_b = np.loadtxt(tmp_path / "b" / "tiny.csv", delimiter=",", ndmin=2)
    np.testing.assert_array_equal(csv_a, csv_b)
    # level-0 coordinates: the slide path finds every planted mitosis that `detect` finds on the same
    # pixels read as one field (stain statistics from the whole field there, from tissue tiles here),
    # and its detections are mostly right (synthetic weights, synthetic slide)
    radius = 8.0 / tiny_slide.spacing
    level0 = tifffile.TiffFile(tiny_slide.path).series[0].levels[0].asarray()
    whole = fields(level0, tiny_slide.spacing)["detections"]
    m = match_points(tiny_slide.mitoses, csv_a[:, :2], radius=radius)
    m_whole = match_points(tiny_slide.mitoses, whole[:, :2], radius=radius)
    assert len(m_whole.gt_idx) > 0 and set(m.gt_idx.tolist()) >= set(m_whole.gt_idx.tolist())
    assert len(m.det_idx) >= 0.75 * len(csv_a)
    # the hotspot lies in the hot island and its count is the exact optimum of the detections
    hot = a["hotspot"]
    x0, y0, x1, y1 = tiny_slide.islands[tiny_slide.hot]
    assert x0 <= hot["centre"][0] <= x1 and y0 <= hot["centre"][1] <= y1
    r_px = np.sqrt(0.05 / np.pi) * 1000 / tiny_slide.spacing
    assert hot["count"] == best_circle(csv_a, r_px).count
    # outputs: GeoJSON points + hotspot polygon, ASAP XML parsed by ElementTree, heat map, HTML
    geo = json.loads((tmp_path / "a" / "tiny.geojson").read_text())
    kinds = [f["geometry"]["type"] for f in geo["features"]]
    assert kinds.count("Point") == a["count"] and kinds.count("Polygon") == 1
    root = ET.parse(tmp_path / "a" / "tiny.xml").getroot()
    dots = root.findall(".//Annotation[@Type='Dot']")
    assert len(dots) == a["count"] and len(root.findall(".//Annotation[@Type='Polygon']")) == 1
    xy = [(float(c.get("X")), float(c.get("Y"))) for d in dots for c in d.iter("Coordinate")]
    np.testing.assert_allclose(sorted(xy), sorted(map(tuple, np.round(csv_a[:, :2], 2))), atol=0.01)
    heat = np.load(tmp_path / "a" / "tiny_heatmap.npy")
    assert heat.ndim == 2 and heat.max() > 0 and (tmp_path / "a" / "tiny_heatmap.png").stat().st_size > 0
    page = (tmp_path / "a" / "tiny.html").read_text()
    assert "data:image/png;base64," in page and "synthetic data only" in page and "mitotic score" in page.lower()
    assert "mitotic score" in capsys.readouterr().out

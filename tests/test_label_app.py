"""The MONAI Label app's own logic (``apps/monailabel/lib/core.py``), without MONAI Label or a server."""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mssn_label_core", ROOT / "apps" / "monailabel" / "lib" / "core.py")
core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(core)

GEOJSON = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [10.0, 20.0]},
            "properties": {"classification": {"name": "Mitotic figure"}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]},
            "properties": {"classification": {"name": "Non-mitotic figure"}},
        },
    ],
}
ASAP = """<?xml version="1.0"?><ASAP_Annotations><Annotations>
<Annotation Name="a" Type="Polygon" PartOfGroup="mitosis"><Coordinates>
<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="10" Y="0"/>
<Coordinate Order="2" X="10" Y="10"/><Coordinate Order="3" X="0" Y="10"/></Coordinates></Annotation>
</Annotations></ASAP_Annotations>"""


def test_label_files_read_as_points(tmp_path):
    (tmp_path / "a.geojson").write_text(json.dumps(GEOJSON))
    (tmp_path / "b.xml").write_text(ASAP)
    labels = core.check_label_file(tmp_path / "a.geojson")
    assert labels.mitoses.tolist() == [[10.0, 20.0]] and labels.mimics.tolist() == [[2.0, 2.0]]
    assert core.check_label_file(tmp_path / "b.xml").mitoses.tolist() == [[5.0, 5.0]]
    records = core.datalist_records(
        [("img.png", str(tmp_path / "a.geojson"), None), ("j.png", str(tmp_path / "b.xml"), 0.5)]
    )
    assert records[0] == {"image": "img.png", "mitoses": [[10.0, 20.0]], "mimics": [[2.0, 2.0]], "spacing": 0.2456}
    assert records[1]["spacing"] == 0.5
    path = core.write_datalist(records, tmp_path / "dl" / "datalist.json")
    from mssn_monai.data.datalist import load_datalist

    assert [r["mitoses"] for r in load_datalist(path, "training")] == [[[10.0, 20.0]], [[5.0, 5.0]]]


@pytest.mark.parametrize("content", [b"not a label", b"<ASAP_Annotations><oops", b"[1, 2]", b'{"type": "Feature"}'])
def test_bad_label_file_is_one_line_naming_it(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"^bad label file .*bad\.json") as e:
        core.datalist_records([("img.png", str(bad), None)])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^bad label file for image 'x': ") as e:
        core.check_label_file(bad, name="for image 'x'")
    assert str(bad) not in str(e.value)


def _version(root: Path, name: str) -> Path:
    (root / name / "models").mkdir(parents=True)
    (root / name / "configs").mkdir()
    (root / name / "models" / "model.pt").write_bytes(b"x")
    (root / name / "configs" / "inference.json").write_text("{}")
    return root / name


def test_versions_newest_and_next(tmp_path):
    root = tmp_path / "versions"
    assert core.version_dirs(root) == [] and core.newest_bundle(root, "bundle") == Path("bundle")
    assert core.next_version_dir(root) == root / "v0001"
    _version(root, "v0001")
    v2 = _version(root, "v0002")
    (root / "v0003").mkdir()  # incomplete (a run that failed half way): never served
    (root / ".v0004.tmp").mkdir()
    assert core.version_dirs(root) == [root / "v0001", v2]
    assert core.newest_bundle(root, "bundle") == v2
    assert core.next_version_dir(root) == root / "v0004"


def test_most_uncertain():
    assert core.most_uncertain({}) is None
    assert core.most_uncertain({"a": 1.0, "b": 3.0, "c": float("nan")}) == "b"
    assert core.most_uncertain({"b": 2.0, "a": 2.0}) == "a"


class _FakeFPR:
    def __init__(self, slope):
        self.calibration = np.array([slope, 0.0])


class _FakeDetector:
    def __init__(self, threshold, slope=4.0):
        self.threshold = threshold
        self.fpr = _FakeFPR(slope)

    def operating_threshold(self):
        return self.threshold


class _FakeFields:
    def __init__(self, probability, voted, threshold=0.5, slope=4.0):
        self.out = {"probability": np.asarray(probability, float), "voted": np.asarray(voted, bool)}
        self.detector = _FakeDetector(threshold, slope)

    def __call__(self, image, spacing):
        return self.out


def test_field_uncertainty_counts_candidates_near_the_threshold_per_mm2_in_vote_units():
    image = np.zeros((1000, 1000, 3), np.uint8)  # 1 mm2 at 1 um/px
    res = core.field_uncertainty(_FakeFields([0.5, 0.5, 0.999999, 0.5], [True, True, True, False]), image, 1.0)
    assert res["candidates"] == 4 and res["area_mm2"] == pytest.approx(1.0)
    assert res["value"] == pytest.approx(3.0, abs=1e-3)  # three at the threshold (voted or not), one sure
    half = core.field_uncertainty(_FakeFields([0.5], [True]), np.zeros((1000, 2000, 3), np.uint8), 1.0)
    assert half["value"] == pytest.approx(0.5)
    assert core.field_uncertainty(_FakeFields([], [], threshold=0.0), image, 1.0)["value"] == 0.0
    # one vote width (0.25) from the threshold counts 1/e whatever the calibration's slope
    for slope in (4.0, 40.0):
        p = 1.0 / (1.0 + np.exp(-slope * core.VOTE_WIDTH))  # logit(p) = slope * 0.25, threshold 0.5
        got = core.field_uncertainty(_FakeFields([p], [True], slope=slope), image, 1.0)["value"]
        assert got == pytest.approx(1.0 / np.e)


def _tile(color, contour):
    return {"annotation": {"labels": {"mitosis": color}, "elements": [{"label": "mitosis", "contours": [contour]}]}}


def test_asap_xml_is_escaped_and_parses():
    res = {
        "name": "MONAILabel Annotations - mssn <1>",
        "description": 'Two-stage detection in H&E fields "research"',
        "model": "mssn_mitosis",
        "location": [5, 6],
        "size": [7, 8],
        "annotations": [
            _tile([0, 200, 0], [[1, 2], [3, 4], [5, 6]]),
            None,
            _tile("#00c800", [[9, 9], [9, 10], [10, 10]]),
        ],
    }
    text = core.asap_xml(res)
    root = ET.fromstring(text.encode())
    (ann,) = root.findall("Annotations")
    assert ann.get("Description") == 'Two-stage detection in H&E fields "research"'
    assert ann.get("Name") == "MONAILabel Annotations - mssn <1>" and ann.get("X") == "5" and ann.get("H") == "8"
    polygons = ann.findall("Annotation")
    assert len(polygons) == 2 and all(p.get("Color") == "#00c800" for p in polygons)
    assert [(c.get("X"), c.get("Y")) for c in polygons[0].iter("Coordinate")] == [("1", "2"), ("3", "4"), ("5", "6")]
    assert [g.get("Name") for g in root.iter("Group")] == ["mitosis"]


def test_asap_xml_is_read_by_javas_documentbuilder(tmp_path, java_asap):
    """What the QuPath extension does with an answer: Java's ``DocumentBuilder`` parses the file the app writes
    (``&``, ``<``, ``>``, both quotes and a non-ASCII character in the description and a group name)."""
    description = 'Two-stage detection in H&E fields <"research" only> it\'s 0.25 \u00b5m/px'
    res = {
        "name": "MONAILabel Annotations - mssn <1>",
        "description": description,
        "model": "mssn_mitosis",
        "location": [5, 6],
        "size": [7, 8],
        "annotations": [_tile([0, 200, 0], [[1, 2], [3, 4], [5, 6]]), _tile("#00c800", [[9.5, 9], [9, 10], [10, 10]])],
    }
    res["annotations"][1]["annotation"]["elements"][0]["label"] = "mitosis & <mimic>"
    path, n = core.write_asap_xml(res, tmp_path / "answer.xml")
    got = java_asap(path)
    assert got.root == "ASAP_Annotations" and n == 2
    assert got.attrs["Description"] == description and got.attrs["Name"] == res["name"]
    assert (got.attrs["X"], got.attrs["Y"], got.attrs["W"], got.attrs["H"]) == ("5", "6", "7", "8")
    assert got.annotations == [
        ("mitosis", "Polygon", "mitosis", [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]),
        ("mitosis & <mimic>", "Polygon", "mitosis & <mimic>", [(9.5, 9.0), (9.0, 10.0), (10.0, 10.0)]),
    ]


def test_java_documentbuilder_refuses_an_unescaped_description(tmp_path, java_asap):
    """The control: MONAI Label's own ASAP writer puts ``H&E`` into the attribute as it is; Java refuses that."""
    bad = tmp_path / "unescaped.xml"
    bad.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations Description="H&E"/></ASAP_Annotations>')
    with pytest.raises(ValueError, match=r'The reference to entity "E" must end with the \';\' delimiter'):
        java_asap(bad)


def test_merge_detections():
    tiles = [{"detections": [[1, 2, 0.5], [3, 4, 0.9]]}, None, {"detections": [[3, 4, 0.9], [7, 8, 0.7]]}, {}]
    assert core.merge_detections(tiles) == [[3.0, 4.0, 0.9], [7.0, 8.0, 0.7], [1.0, 2.0, 0.5]]


def _label_transforms():
    spec = importlib.util.spec_from_file_location(
        "mssn_label_transforms", ROOT / "apps" / "monailabel" / "lib" / "transforms.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_region_is_read_with_context_and_cut_back(tmp_path):
    """A region request reads CONTEXT_PX around it (on the stride-4 grid, clipped to the field); ToRegiond
    cuts the map back to the region and keeps only the points inside it, in region coordinates."""
    from mssn_monai.io import write_image

    t = _label_transforms()
    rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    write_image(tmp_path / "f.png", rgb)
    d = t.LoadFieldd()({"image": str(tmp_path / "f.png"), "location": [150, 10], "size": [100, 500]})
    x0 = (150 - t.CONTEXT_PX) // 4 * 4  # 20
    assert d["context"] == [150 - x0, 10, 100, 290] and tuple(d["image"].shape) == (3, 300, 250 + t.CONTEXT_PX - x0)
    np.testing.assert_allclose(d["image"][:, 10, 150 - x0].numpy(), rgb[10, 150] / 255.0, atol=1e-6)
    d["pred"] = np.zeros((1, 300, d["image"].shape[-1]))
    d["points"] = np.array([[130.0, 20.0, 0.9], [129.0, 20.0, 0.8], [140.0, 299.0, 0.7], [230.0, 5.0, 0.6]])
    out = t.ToRegiond()(d)
    assert out["pred"].shape == (1, 290, 100)
    np.testing.assert_array_equal(out["points"], [[0.0, 10.0, 0.9], [10.0, 289.0, 0.7]])
    whole = t.LoadFieldd()({"image": str(tmp_path / "f.png")})
    assert "context" not in whole and whole["location"] == [0, 0] and tuple(whole["image"].shape) == (3, 300, 400)
    assert t.ToRegiond()(dict(whole)) == whole  # no region: unchanged


def test_an_ellipse_from_the_qupath_extension_counts_at_its_centre(tmp_path):
    """The extension's Submit Label sends an ellipse as ``Type="Ellipse"`` with QuPath's 4 points of
    ``EllipseROI.getAllPoints`` (top, right, bottom, left of its box, truncated to int): the documented
    alternative to points, which it skips."""
    xml = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<ASAP_Annotations><Annotations Description="" H="0" Name="" W="0" X="0" Y="0">
<Annotation Color="#ff0000" Name="Mitotic figure" PartOfGroup="Mitotic figure" Type="Ellipse"><Coordinates>
<Coordinate Order="0" X="110" Y="200"/><Coordinate Order="1" X="118" Y="208"/>
<Coordinate Order="2" X="110" Y="216"/><Coordinate Order="3" X="102" Y="208"/></Coordinates></Annotation>
</Annotations><AnnotationGroups><Group Color="#ff0000" Name="Mitotic figure" PartOfGroup="None"/></AnnotationGroups>
</ASAP_Annotations>"""
    (tmp_path / "label.xml").write_text(xml)
    labels = core.check_label_file(tmp_path / "label.xml")
    assert labels.mitoses.tolist() == [[110.0, 208.0]] and len(labels.mimics) == 0

"""Point labels from ASAP XML, QuPath GeoJSON and DSA JSON: exact hand-made cases, the class rule, bad files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from mssn_monai.data.annotations import label_kind, parse_asap_xml, parse_dsa, parse_geojson, read_point_labels

ASAP = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="a1" Type="Dot" PartOfGroup="mitotic figure" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="10.5" Y="20" /></Coordinates>
    </Annotation>
    <Annotation Name="a2" Type="Polygon" PartOfGroup="Non-mitotic_figure">
      <Coordinates>
        <Coordinate Order="2" X="4" Y="2" /><Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="4" Y="0" /><Coordinate Order="3" X="0" Y="2" />
      </Coordinates>
    </Annotation>
    <Annotation Name="a3" Type="PointSet" PartOfGroup="Mitosis">
      <Coordinates><Coordinate Order="0" X="1" Y="1" /><Coordinate Order="1" X="2" Y="3" /></Coordinates>
    </Annotation>
    <Annotation Name="tumour" Type="Rectangle" PartOfGroup="Tumor">
      <Coordinates><Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="9" Y="0" />
      <Coordinate Order="2" X="9" Y="9" /><Coordinate Order="3" X="0" Y="9" /></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups><Group Name="mitotic figure" PartOfGroup="None" Color="#F4FA58" /></AnnotationGroups>
</ASAP_Annotations>
"""


def test_class_rule():
    for name in ("Mitotic figure", "mitosis", "MITOSES", " mitotic_figure ", "Mitotic-Figure"):
        assert label_kind(name) == "mitosis", name
    for name in ("Non-mitotic figure", "mimic", "not_mitosis", "Hard negative", "imposter"):
        assert label_kind(name) == "mimic", name
    for name in ("Tumor", "", None, "mitosis?", "Other"):
        assert label_kind(name) is None, name


def test_asap_dots_pointsets_and_polygon_centroids():
    labels = parse_asap_xml(ASAP)
    np.testing.assert_array_equal(labels.mitoses, [[10.5, 20], [1, 1], [2, 3]])
    np.testing.assert_array_equal(labels.mimics, [[2, 1]])  # the rectangle's centre, vertices given out of order
    assert labels.ignored == {"Tumor": 1}
    assert labels.to_record() == {"mitoses": [[10.5, 20.0], [1.0, 1.0], [2.0, 3.0]], "mimics": [[2.0, 1.0]]}


def test_asap_escaped_names_parse():
    """What the detector writes (H&amp;E in a description) is XML a real parser reads."""
    text = ASAP.replace('Name="a1"', 'Name="H&amp;E &lt;1&gt;"')
    assert ET.fromstring(text).find(".//Annotation").get("Name") == "H&E <1>"
    assert len(parse_asap_xml(text).mitoses) == 3


def test_geojson_points_polygons_and_class_forms():
    triangle = [[0, 0], [6, 0], [0, 3], [0, 0]]  # centroid (2, 1)
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]},
             "properties": {"classification": {"name": "Mitotic figure", "color": [255, 0, 0]}}},
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [triangle]},
             "properties": {"classification": "mimic"}},
            {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
             "properties": {"objectType": "annotation", "classification": {"name": "mitosis"}}},
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}, "properties": {}},
        ],
    }  # fmt: skip
    labels = parse_geojson(fc)
    np.testing.assert_array_equal(labels.mitoses, [[5, 6], [1, 2], [3, 4]])
    np.testing.assert_allclose(labels.mimics, [[2, 1]])
    assert labels.ignored == {"": 1}
    assert len(parse_geojson(fc["features"]).mitoses) == 3  # a bare list (QuPath's "export as list")
    assert len(parse_geojson(fc["features"][0]).mitoses) == 1  # one Feature


def test_dsa_points_polylines_and_groups():
    doc = {
        "annotation": {
            "name": "mitoses",
            "elements": [
                {"type": "point", "center": [100, 200, 0], "label": {"value": "mitosis"}},
                {"type": "polyline", "closed": True, "points": [[0, 0, 0], [4, 0, 0], [4, 4, 0], [0, 4, 0]],
                 "group": "non-mitotic figure"},
                {"type": "rectangle", "center": [7, 8, 0], "width": 4, "height": 2,
                 "label": {"value": "Mitotic figure"}},
                {"type": "polyline", "closed": False, "points": [[0, 0, 0], [2, 4, 0]], "group": "mimic"},
            ],
        }
    }  # fmt: skip
    labels = parse_dsa(doc)
    np.testing.assert_array_equal(labels.mitoses, [[100, 200], [7, 8]])
    np.testing.assert_array_equal(labels.mimics, [[2, 2], [1, 2]])
    assert len(parse_dsa([doc, doc]).mitoses) == 4 and len(parse_dsa(doc["annotation"]).mitoses) == 2


def test_read_point_labels_sniffs_the_format(tmp_path):
    (tmp_path / "a.xml").write_text(ASAP)
    (tmp_path / "b.geojson").write_text(
        json.dumps(
            [
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [1, 2]},
                    "properties": {"classification": {"name": "mitosis"}},
                }
            ]
        )
    )  # noqa: E501
    (tmp_path / "c.json").write_text(
        json.dumps({"elements": [{"type": "point", "center": [3, 4, 0], "group": "mitosis"}]})
    )
    assert len(read_point_labels(tmp_path / "a.xml").mitoses) == 3
    np.testing.assert_array_equal(read_point_labels(tmp_path / "b.geojson").mitoses, [[1, 2]])
    np.testing.assert_array_equal(read_point_labels(tmp_path / "c.json").mitoses, [[3, 4]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("<ASAP_Annotations><Annotations>", "not well-formed XML"),
        ("<html><body/></html>", "not an ASAP annotation file"),
        (ASAP.replace('X="10.5"', 'X="abc"'), "not a number"),
        (ASAP.replace('X="10.5"', 'X="nan"'), "finite"),
        ("{not json", "neither XML nor JSON"),
        ('{"type": "Topology"}', "not GeoJSON"),
        ('{"type": "Feature", "geometry": {"type": "Point", "coordinates": ["a", 1]}}', "not numbers"),
        ('{"type": "Feature", "geometry": {"type": "Circle", "coordinates": [1, 1]}}', "unsupported geometry"),
        ('{"elements": [{"type": "point"}]}', "element 0"),
        ("\x00\x01binary", "neither XML nor JSON"),
    ],
)
def test_bad_label_files_give_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_point_labels(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="no such label file"):
        read_point_labels(tmp_path / "missing.xml")

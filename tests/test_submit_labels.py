"""``scripts/submit_labels.py`` without a server: image ids from QuPath export names, checks, dry run."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the script imports its neighbour label_client
_spec = importlib.util.spec_from_file_location("mssn_submit_labels", ROOT / "scripts" / "submit_labels.py")
submit_labels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(submit_labels)


def _point(x, y, name):
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [x, y]},
        "properties": {"classification": {"name": name}},
    }


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("field_07.geojson", "field_07"),
        ("field_07.png.geojson", "field_07"),
        ("a.b.svs.json", "a.b"),
        ("x.tif.geojson", "x"),
    ],
)
def test_image_id_from_the_export_name(name, image):
    assert submit_labels.image_id_of(Path("exports") / name) == image


def test_dry_run_reads_points_and_sends_nothing(tmp_path, capsys):
    export = tmp_path / "f1.png.geojson"
    export.write_text(json.dumps([_point(1, 2, "Mitotic figure"), _point(3, 4, "mimic"), _point(5, 6, "Tumor")]))
    submit_labels.main(str(export), server="http://127.0.0.1:9", dry_run=True)  # port 9: nothing listens
    out = capsys.readouterr().out
    assert "1 mitoses, 1 mimics (ignored: Tumor 1) for image 'f1' (dry run, nothing sent)" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"type": "FeatureCollection", "features": [', r"^error: bad label file .*bad\.geojson: neither XML nor JSON"),
        (json.dumps([_point(1, 2, "Tumor")]), r"no shape classified as a mitosis or a mimic \(Tumor: 1\)"),
        (json.dumps({"type": "FeatureCollection", "features": []}), r"no shape classified .* \(no shapes\)"),
    ],
)
def test_a_bad_export_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.geojson"
    bad.write_text(content)
    with pytest.raises(SystemExit) as e:
        submit_labels.main(str(bad), dry_run=True)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.search(message, err), err


def test_no_server_is_one_line(tmp_path, capsys):
    export = tmp_path / "f1.geojson"
    export.write_text(json.dumps([_point(1, 2, "mitosis")]))
    with pytest.raises(SystemExit) as e:
        submit_labels.main(str(export), server="http://127.0.0.1:9")
    assert e.value.code == 2 and "error: no MONAI Label server at http://127.0.0.1:9" in capsys.readouterr().err

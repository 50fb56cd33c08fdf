"""Dataset readers on tiny fixtures written in each data set's published layout, plus ``prepare``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mssn_monai.data.datalist import load_datalist
from mssn_monai.data.formats import read_icpr2012, read_midog, read_mitos_atypia14, read_tupac16
from mssn_monai.data.prepare import prepare_datalist

REPO = Path(__file__).resolve().parents[2]
W, H = 64, 48  # fixture image width x height in pixels


def _tiff(path: Path, width: int = W, height: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((height, width, 3), np.uint8), photometric="rgb")
    return path


def _pil(path: Path, width: int = W, height: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- ICPR 2012


def _icpr(root: Path) -> Path:
    _pil(root / "A00_v2" / "A00_01.bmp")
    _text(root / "A00_v2" / "A00_01.csv", "10,20,12,20,11,23\n0,0,2,2\n")
    _pil(root / "A00_v2" / "A00_01.jpg")  # overlay, ignored
    _pil(root / "A00_v2" / "A00_02.bmp")
    _text(root / "A00_v2" / "A00_02.csv", "")
    _pil(root / "H01_v2" / "H01_01.bmp")
    _text(root / "H01_v2" / "H01_01.csv", "5,6\n")
    return root


def test_icpr2012_centroids_groups_spacing(tmp_path):
    records = read_icpr2012(_icpr(tmp_path))
    assert [Path(r["image"]).name for r in records] == ["A00_01.bmp", "A00_02.bmp", "H01_01.bmp"]
    assert all(Path(r["image"]).is_absolute() for r in records)
    assert records[0]["mitoses"] == [[11.0, 21.0], [1.0, 1.0]]  # mean of (10,20),(12,20),(11,23); of (0,0),(2,2)
    assert records[1]["mitoses"] == []  # empty CSV = no mitoses
    assert records[2]["mitoses"] == [[5.0, 6.0]]
    assert [r["mimics"] for r in records] == [[], [], []]
    assert [r["group"] for r in records] == ["A00_v2", "A00_v2", "H01_v2"]
    assert [r["spacing"] for r in records] == [0.2456, 0.2456, 0.2273]
    assert [r["domain"] for r in records] == ["aperio", "aperio", "hamamatsu"]  # the scanner weighs in validation
    assert {r["spacing"] for r in read_icpr2012(tmp_path, spacing=0.5)} == {0.5}
    assert [r["group"] for r in read_icpr2012(tmp_path / "H01_v2")] == ["H01_v2"]  # root = one slide


@pytest.mark.parametrize(
    "csv_text, match",
    [
        ("10,20,12\n", r"A00_01\.csv:1: odd number"),
        ("1,1\n10,20,x,20\n", r"A00_01\.csv:2: cannot parse"),
        ("60,20,70,20\n", r"A00_01\.csv:1: point \(x=70, y=20\) is outside the image .*A00_01\.bmp of 64x48"),
    ],
)
def test_icpr2012_bad_rows(tmp_path, csv_text, match):
    _icpr(tmp_path)
    _text(tmp_path / "A00_v2" / "A00_01.csv", csv_text)
    with pytest.raises(ValueError, match=match):
        read_icpr2012(tmp_path)


def test_icpr2012_missing_csv_names_the_field(tmp_path):
    _icpr(tmp_path)
    (tmp_path / "A00_v2" / "A00_02.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"A00_02\.bmp: no annotation file A00_02\.csv"):
        read_icpr2012(tmp_path)


def test_icpr2012_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_icpr2012(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path.resolve()))}: no ICPR 2012 fields found .*\.bmp"):
        read_icpr2012(tmp_path)
    _icpr(tmp_path)
    with pytest.raises(ValueError, match="annotations"):
        read_icpr2012(tmp_path, annotations="x.json")
    with pytest.raises(ValueError, match="spacing"):
        read_icpr2012(tmp_path, spacing=-1)
    (tmp_path / "A00_v2" / "A00_01.bmp").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"A00_01\.bmp: cannot read the image"):
        read_icpr2012(tmp_path)


# ---------------------------------------------------------------- MITOS-ATYPIA-14


def _mitos(root: Path) -> Path:
    a03 = root / "Training Aperio" / "A03"
    _tiff(a03 / "frames" / "x40" / "A03_00Aa.tiff")
    _tiff(a03 / "frames" / "x20" / "A03_00Aa.tiff", 32, 24)  # other magnifications are ignored
    _text(a03 / "mitosis" / "A03_00Aa_mitosis.csv", "30.5,12,0.8\n10,40,1\n")
    _text(a03 / "mitosis" / "A03_00Aa_not_mitosis.csv", "5,5,0.5\n")
    _tiff(a03 / "frames" / "x40" / "A03_00Ab.tiff")
    _text(a03 / "mitosis" / "A03_00Ab_mitosis.csv", "")
    h03 = root / "Training Hamamatsu" / "H03"
    _tiff(h03 / "frames" / "x40" / "H03_00Aa.tiff")
    _text(h03 / "mitosis" / "H03_00Aa_mitosis.csv", "64,48\n")  # far corner, no confidence column
    _tiff(root / "Testing Aperio" / "A10" / "frames" / "x40" / "A10_00Aa.tiff")  # unlabelled: skipped
    return root


def test_mitos_atypia14_points_confidence_groups(tmp_path):
    records = read_mitos_atypia14(_mitos(tmp_path))
    assert [Path(r["image"]).name for r in records] == ["A03_00Aa.tiff", "A03_00Ab.tiff", "H03_00Aa.tiff"]
    first = records[0]
    assert first["mitoses"] == [[30.5, 12.0], [10.0, 40.0]]
    assert first["mitosis_confidence"] == [0.8, 1.0]
    assert first["mimics"] == [[5.0, 5.0]]
    assert first["mimic_confidence"] == [0.5]
    assert records[1]["mitoses"] == [] and records[1]["mimics"] == []
    assert records[2]["mitoses"] == [[64.0, 48.0]] and records[2]["mitosis_confidence"] == [1.0]
    assert [r["group"] for r in records] == ["Training Aperio/A03", "Training Aperio/A03", "Training Hamamatsu/H03"]
    assert [r["spacing"] for r in records] == [0.2455, 0.2455, 0.2273]
    assert [r["domain"] for r in records] == ["aperio", "aperio", "hamamatsu"]
    # root may be one top folder or one slide folder
    assert len(read_mitos_atypia14(tmp_path / "Training Aperio")) == 2
    assert [r["group"] for r in read_mitos_atypia14(tmp_path / "Training Hamamatsu" / "H03")] == [
        "Training Hamamatsu/H03"
    ]


@pytest.mark.parametrize(
    "csv_text, match",
    [
        ("1,2,3,4\n", r"A03_00Aa_mitosis\.csv:1: expected x,y,confidence, got 4 values"),
        ("\n1,2,1\nx,2,1\n", r"A03_00Aa_mitosis\.csv:3: cannot parse"),
        ("1,2,nan\n", r"A03_00Aa_mitosis\.csv:1: non-finite"),
        ("65,2,1\n", r"A03_00Aa_mitosis\.csv:1: point \(x=65, y=2\) is outside .*A03_00Aa\.tiff of 64x48"),
    ],
)
def test_mitos_atypia14_bad_rows(tmp_path, csv_text, match):
    _mitos(tmp_path)
    _text(tmp_path / "Training Aperio" / "A03" / "mitosis" / "A03_00Aa_mitosis.csv", csv_text)
    with pytest.raises(ValueError, match=match):
        read_mitos_atypia14(tmp_path)


def test_mitos_atypia14_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_mitos_atypia14(tmp_path / "nowhere")
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(tmp_path.resolve()))}: no labelled MITOS-ATYPIA-14 frames .*found none"
    ):
        read_mitos_atypia14(tmp_path)
    _mitos(tmp_path)
    with pytest.raises(ValueError, match=r"no labelled .*found 1 frame\(s\), all in slides without a mitosis/"):
        read_mitos_atypia14(tmp_path / "Testing Aperio")
    mitosis = tmp_path / "Training Aperio" / "A03" / "mitosis"
    _text(mitosis / "A03_00Aa_not_mitosis.csv", "1,100,1\n")
    with pytest.raises(ValueError, match=r"A03_00Aa_not_mitosis\.csv:1: point \(x=1, y=100\)"):
        read_mitos_atypia14(tmp_path)
    _text(mitosis / "A03_00Aa_not_mitosis.csv", "")
    (mitosis / "A03_00Ab_mitosis.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"A03_00Ab\.tiff: no ground truth .*A03_00Ab_mitosis\.csv"):
        read_mitos_atypia14(tmp_path)
    (tmp_path / "Training Aperio" / "A03" / "frames" / "x40" / "A03_00Aa.tiff").write_bytes(b"II*\0garbage")
    with pytest.raises(ValueError, match=r"A03_00Aa\.tiff: cannot read the image"):
        read_mitos_atypia14(tmp_path / "Training Aperio")


def test_mitos_atypia14_reads_the_synthetic_generator(tmp_path):
    synthetic = pytest.importorskip("mssn_monai.data.synthetic")
    synthetic.generate_dataset(tmp_path, n_images=2, size=(96, 80), seed=0, spacing=0.2455, frames_per_slide=1)
    records = read_mitos_atypia14(tmp_path)
    assert len(records) == 2 and len({r["group"] for r in records}) == 2
    assert {r["spacing"] for r in records} == {0.2455}


# ---------------------------------------------------------------- TUPAC16 / AMIDA13


def _tupac(root: Path) -> Path:
    _tiff(root / "mitoses_image_data_part_1" / "01" / "01.tif")
    _tiff(root / "mitoses_image_data_part_1" / "01" / "02.tif")
    _tiff(root / "mitoses_image_data_part_2" / "24" / "01.tif")
    _text(root / "mitoses_ground_truth" / "01" / "01.csv", "30,10\n5,60\n")
    _text(root / "mitoses_ground_truth" / "24" / "01.csv", "1,2\n")
    _text(root / "nonmitoses_ground_truth" / "01" / "02.csv", "40,63\n")
    return root


def test_tupac16_row_col_to_xy(tmp_path):
    records = read_tupac16(_tupac(tmp_path))
    assert [(r["group"], Path(r["image"]).name) for r in records] == [
        ("01", "01.tif"),
        ("01", "02.tif"),
        ("24", "01.tif"),
    ]
    assert records[0]["mitoses"] == [[10.0, 30.0], [60.0, 5.0]]  # row,col = 30,10 -> x=10, y=30
    assert records[1]["mitoses"] == []  # no CSV = no mitoses
    assert records[1]["mimics"] == [[63.0, 40.0]]
    assert records[2]["mitoses"] == [[2.0, 1.0]]
    assert records[0]["mimics"] == [] and records[2]["mimics"] == []
    assert {r["spacing"] for r in records} == {0.25}


def test_tupac16_single_image_folder_and_annotations_folder(tmp_path):
    root, labels = tmp_path / "data", tmp_path / "alt"
    _tiff(root / "mitoses_image_data" / "03" / "07.tif")
    _text(labels / "mitoses_ground_truth" / "03" / "07.csv", "47,0\n")
    with pytest.raises(FileNotFoundError, match=r"mitoses_ground_truth: no such folder"):
        read_tupac16(root)
    (records,) = read_tupac16(root, annotations=labels, spacing=0.24)
    assert records["mitoses"] == [[0.0, 47.0]] and records["spacing"] == 0.24 and records["group"] == "03"


@pytest.mark.parametrize(
    "csv_text, match",
    [
        ("30\n", r"01[/\\]01\.csv:1: expected row,col, got 1 values"),
        ("30,10\n1;2\n", r"01[/\\]01\.csv:2: cannot parse"),
        ("50,10\n", r"01[/\\]01\.csv:1: point \(x=10, y=50\) is outside .*01\.tif of 64x48"),
    ],
)
def test_tupac16_bad_rows(tmp_path, csv_text, match):
    _tupac(tmp_path)
    _text(tmp_path / "mitoses_ground_truth" / "01" / "01.csv", csv_text)
    with pytest.raises(ValueError, match=match):
        read_tupac16(tmp_path)


def test_tupac16_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_tupac16(tmp_path / "nowhere")
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(tmp_path.resolve()))}: no TUPAC16 images found .*mitoses_image_data_part_\*"
    ):
        read_tupac16(tmp_path)
    _tupac(tmp_path)
    _text(tmp_path / "mitoses_ground_truth" / "05" / "01.csv", "1,1\n")
    with pytest.raises(ValueError, match=r"05[/\\]01\.csv: no image 05/01\.tif"):
        read_tupac16(tmp_path)
    (tmp_path / "mitoses_ground_truth" / "05" / "01.csv").unlink()
    _tiff(tmp_path / "mitoses_image_data_part_3" / "24" / "01.tif")
    with pytest.raises(ValueError, match=r"image 24/01 also found"):
        read_tupac16(tmp_path)
    (tmp_path / "mitoses_image_data_part_3" / "24" / "01.tif").unlink()
    (tmp_path / "mitoses_image_data_part_1" / "01" / "02.tif").write_bytes(b"")
    with pytest.raises(ValueError, match=r"02\.tif: cannot read the image"):
        read_tupac16(tmp_path)


# ---------------------------------------------------------------- MIDOG


def _midog(root: Path, name: str = "MIDOG++.json", **changes) -> Path:
    _tiff(root / "images" / "001.tiff")  # below root: found by the recursive search
    _tiff(root / "002.tiff", 50, 40)
    db = {
        "images": [
            {"file_name": "001.tiff", "id": 1, "width": W, "height": H, "tumor_type": "human breast cancer"},
            {"file_name": "002.tiff", "id": 2, "width": 50, "height": 40},
        ],
        "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}],
        "annotations": [
            {"bbox": [10, 20, 60, 70], "category_id": 1, "image_id": 1, "id": 1},
            {"bbox": [0, 0, 50, 40], "category_id": 2, "image_id": 1, "id": 2},
            {"bbox": [20.5, 10, 30.5, 20], "category_id": 1, "image_id": 2, "id": 3},
        ],
    }
    db.update(changes)
    _text(root / name, json.dumps(db))
    return root


def test_midog_bbox_centres_and_categories(tmp_path):
    records = read_midog(_midog(tmp_path))
    assert [Path(r["image"]).name for r in records] == ["001.tiff", "002.tiff"]
    assert records[0]["mitoses"] == [[35.0, 45.0]]  # bbox [10, 20, 60, 70] is [x1, y1, x2, y2]
    assert records[0]["mimics"] == [[25.0, 20.0]]
    assert records[1]["mitoses"] == [[25.5, 15.0]] and records[1]["mimics"] == []
    assert [r["group"] for r in records] == ["001.tiff", "002.tiff"]
    assert {r["spacing"] for r in records} == {0.25}
    assert records[0]["domain"] == "human breast cancer" and "domain" not in records[1]  # tumor_type, when given


def test_midog_categories_by_name_then_id_and_case_group(tmp_path):
    renamed = [{"id": 2, "name": "mitotic figure"}, {"id": 1, "name": "hard negative"}, {"id": 3, "name": "other"}]
    records = read_midog(_midog(tmp_path, categories=renamed))
    assert records[0]["mitoses"] == [[25.0, 20.0]] and records[0]["mimics"] == [[35.0, 45.0]]
    images = [
        {"file_name": "001.tiff", "id": 1, "width": W, "height": H, "case": "c7"},
        {"file_name": "002.tiff", "id": 2, "width": 50, "height": 40, "case": "c7"},
    ]
    db = tmp_path / "other.json"
    _midog(tmp_path, name="other.json", categories=[], images=images)
    records = read_midog(tmp_path, annotations=db, spacing=0.23)
    assert records[0]["mitoses"] == [[35.0, 45.0]] and records[0]["mimics"] == [[25.0, 20.0]]
    assert [r["group"] for r in records] == ["c7", "c7"] and {r["spacing"] for r in records} == {0.23}


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"annotations": [{"bbox": [30, 30, 10, 10], "category_id": 1, "image_id": 1, "id": 9}]},
            r"\(id 9\): bad bbox",
        ),
        ({"annotations": [{"bbox": [50, 40, 90, 60], "category_id": 1, "image_id": 1}]}, r"point \(x=70, y=50\)"),
        ({"annotations": [{"bbox": [1, 1, 2, 2], "category_id": 1, "image_id": 5}]}, r"image_id 5 is not"),
        ({"annotations": [{"bbox": [1, 1, 2, 2], "category_id": 4, "image_id": 1}]}, r"category_id 4 is not"),
        ({"images": []}, r"MIDOG\+\+\.json: no images listed"),
        ({"images": [{"file_name": "001.tiff", "id": 1, "width": 65, "height": H}]}, r"says 65x48 px but"),
    ],
)
def test_midog_bad_entries(tmp_path, changes, match):
    _midog(tmp_path, **changes)
    with pytest.raises(ValueError, match=match) as info:
        read_midog(tmp_path)
    assert "MIDOG++.json" in str(info.value)


def test_midog_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_midog(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no MIDOG annotation database \(MIDOG\+\+\.json or MIDOG\.json\)"):
        read_midog(tmp_path)
    _midog(tmp_path, name="MIDOG.json", images=[{"file_name": "003.tiff", "id": 1, "width": W, "height": H}])
    with pytest.raises(FileNotFoundError, match=r"MIDOG\.json: image '003\.tiff' not found"):
        read_midog(tmp_path)
    _text(tmp_path / "MIDOG.json", "{not json")
    with pytest.raises(ValueError, match=r"MIDOG\.json: not valid JSON"):
        read_midog(tmp_path)
    _midog(tmp_path, name="MIDOG.json")
    (tmp_path / "002.tiff").write_bytes(b"MM\0*broken")
    with pytest.raises(ValueError, match=r"002\.tiff: cannot read the image"):
        read_midog(tmp_path)


# ---------------------------------------------------------------- prepare + CLI


def test_prepare_datalist_writes_relative_paths(tmp_path):
    out = tmp_path / "lists" / "datalist.json"
    datalist = prepare_datalist("MITOS-ATYPIA-14", _mitos(tmp_path / "data"), out, val_fraction=0, test_fraction=0.5)
    assert [len({r["group"] for r in v}) for v in datalist.values()] == [1, 0, 1]  # 2 slides, 3 frames
    assert sum(len(v) for v in datalist.values()) == 3
    on_disk = json.loads(out.read_text())
    assert all(r["image"].startswith("../data/Training ") for v in on_disk.values() for r in v)
    assert list(on_disk["testing"][0])[:5] == ["image", "mitoses", "mimics", "spacing", "group"]
    assert load_datalist(out) == datalist


def test_prepare_datalist_writes_nothing_on_error(tmp_path):
    root = _mitos(tmp_path / "data")
    _text(root / "Training Aperio" / "A03" / "mitosis" / "A03_00Ab_mitosis.csv", "1,2,3,4,5\n")
    out = tmp_path / "datalist.json"
    with pytest.raises(ValueError, match=r"A03_00Ab_mitosis\.csv:1"):
        prepare_datalist("mitos-atypia-14", root, out)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_datalist("mitos-atypia-14", root, out, val_fraction=1.5)
    assert not out.exists()
    _text(out, "previous")
    with pytest.raises(FileNotFoundError):
        prepare_datalist("icpr2012", tmp_path / "nowhere", out)
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "datalist.json"]  # no temporary file left


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "mssn_monai", "prepare", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cli_prepare_missing_root(tmp_path):
    result = _cli("--format", "tupac16", "--root", str(tmp_path / "nowhere"), "--out", "d.json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0]
    assert not (tmp_path / "d.json").exists()


def test_cli_prepare_unknown_format(tmp_path):
    result = _cli("--format", "midogg", "--root", str(tmp_path), "--out", "d.json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--format: unknown format 'midogg'" in lines[0] and "did you mean 'midog'" in lines[0]
    assert not (tmp_path / "d.json").exists()


def test_scanner_unknown_needs_spacing_and_names_no_domain(tmp_path):
    """A scanner the names do not tell: refused without ``spacing``; with it, records carry no ``domain``."""
    _tiff(tmp_path / "icpr" / "X00_v2" / "X00_01.bmp")
    _text(tmp_path / "icpr" / "X00_v2" / "X00_01.csv", "")
    with pytest.raises(ValueError, match="cannot tell the scanner"):
        read_icpr2012(tmp_path / "icpr")
    assert "domain" not in read_icpr2012(tmp_path / "icpr", spacing=0.25)[0]
    slide = tmp_path / "mitos" / "Training Other" / "S01"
    _tiff(slide / "frames" / "x40" / "S01_00.tiff")
    _text(slide / "mitosis" / "S01_00_mitosis.csv", "")
    with pytest.raises(ValueError, match="cannot tell the scanner"):
        read_mitos_atypia14(tmp_path / "mitos")
    assert "domain" not in read_mitos_atypia14(tmp_path / "mitos", spacing=0.25)[0]

"""Group-wise splits, and the datalist's round trip through JSON."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest

from mssn_monai.data.datalist import load_datalist, split_by_group, write_datalist


def _records(n_groups: int, per_group: int = 3) -> list[dict]:
    return [
        {
            "image": f"/data/s{g:02d}/f{i}.tiff",
            "mitoses": [[1.0, 2.0]],
            "mimics": [],
            "spacing": 0.25,
            "group": f"s{g:02d}",
        }
        for g in range(n_groups)
        for i in range(per_group)
    ]


def _groups(records: list[dict]) -> set[str]:
    return {r["group"] for r in records}


def test_split_keeps_groups_whole_and_counts_groups():
    records = _records(20)
    split = split_by_group(records, val_fraction=0.15, test_fraction=0.15, seed=3)
    assert list(split) == ["training", "validation", "testing"]
    assert [len(_groups(v)) for v in split.values()] == [14, 3, 3]
    train, val, test = (_groups(v) for v in split.values())
    assert not (train & val or train & test or val & test)
    assert sorted(r["image"] for v in split.values() for r in v) == sorted(r["image"] for r in records)
    assert all(len(v) == 3 * len(_groups(v)) for v in split.values())  # all fields of a group together


def test_split_is_deterministic_by_seed_and_does_not_mutate():
    records = _records(12)
    before = copy.deepcopy(records)
    a = split_by_group(records, 0.25, 0.25, seed=7)
    reordered = split_by_group(list(reversed(records)), 0.25, 0.25, seed=7)
    assert [_groups(v) for v in a.values()] == [_groups(v) for v in reordered.values()]  # input order irrelevant
    assert a == split_by_group(records, 0.25, 0.25, seed=7)
    assert any(
        _groups(a["testing"]) != _groups(split_by_group(records, 0.25, 0.25, seed=s)["testing"]) for s in range(5)
    )
    assert records == before
    a["training"][0]["mitoses"] = "changed"
    assert records == before


def test_split_small_data_gives_each_requested_section_a_group():
    split = split_by_group(_records(3), val_fraction=0.1, test_fraction=0.1, seed=0)
    assert [len(_groups(v)) for v in split.values()] == [1, 1, 1]
    split = split_by_group(_records(4), val_fraction=0.0, test_fraction=1.0, seed=0)
    assert [len(_groups(v)) for v in split.values()] == [0, 0, 4]
    split = split_by_group(_records(5), val_fraction=0.0, test_fraction=0.0, seed=0)
    assert [len(_groups(v)) for v in split.values()] == [5, 0, 0]
    assert split_by_group([], 0.2, 0.2) == {"training": [], "validation": [], "testing": []}


def test_split_too_few_groups_warns(caplog):
    with caplog.at_level(logging.WARNING):
        split = split_by_group(_records(2), val_fraction=0.3, test_fraction=0.3, seed=0)
    assert sorted(len(_groups(v)) for v in split.values()) == [0, 1, 1]
    assert "only 2 group(s)" in caplog.text


def test_split_record_without_group_is_its_own_group():
    records = [{"image": f"/x/{i}.png", "mitoses": []} for i in range(10)]
    split = split_by_group(records, 0.2, 0.2, seed=1)
    assert [len(v) for v in split.values()] == [6, 2, 2]


@pytest.mark.parametrize(
    "val, test, match",
    [
        (-0.1, 0.1, "val_fraction"),
        (0.1, 1.5, "test_fraction"),
        (0.6, 0.6, r"<= 1, got 0\.6 \+ 0\.6"),
        (float("nan"), 0, "val"),
    ],
)
def test_split_bad_fractions(val, test, match):
    with pytest.raises(ValueError, match=match):
        split_by_group(_records(4), val, test)


def test_write_and_load_round_trip(tmp_path):
    image = tmp_path / "data" / "A00_v2" / "A00_01.bmp"
    record = {"group": "A00_v2", "spacing": 0.2456, "mimics": [], "mitoses": [[1.5, 2.0]], "image": str(image)}
    datalist = {"training": [record], "validation": [], "testing": [dict(record, image="rel/B.png")]}
    before = copy.deepcopy(datalist)
    out = tmp_path / "lists" / "datalist.json"
    assert write_datalist(datalist, out) == out
    assert datalist == before
    on_disk = json.loads(out.read_text())
    assert on_disk["training"][0] == {
        "image": "../data/A00_v2/A00_01.bmp",
        "mitoses": [[1.5, 2.0]],
        "mimics": [],
        "spacing": 0.2456,
        "group": "A00_v2",
    }
    assert list(on_disk["training"][0]) == ["image", "mitoses", "mimics", "spacing", "group"]
    loaded = load_datalist(out)
    assert loaded["training"][0]["image"] == str(image)
    assert loaded["testing"][0]["image"] == str(tmp_path / "lists" / "rel" / "B.png")
    assert load_datalist(out, "validation") == []
    assert [r["image"] for r in load_datalist(out, "all")] == [str(image), str(tmp_path / "lists" / "rel" / "B.png")]
    assert [Path(p).name for p in os.listdir(out.parent)] == ["datalist.json"]  # no temporary file left


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "d.json"
    with pytest.raises(FileNotFoundError, match="d.json"):
        load_datalist(path)
    path.write_text("{oops")
    with pytest.raises(ValueError, match=r"d\.json: not valid JSON"):
        load_datalist(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"d\.json: a datalist must be a JSON object"):
        load_datalist(path)
    path.write_text(json.dumps({"training": [{"image": "a.png"}], "testing": [{"mitoses": []}]}))
    with pytest.raises(ValueError, match=r"d\.json: no section 'validation' .*'training', 'testing'"):
        load_datalist(path, "validation")
    with pytest.raises(ValueError, match=r"d\.json: testing\[0\] is not a record with an 'image' key"):
        load_datalist(path, "all")
    assert load_datalist(path, "training") == [{"image": str(tmp_path / "a.png")}]


def test_write_rejects_bad_datalist_before_writing(tmp_path):
    out = tmp_path / "d.json"
    with pytest.raises(ValueError, match=r"d\.json: training\[1\]: record has no 'image'"):
        write_datalist({"training": [{"image": "a.png"}, {"mitoses": []}]}, out)
    with pytest.raises(ValueError, match="must be a list of records"):
        write_datalist({"training": "a.png"}, out)
    assert not out.exists()


@pytest.mark.parametrize(
    "record, match",
    [
        (
            {"image": "a.png", "mitoses": "abc"},
            r"'mitoses' must be a list of \[x, y\] points \(finite numbers\), got 'abc'",
        ),
        ({"image": "a.png", "mitoses": [[1, 2], [3]]}, r"'mitoses' .* got \[3\] among 2 points"),
        ({"image": "a.png", "mimics": [[1, "2"]]}, r"'mimics' .* got \[1, '2'\]"),
        ({"image": "a.png", "mitoses": [[1, float("nan")]]}, r"'mitoses' .* got \[1, nan\]"),
        ({"image": "a.png", "mitoses": [[True, 2]]}, r"'mitoses' .* got \[True, 2\]"),
        ({"image": "a.png", "spacing": "0.25"}, r"'spacing' must be a positive number of um/px, got '0.25'"),
        ({"image": "a.png", "spacing": 0}, r"'spacing' must be a positive number of um/px, got 0"),
        ({"image": 7}, r"'image' must be a file path \(text\), got 7"),
    ],
)
def test_load_bad_record_values_name_the_file_record_and_key(tmp_path, record, match):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"training": [{"image": "ok.png"}], "testing": [record]}))
    where = r"d\.json: testing\[0\]" + (r" \(a\.png\)" if record["image"] == "a.png" else "")
    with pytest.raises(ValueError, match=where + ": " + match):
        load_datalist(path, "all")
    assert load_datalist(path, "training")[0]["image"].endswith("ok.png")  # only the sections read are checked


def test_load_accepts_empty_and_missing_optional_keys(tmp_path):
    path = tmp_path / "d.json"
    records = [
        {"image": "a.png", "mitoses": [], "mimics": None},
        {"image": "b.png", "mitoses": [[1.5, 2]], "spacing": 1},
    ]
    path.write_text(json.dumps({"testing": records}))
    assert [r["mitoses"] for r in load_datalist(path, "testing")] == [[], [[1.5, 2]]]

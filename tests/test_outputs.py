"""Output naming (``mssn_monai.io.output_stems``): no two inputs share an output stem; CLI and bundle refuse first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mssn_monai.cli import main
from mssn_monai.io import list_images, output_stems, write_image
from mssn_monai.outputs import SYNTHETIC_WEIGHTS_NOTE, write_detection_outputs


def test_output_stems_one_per_image(tmp_path):
    files = [Path("a/01.tif"), Path("a/02.png"), Path("b/03.jpeg")]
    assert output_stems(files, tmp_path / "out") == [tmp_path / "out" / s for s in ("01", "02", "03")]
    assert output_stems([], tmp_path) == []


@pytest.mark.parametrize(
    "files",
    [["a/01.tif", "b/01.tif"], ["x.png", "x.tif"]],
    ids=["same_name_two_folders", "same_stem_two_suffixes"],
)
def test_output_stems_refuses_a_shared_stem_naming_both(tmp_path, files):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="would be shared by several inputs") as err:
        output_stems([tmp_path / f for f in files], out)
    for f in files:
        assert str(tmp_path / f) in str(err.value)
    assert not out.exists()  # nothing written: output_stems only names


def test_output_stems_names_every_clash_once(tmp_path):
    files = ["a/01.tif", "b/01.tif", "c/01.png", "x.png", "y/x.tif", "z.png"]
    with pytest.raises(ValueError, match=r"^2 output name\(s\)") as err:
        output_stems(files, tmp_path)
    message = str(err.value)
    assert all(f in message for f in files[:5]) and "z.png" not in message


def _folder_with_a_clash(root: Path) -> Path:
    src = root / "in"
    image = np.full((16, 16, 3), 200, np.uint8)
    write_image(src / "a" / "01.tif", image)
    write_image(src / "b" / "01.tif", image)
    write_image(src / "c" / "02.png", image)  # would be fine on its own
    return src


@pytest.mark.parametrize("command", ["detect", "candidates"])
def test_cli_refuses_a_folder_with_shared_stems_and_writes_nothing(tmp_path, capsys, command):
    src = _folder_with_a_clash(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--input", str(src), "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "01" in err
    assert str(src / "a" / "01.tif") in err and str(src / "b" / "01.tif") in err
    assert not out.exists() or not any(out.iterdir())  # not even 02's results


def test_write_detection_outputs_files_and_summary(tmp_path):
    det = np.array([[10.0, 20.0, 0.9], [3.0, 4.0, 0.6]])
    result = {"detections": det, "candidates": np.zeros((5, 3))}
    summary = write_detection_outputs(tmp_path / "f", None, result, 0.25, {"k": 1.0}, size=(100, 200))
    assert {p.name for p in tmp_path.iterdir()} == {"f.csv", "f.geojson", "f.json"}
    assert (summary["width"], summary["height"], summary["count"], summary["candidates"]) == (200, 100, 2, 5)
    assert summary["area_mm2"] == 200 * 100 * 0.25**2 / 1e6
    assert summary["note"] == SYNTHETIC_WEIGHTS_NOTE and summary["settings"] == {"k": 1.0}
    with pytest.raises(ValueError, match="needs the image"):
        write_detection_outputs(tmp_path / "g", None, result, 0.25, {}, overlay=True, size=(10, 10))


def test_bundle_inference_records_refuse_colliding_outputs(tmp_path):
    from mssn_monai.data.datalist import inference_records

    for sub in ("a", "b"):
        write_image(tmp_path / "in" / sub / "01.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="01"):
        inference_records(tmp_path / "in")


def test_broken_links_are_reported_not_skipped_silently(tmp_path, caplog):
    write_image(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with caplog.at_level("WARNING"):
        assert list_images(tmp_path / "in") == [tmp_path / "in" / "a.png"]
    assert "gone.png" in caplog.text and "broken link" in caplog.text


def test_temporaries_of_a_killed_run_are_removed_at_the_next_run(tmp_path):
    import os
    import time

    from mssn_monai.io import remove_stale_temporaries

    out = tmp_path / "out"
    out.mkdir()
    stale, fresh, other = out / ".a.csv.x1y2.tmp", out / ".b.csv.z3.tmp", out / "notes.tmp"
    for p in (stale, fresh, other):
        p.write_text("half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert remove_stale_temporaries(out) == 1
    assert not stale.exists() and fresh.exists() and other.exists()  # a running writer's file and a user's file stay

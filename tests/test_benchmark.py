"""``python -m mssn_monai benchmark``: every suite's options checked before any work, and a tiny run of each."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from mssn_monai.benchmark import SUITES, format_suite, resolve_options, run_suite
from mssn_monai.cli import ARG_LIMITS, main


def _run(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", *argv])
    return exc.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--suite", "fnrr"], "--suite: unknown suite 'fnrr', expected one of headline, fnr, detector"),
        (["--suite", "data", "--sizes", "32"], "--sizes: sizes must be at least 64 px on a side, got '32'"),
        (["--suite", "fnr", "--sizes", "12x"], "--sizes: expected sizes like 2048 or 6000x5000, got '12x'"),
        (["--suite", "fnr", "--sizes", "512,abc"], "--sizes: expected sizes like 2048 or 6000x5000, got 'abc'"),
        (["--suite", "detector", "--tiles", "0"], "--tiles: expected numbers >= 4, got '0'"),
        (["--suite", "memory", "--formats", "jpg"], "--formats: unknown value 'jpg', expected one of png, tif"),
        (["--suite", "memory", "--sizes", "16384", "--formats", "png"], "detect refuses PNG over"),
        (["--suite", "data", "--tiles", "1024"], "--tiles: not an option of --suite data"),
        (["--suite", "data", "--device", "cpu"], "--device: not an option of --suite data"),
        (["--sizes", "512"], "--sizes: not an option of --suite headline"),
        (["--suite", "fnr", "--noregion"], "--region: not an option of --suite fnr"),
        (["--repeats", "0"], "--repeats: expected a number >= 1, got '0'"),
        (["--suite", "data", "--size", "64"], "--size: no such flag for 'benchmark' (did you mean --sizes?)"),
    ],
)
def test_bad_options_stop_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, *argv, "--json", "out.json")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_bad_sizes_fail_before_importing_torch():
    code = (
        "import sys\n"
        "from mssn_monai.cli import main\n"
        "try:\n"
        "    main(['benchmark', '--suite', 'detector', '--sizes', '6000x'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["2", "False"], r.stderr


def test_options_table():
    assert tuple(ARG_LIMITS["benchmark"]["suite"]) == tuple(SUITES)
    options = resolve_options("memory", sizes="2048,40000x30000", formats=("TIF",), threads=2)
    assert options["sizes"] == [(2048, 2048), (40000, 30000)] and options["formats"] == ["tif"]
    assert options["threads"] == 2 and options["out"] is None
    assert resolve_options("detector", sizes=(1024, 2048), tiles=512)["tiles"] == [512]
    assert resolve_options("data")["repeats"] == 5


def test_data_suite_writes_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / "data.json"
    main(["benchmark", "--suite", "data", "--sizes", "64,96x64", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "synth s/field" in printed and "96x64" in printed
    results = json.loads(out.read_text())
    assert [r["size"] for r in results["rows"]] == ["64x64", "96x64"]
    assert all(r["synth_seconds"] > 0 and r["baseline_seconds"] > 0 for r in results["rows"])


def test_fnr_suite_counts_every_part():
    results = run_suite("fnr", resolve_options("fnr", sizes="128", repeats=1, threads=1))
    parts = {r["part"]: r for r in results["parts"]}
    assert set(parts) == {"stem", "square72", "square96", "crossbar", "dilated120", "total"}
    assert parts["total"]["params"] == 114_500
    assert sum(r["gflops"] for p, r in parts.items() if p != "total") == pytest.approx(parts["total"]["gflops"])
    assert results["fields"][0]["seconds"] > 0
    assert "GFLOPs" in format_suite("fnr", results)


@pytest.mark.slow
def test_detector_suite_measures_a_child_process():
    results = run_suite("detector", resolve_options("detector", sizes="256", tiles="128", repeats=1, threads=1))
    (row,) = results["rows"]
    assert row["region"] == "256x256" and row["tile"] == 128 and row["mode"] == "eager"
    assert row["seconds"] > 0 and row["peak_rss_mb"] > 100  # torch and the model are in the child's memory
    assert "peak RSS MB" in format_suite("detector", results)


@pytest.mark.slow
def test_memory_suite_runs_detect(tmp_path):
    options = resolve_options("memory", sizes="256", formats="png,tif", threads=1, out=str(tmp_path))
    results = run_suite("memory", options)
    assert [(r["size"], r["format"]) for r in results["rows"]] == [("256x256", "png"), ("256x256", "tif")]
    assert all(r["peak_rss_mb"] > 100 and r["detections"] >= 0 for r in results["rows"])
    assert (tmp_path / "field_256x256.tif").is_file()  # kept under --out for the next run


@pytest.mark.slow
def test_headline_suite_small():
    from mssn_monai.benchmark.headline import format_benchmark, run_benchmark

    results = run_benchmark(
        "cpu",
        repeats=1,
        threads=1,
        naive_cells=16,
        slide_size=(2048, 2048),
        slide_islands=1,
        field_px=256,
        region_size=(256, 256),
        large_slide_px=512,
    )
    keys = ("field_seconds", "naive_ratio", "floor_ratio", "region_seconds", "peak_rss_mb", "slide_mm2_per_s")
    for key in (*keys, "slide_large_mm2_per_s", "slide_large_mm2_per_s_int8"):
        assert math.isfinite(results[key]), key
    for key in ("field_seconds_int8", "stage1_seconds_int8", "slide_mm2_per_s_int8"):  # the shipped calibration
        assert math.isfinite(results[key]), key
    assert "field_seconds" in format_benchmark(results)

"""Strict command lines: a mistyped or invalid flag stops the command before it reads or writes anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mssn_monai.cli import ARG_LIMITS, COMMANDS, main
from mssn_monai.cli_args import ArgumentError, Interval, check_command_args


def _run(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


@pytest.mark.parametrize(
    "argv, flag, suggestion",
    [
        (["detect", "--input", "in", "--out", "OUT", "--spacin", "0.25"], "--spacin", "--spacing"),
        (["prepare", "--format", "midog", "--root", "r", "--out", "OUT", "--val-frac", "0.2"], "--val-frac", None),
        (["evaluate", "--datalist", "d.json", "--pred", "p", "--out", "OUT", "--radius", "4"], "--radius", None),
        (["baseline", "--input", "in", "--out", "OUT", "--spacing=0.25", "--overlay"], "--overlay", None),
    ],
)
def test_unknown_flag_stops_before_anything_is_written(tmp_path, monkeypatch, capsys, argv, flag, suggestion):
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {flag}: no such flag for {argv[0]!r}")
    expected = {"--spacin": "--spacing", "--val-frac": "--val-fraction", "--radius": "--radius-um"}.get(flag)
    if expected:
        assert f"did you mean {expected}?" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_mistyped_flag_keeps_an_existing_datalist(tmp_path, monkeypatch, capsys):
    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"training": [], "validation": [], "testing": []}\n')
    code, err = _run(
        capsys, "prepare", "--format", "mitos-atypia-14", "--root", str(tmp_path), "--out", str(datalist), "--val-frac"
    )
    assert code == 2 and "--val-frac" in err
    assert datalist.read_text() == '{"training": [], "validation": [], "testing": []}\n'


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["evaluate", "--datalist", "d", "--pred", "p", "--radius-um", "abc"],
            "--radius-um: expected a number, got 'abc'",
        ),
        (
            ["detect", "--input", "i", "--out", "o", "--spacing", "inf"],
            "--spacing: expected a finite number, got 'inf'",
        ),
        (["detect", "--input", "i", "--out", "o", "--spacing=nan"], "--spacing: expected a finite number, got 'nan'"),
        (["detect", "--input", "i", "--out", "o", "--spacing", "-inf"], "--spacing: expected a finite number"),
        (["detect", "--input", "i", "--out", "o", "--spacing", "0"], "--spacing: expected a number > 0, got '0'"),
        (["baseline", "i", "o", "--spacing", "-0.5"], "--spacing: expected a number > 0, got '-0.5'"),
        (
            ["prepare", "--format", "midog", "--root", "r", "--val_fraction", "1.5"],
            "--val-fraction: expected a number in",
        ),
        (["prepare", "--format", "midog", "--root", "r", "--test-fraction", "-0.1"], "--test-fraction: expected"),
        (["synth", "--out", "o", "--n-images", "0"], "--n-images: expected a number >= 1, got '0'"),
        (["synth", "--out", "o", "--n-images", "2.5"], "--n-images: expected an integer, got '2.5'"),
        (["synth", "--out", "o", "--style", "shiftd"], "--style: unknown style 'shiftd'"),
        (["synth", "--out", "o", "--style", "pale", "--exclude", "dark"], "exclude applies to the styles 'random' and"),
        (["synth", "--out", "o", "--style", "random", "--exclude", "pal"], "exclude: unknown style 'pal'"),
        (
            ["candidates", "--input", "i", "--out", "o", "--threshold", "1.5"],
            "--threshold: expected a number in [0, 1]",
        ),
        (["evaluate", "--datalist", "d", "--pred", "p", "--matching", "hungarian"], "--matching: unknown matching"),
        (["prepare", "--format", "midogg", "--root", "r"], "did you mean 'midog'?"),
        (["detect", "--input", "i"], "--out: missing, 'detect' needs --out"),
        (["detect"], "--input: missing, 'detect' needs --input and --out"),
        (
            ["detect", "i", "o", "b", "0.25", "True", "cpu", "False", "False", "extra"],
            "'extra': unexpected argument for 'detect'",
        ),
        (["detect", "--input", "i", "--out", "--overlay"], "--out: expected a value after the flag, got none"),
        (["detect", "--input", "i", "--out", "o", "--overlay", "false"], "--overlay: expected True or False"),
        (["detect", "--input", "i", "--out", "o", "--nospacing"], "--nospacing: --spacing is not a true/false flag"),
        (["detect", "--input", "a,b", "--out", "o"], "--input: expected one value, got 'a,b'"),
        (["synth", "-s", "3", "--out", "o"], "-s: ambiguous for 'synth'"),
        (
            ["evaluate", "--datalist", "d", "--pred", "p", "--section", "None"],
            "--section: expected a value, got 'None'",
        ),
    ],
)
def test_invalid_values_name_the_flag(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["detect", "--input", "i", "--out", "o", "--spacing", "0.25", "--overlay"],
        ["detect", "--input=i", "--out=o", "--spacing=0.25", "--nooverlay", "--device", "cpu"],
        ["detect", "i", "o", "--spacing", "0.25"],
        ["detect", "-s", "0.25", "--input", "i", "--out", "o", "--overlay", "True", "--bundle", "None"],
        ["evaluate", "--datalist", "d", "--pred", "p", "--radius_um", "4", "--radius-um", "5", "--sweep"],
        ["evaluate", "d", "p", "all", "8", "greedy", "0.5", "True", "report.json"],
        ["evaluate", "--datalist", "d", "--pred", "p", "--threshold", "2.5", "--matching", "Greedy"],
        ["prepare", "--format", "MIDOG", "--root", "r", "--val-fraction", "0", "--test-fraction", "1", "--seed", "3"],
        ["prepare", "midog", "r", "--spacing", "None"],
        ["synth", "--out", "o", "--n-images", "3", "--size", "64,48", "--seed", "1e0"],
        ["synth", "--out", "o", "--style", "random", "--exclude", "pale,dark"],
        ["candidates", "--input", "i", "--out", "o", "--threshold", "0.5", "--bundle", "b"],
        ["demo"],
        ["detect", "--help"],
        ["detect", "--spacin", "1", "--", "--help"],
        ["nosuchcommand", "--whatever"],
        [],
    ],
)
def test_valid_command_lines_pass(argv):
    if argv[-1:] == ["1e0"]:  # fire reads 1e0 as a float: not an integer
        with pytest.raises(ArgumentError, match="--seed: expected an integer"):
            check_command_args(argv, COMMANDS, ARG_LIMITS)
        return
    check_command_args(argv, COMMANDS, ARG_LIMITS)


def test_limits_table_matches_the_library():
    from mssn_monai.data.prepare import FORMATS
    from mssn_monai.data.synthetic import STYLES
    from mssn_monai.metrics import MatchingMethod

    assert tuple(ARG_LIMITS["prepare"]["format"]) == tuple(FORMATS)
    assert tuple(ARG_LIMITS["synth"]["style"]) == tuple(STYLES)
    assert {m.value for m in MatchingMethod} == set(ARG_LIMITS["evaluate"]["matching"])
    for command, limits in ARG_LIMITS.items():
        names = set(COMMANDS[command].__code__.co_varnames[: COMMANDS[command].__code__.co_argcount])
        assert set(limits) <= names, command
        for limit in limits.values():
            if isinstance(limit, str):
                Interval.parse(limit)


def test_interval_notation():
    assert 0.5 in Interval.parse("(0, inf)") and 0 not in Interval.parse("(0, inf)")
    assert 1 in Interval.parse("[0, 1]") and 1 not in Interval.parse("[0, 1)")
    assert Interval.parse("[1, inf)").describe() == ">= 1" and Interval.parse("[0, 1]").describe() == "in [0, 1]"
    with pytest.raises(ValueError, match="notation"):
        Interval.parse("0..1")


def test_unknown_format_fails_before_importing_torch(tmp_path):
    code = (
        "import sys\n"
        "from mssn_monai.cli import main\n"
        "try:\n"
        f"    main(['prepare', '--format', 'nope', '--root', {str(tmp_path)!r}])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["2", "False"], r.stderr
    assert "--format: unknown format 'nope'" in r.stderr


def test_help_still_works():
    r = subprocess.run(
        [sys.executable, "-m", "mssn_monai", "evaluate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "--radius_um" in r.stdout + r.stderr


def test_as_flag_reads_the_strings_monai_bundle_passes():
    """``monai.bundle run ... --resume false`` passes the string 'false': it must mean false, not true."""
    from mssn_monai.cli_args import as_flag

    for value in (True, 1, "true", "True", " YES ", "on", "1"):
        assert as_flag(value, "resume") is True
    for value in (False, 0, "false", "False", "no", "OFF", "0"):
        assert as_flag(value, "resume") is False
    for bad in ("flase", "", 2, None, 0.5):
        with pytest.raises(ArgumentError, match="resume must be true or false"):
            as_flag(bad, "resume")

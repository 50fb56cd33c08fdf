"""One place for speed numbers: ``python -m mssn_monai benchmark [--suite SUITE] [suite options] [--json FILE]``.

Suites (each prints a table and, with ``--json``, writes its numbers as JSON):

- ``headline`` (the default, :mod:`~mssn_monai.benchmark.headline`): field, naive and floor ratios, the
  6000x5000 region's time and peak memory, slide mm² per second.
- ``fnr`` (:mod:`~mssn_monai.benchmark.fnr`): GFLOPs and parameters per FNR part, time per field.
- ``detector`` (:mod:`~mssn_monai.benchmark.detector`): the whole detector on large regions, per tile
  size, eager or TorchScript, with each run's peak memory.
- ``memory`` (:mod:`~mssn_monai.benchmark.memory`): peak memory of the ``detect`` command end to end
  on PNG and tiled-TIFF fields.
- ``data`` (:mod:`~mssn_monai.benchmark.data`): the synthetic generator and the classical baseline.

Shared helpers (timing, a child's peak memory, tiled synthetic fields) are in
:mod:`~mssn_monai.benchmark.common`. :func:`resolve_options` checks a suite's options without importing
torch, so a bad command line ends before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mssn_monai.benchmark.common import parse_choices, parse_ints, parse_sizes

__all__ = ["SUITES", "resolve_options", "run_suite", "format_suite"]

SUITES: dict[str, dict[str, Any]] = {
    "headline": {"device": "cpu", "repeats": 3, "threads": None, "bundle": None, "region": True},
    "fnr": {"device": "cpu", "repeats": 3, "threads": None, "sizes": "2084"},
    "detector": {
        "device": "cpu",
        "repeats": 3,
        "threads": None,
        "bundle": None,
        "sizes": "1024x1024,2084x2084,6000x5000",
        "tiles": "1024,2048",
        "scripted": False,
    },
    "memory": {
        "device": "cpu",
        "threads": None,
        "bundle": None,
        "sizes": "2048,4096,8192",
        "formats": "png,tif",
        "out": None,
    },
    "data": {"repeats": 5, "sizes": "512,1024,2084"},
}
"""Each suite's options and their defaults (an option left out does not apply to that suite)."""

MIN_SIZE = 64
"""Smallest field side the suites take, in pixels."""


def resolve_options(suite: str, **given: Any) -> dict[str, Any]:
    """The suite's options: its defaults, overridden by the ``given`` ones that are not ``None``, parsed.

    Raises:
        ValueError: an unknown suite, an option the suite does not take, or a size, tile or format
            list that does not parse or is out of range (one line naming the flag); nothing runs first.
    """
    if suite not in SUITES:
        raise ValueError(f"--suite: unknown suite {suite!r}, expected one of {', '.join(SUITES)}")
    options = dict(SUITES[suite])
    for name, value in given.items():
        if value is None:
            continue
        if name not in options:
            takes = ", ".join("--" + n.replace("_", "-") for n in options)
            raise ValueError(f"--{name.replace('_', '-')}: not an option of --suite {suite} (it takes {takes}, --json)")
        options[name] = value
    if "sizes" in options:
        options["sizes"] = parse_sizes(options["sizes"], minimum=MIN_SIZE)
    if "tiles" in options:
        options["tiles"] = parse_ints(options["tiles"], "--tiles", minimum=4)
    if "formats" in options:
        options["formats"] = parse_choices(options["formats"], "--formats", ("png", "tif"))
        _check_readable(options["sizes"], options["formats"])
    return options


def _check_readable(sizes: list[tuple[int, int]], formats: list[str]) -> None:
    """Refuse, before writing any image, the sizes ``detect`` would refuse to read in that format."""
    from mssn_monai import io

    for w, h in sizes:
        if "png" in formats and w * h > io.MAX_DECODED_IMAGE_PIXELS:
            raise ValueError(f"--sizes {w}x{h}: detect refuses PNG over MAX_DECODED_IMAGE_PIXELS; use --formats tif")
        if "tif" in formats and w * h > io.MAX_TILED_PIXELS:
            raise ValueError(f"--sizes {w}x{h}: detect refuses tiled TIFF over MAX_TILED_PIXELS")


def _runners() -> dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], str]]]:
    from mssn_monai.benchmark.data import format_data, run_data
    from mssn_monai.benchmark.detector import format_detector, run_detector
    from mssn_monai.benchmark.fnr import format_fnr, run_fnr
    from mssn_monai.benchmark.headline import format_benchmark, run_benchmark
    from mssn_monai.benchmark.memory import format_memory, run_memory

    return {
        "headline": (run_benchmark, format_benchmark),
        "fnr": (run_fnr, format_fnr),
        "detector": (run_detector, format_detector),
        "memory": (run_memory, format_memory),
        "data": (run_data, format_data),
    }


def run_suite(suite: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run ``suite`` with :func:`resolve_options`' result; its numbers as a JSON-able dict."""
    return _runners()[suite][0](**options)


def format_suite(suite: str, results: dict[str, Any]) -> str:
    """``suite``'s table of :func:`run_suite`'s numbers."""
    return _runners()[suite][1](results)

"""What the suites share: timing, a child process's peak memory, tiled synthetic fields, argument lists, tables.

Nothing here imports torch: the suites import it when they run, so that argument errors end before it loads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ChildRun",
    "format_table",
    "parse_choices",
    "parse_ints",
    "parse_sizes",
    "run_child",
    "run_in_child",
    "tiled_field",
    "timed",
]

_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def _no_sync() -> None:
    return None


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = _no_sync) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls of ``fn`` after one untimed warm-up call, and the last result.

    ``sync`` runs after every call, inside the timing (``torch.cuda.synchronize`` on a GPU).
    """
    fn()
    sync()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return times, out


@dataclass(frozen=True)
class ChildRun:
    """One finished child process: wall seconds, its peak resident memory (``wait4``'s ``ru_maxrss``), stdout."""

    seconds: float
    peak_rss_mb: float
    stdout: str


def run_child(argv: Sequence[str], threads: int | None = None) -> ChildRun:
    """Run ``argv`` in a fresh process that imports this copy of ``mssn_monai``; its peak RSS is its own.

    ``threads`` sets ``OMP_NUM_THREADS`` in the child. Raises ``RuntimeError`` with the child's last line
    of stderr when it fails.
    """
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_PACKAGE_PARENT)] + ([path] if path else []))}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        lines = err.read().decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {lines[-1] if lines else '(no stderr)'}")
    return ChildRun(seconds, usage.ru_maxrss / 1024, stdout)


_CHILD_CODE = (
    "import importlib, json, sys; module, name = sys.argv[1].split(':'); "
    "print(json.dumps(getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))))"
)


def run_in_child(function: str, kwargs: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Call ``"module:function"(**kwargs)`` in a fresh process (see :func:`run_child`); its JSON dict plus
    ``peak_rss_mb``."""
    run = run_child([sys.executable, "-c", _CHILD_CODE, function, json.dumps(kwargs)], threads=threads)
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "peak_rss_mb": run.peak_rss_mb}


def tiled_field(width: int, height: int, seed: int = 4) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 region: one synthetic 1024x1024 field tiled, then cropped."""
    from mssn_monai.data.synthetic import generate_field

    field = generate_field((1024, 1024), seed=seed).image
    return np.ascontiguousarray(np.tile(field, (-(-height // 1024), -(-width // 1024), 1))[:height, :width])


def _items(value: Any) -> list[str]:
    """fire passes ``a,b`` as a tuple and ``a`` as a str or int: a list of stripped strings either way."""
    items = [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")
    return [item.strip() for item in items]


def parse_sizes(value: Any, flag: str = "--sizes", minimum: int = 1) -> list[tuple[int, int]]:
    """``"2048,40000x30000"`` -> ``[(2048, 2048), (40000, 30000)]`` (width x height), or a one-line ``ValueError``."""
    sizes = []
    for item in _items(value):
        match = re.fullmatch(r"(\d+)(?:x(\d+))?", item.lower())
        if match is None:
            raise ValueError(f"{flag}: expected sizes like 2048 or 6000x5000, got {item!r}")
        size = (int(match.group(1)), int(match.group(2) or match.group(1)))
        if min(size) < minimum:
            raise ValueError(f"{flag}: sizes must be at least {minimum} px on a side, got {item!r}")
        sizes.append(size)
    return sizes


def parse_ints(value: Any, flag: str, minimum: int = 1) -> list[int]:
    """``"1024,2048"`` -> ``[1024, 2048]``, each ``>= minimum``, or a one-line ``ValueError``."""
    out = []
    for item in _items(value):
        try:
            number = int(item)
        except ValueError:
            raise ValueError(f"{flag}: expected whole numbers separated by commas, got {item!r}") from None
        if number < minimum:
            raise ValueError(f"{flag}: expected numbers >= {minimum}, got {item!r}")
        out.append(number)
    return out


def parse_choices(value: Any, flag: str, choices: Sequence[str]) -> list[str]:
    """``"png,tif"`` -> ``["png", "tif"]``, each one of ``choices``, or a one-line ``ValueError``."""
    out = [item.lower() for item in _items(value)]
    for item in out:
        if item not in choices:
            raise ValueError(f"{flag}: unknown value {item!r}, expected one of {', '.join(choices)}")
    return out


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a right-aligned text table; ``columns`` are ``(key, header, format spec)``."""
    cells = [[format(row[key], spec) for key, _, spec in columns] for row in rows]
    widths = [max([len(header)] + [len(c[i]) for c in cells]) for i, (_, header, _) in enumerate(columns)]
    lines = [" ".join(f"{header:>{w}}" for (_, header, _), w in zip(columns, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += [" ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)

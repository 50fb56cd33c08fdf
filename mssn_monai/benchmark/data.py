"""Seconds per field of the synthetic generator and of the classical baseline.

``python -m mssn_monai benchmark --suite data [--sizes 512,1024,2084] [--repeats 5]``

Medians of ``repeats`` runs after one warm-up run; the generator draws a new field (seed) each run.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from mssn_monai.benchmark.common import format_table, timed

__all__ = ["run_data", "format_data"]


def run_data(sizes: list[tuple[int, int]], repeats: int = 5) -> dict[str, Any]:
    """Median seconds per field of ``generate_field`` and ``detect_baseline`` at each ``(width, height)``."""
    from mssn_monai.baseline import detect_baseline
    from mssn_monai.data.synthetic import generate_field

    rows = []
    for w, h in sizes:
        seeds = itertools.count(1000)
        synth, _ = timed(lambda w=w, h=h, seeds=seeds: generate_field((w, h), seed=next(seeds)), repeats)
        field = generate_field((w, h), seed=1)
        base, _ = timed(lambda field=field: detect_baseline(field.image, field.spacing), repeats)
        rows.append(
            {"size": f"{w}x{h}", "synth_seconds": statistics.median(synth), "baseline_seconds": statistics.median(base)}
        )
    return {"suite": "data", "repeats": repeats, "rows": rows}


def format_data(results: dict[str, Any]) -> str:
    """The table of :func:`run_data`."""
    table = format_table(
        results["rows"],
        [
            ("size", "field (px)", ""),
            ("synth_seconds", "synth s/field", ".3f"),
            ("baseline_seconds", "baseline s/field", ".3f"),
        ],
    )
    return f"synthetic generator and classical baseline, medians of {results['repeats']}\n{table}"

"""Time the synthetic generator and the classical baseline; print a table.

Usage::

    .venv/bin/python scripts/benchmark_data.py [--sizes 512,1024,2084] [--repeats 5]

Numbers depend on the machine and its load: compare rows of one run, not runs.
"""

from __future__ import annotations

import time

import fire
import numpy as np

from mssn_monai.baseline import detect_baseline
from mssn_monai.data.synthetic import generate_field


def _median_time(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(sizes: tuple[int, ...] = (512, 1024, 2084), repeats: int = 5) -> None:
    """Print median seconds per field for ``generate_field`` and ``detect_baseline`` at each size."""
    if isinstance(sizes, int):
        sizes = (sizes,)
    generate_field((64, 64), seed=0)  # warm-up: imports and first-call costs
    print(f"{'field (px)':>12} {'synth s/field':>14} {'baseline s/field':>17}")
    for s in sizes:
        t_synth = _median_time(lambda i, s=s: generate_field((s, s), seed=1000 + i), repeats)
        f = generate_field((s, s), seed=1)
        t_base = _median_time(lambda i, f=f: detect_baseline(f.image, f.spacing), repeats)
        print(f"{f'{s}x{s}':>12} {t_synth:>14.3f} {t_base:>17.3f}")


if __name__ == "__main__":
    fire.Fire(main)

"""Throughput and peak memory of the whole two-stage detector (``MSSNDetector.detect``) on large regions.

Each configuration runs in its own process, so its peak resident memory (``ru_maxrss``) is its own.
The region is a synthetic field tiled up to the requested size (uint8 input, as the bundle's
``detect`` command feeds it after stain normalisation). Prints a table: region, tile size, eager or
TorchScript, median seconds over ``--repeats`` runs, peak RSS, candidates and detections.

Usage::

    python scripts/benchmark_detector.py [--sizes 1024x1024,2084x2084,6000x5000] [--tiles 1024,2048]
        [--repeats 3] [--threads 2] [--scripted]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, statistics, sys, time, warnings
import numpy as np, torch
sys.path.insert(0, {repo!r})
from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_network
from mssn_monai.data.synthetic import generate_field
from mssn_monai.networks.detector import MSSNDetector

torch.set_num_threads({threads})
w, h, tile, repeats, scripted = {w}, {h}, {tile}, {repeats}, {scripted}
root = DEFAULT_BUNDLE
base = load_network(root / "models" / "model.pt", root / "configs" / "inference.json", "network_def")
det = MSSNDetector(base.fnr, base.fpr, tile_px=tile).eval()
if scripted:
    warnings.simplefilter("ignore")
    det = torch.jit.script(det)
field = generate_field((1024, 1024), seed=4).image
reps = (-(-h // 1024), -(-w // 1024), 1)
image = torch.from_numpy(np.ascontiguousarray(np.tile(field, reps)[:h, :w])).permute(2, 0, 1).contiguous()
times = []
with torch.inference_mode():
    for _ in range(repeats):
        t = time.perf_counter()
        out = det.detect(image, 0.2456)
        times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n_cand, n_det = int(out["candidates"].shape[0]), int(out["detections"].shape[0])
result = {{"seconds": statistics.median(times), "peak_rss_mb": peak, "candidates": n_cand, "detections": n_det}}
print(json.dumps(result))
"""


def _items(value: str | int | tuple) -> list[str]:
    """Fire passes ``a,b`` as a tuple, ``a`` as a str or int: a list of strings either way."""
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def benchmark(
    sizes: str = "1024x1024,2084x2084,6000x5000",
    tiles: str = "1024,2048",
    repeats: int = 3,
    threads: int = 2,
    scripted: bool = False,
) -> list[dict]:
    """Run every (size, tile) configuration in a fresh process and print the table.

    Args:
        sizes: comma-separated ``WIDTHxHEIGHT`` regions in pixels.
        tiles: comma-separated FNR tile sizes in pixels.
        repeats: runs per configuration (the median is reported).
        threads: torch CPU threads.
        scripted: also time the TorchScript detector.
    """
    tile_list = [int(t) for t in _items(tiles)]
    size_list = [tuple(int(v) for v in s.lower().split("x")) for s in _items(sizes)]
    rows = []
    header = (
        f"{'region':>11} {'tile':>5} {'mode':>11} {'seconds':>8} {'peak RSS MB':>12} {'candidates':>10} "
        f"{'detections':>10}"
    )
    print(header)
    print("-" * len(header))
    for w, h in size_list:
        for tile in tile_list:
            for mode in ("eager", "torchscript") if scripted else ("eager",):
                code = _CHILD.format(
                    repo=str(REPO), threads=threads, w=w, h=h, tile=tile, repeats=repeats, scripted=mode != "eager"
                )
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                if r.returncode != 0:
                    print(r.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"benchmark failed for {w}x{h} tile {tile} {mode}")
                row = {
                    "region": f"{w}x{h}",
                    "tile": tile,
                    "mode": mode,
                    **json.loads(r.stdout.strip().splitlines()[-1]),
                }
                rows.append(row)
                print(
                    f"{row['region']:>11} {tile:>5} {mode:>11} {row['seconds']:>8.2f} {row['peak_rss_mb']:>12.0f} "
                    f"{row['candidates']:>10} {row['detections']:>10}"
                )
    return rows


if __name__ == "__main__":
    fire.Fire(lambda **kw: None if benchmark(**kw) else None)

"""Peak resident memory of the ``detect`` command, end to end (decoding, stain normalisation, both stages).

For each size a synthetic field is tiled up to ``size x size`` and written as a PNG and as a tiled,
deflate-compressed TIFF; ``python -m mssn_monai detect`` then runs on each file in its own process and
the table gives the child's peak RSS (``ru_maxrss``), its wall time and the detections written.

Usage::

    python scripts/benchmark_memory.py --out runs/memory [--sizes 2048,4096,8192,40000x30000] [--formats png,tif]
        [--threads 2]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fire
import numpy as np


def _items(value: str | int | tuple) -> list[str]:
    """Fire passes ``a,b`` as a tuple, ``a`` as a str or int: a list of strings either way."""
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else str(value).split(",")


def _size(text: str) -> tuple[int, int]:
    """``"8192"`` -> ``(8192, 8192)``; ``"40000x30000"`` -> ``(40000, 30000)`` (width x height)."""
    w, _, h = str(text).lower().partition("x")
    return int(w), int(h or w)


def _write_field(path: Path, size: tuple[int, int]) -> None:
    import tifffile
    from PIL import Image

    from mssn_monai.data.synthetic import generate_field

    if path.is_file():
        return
    field = generate_field((1024, 1024), seed=4).image
    w, h = size
    image = np.ascontiguousarray(np.tile(field, (-(-h // 1024), -(-w // 1024), 1))[:h, :w])
    tmp = path.with_name(path.name + ".part")
    if path.suffix == ".png":
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
    else:
        tifffile.imwrite(tmp, image, tile=(512, 512), compression="zlib", photometric="rgb")
    os.replace(tmp, path)


def _run_detect(image: Path, out: Path, threads: int) -> dict:
    """One ``detect`` run in a fresh process; peak RSS read from ``wait4``'s rusage."""
    cmd = [sys.executable, "-m", "mssn_monai", "detect", "--input", str(image), "--out", str(out)]
    shutil.rmtree(out, ignore_errors=True)  # detect refuses to replace earlier outputs
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"detect failed on {image}: {err[-1] if err else status}")
    summary = json.loads((out / f"{image.stem}.json").read_text())
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "detections": summary["count"]}


def main(
    out: str = "runs/memory", sizes: str | int | tuple = "2048,4096,8192", formats: str | tuple = "png,tif",
    threads: int = 2,
) -> list[dict]:  # fmt: skip
    """Print the peak-memory table and write ``OUT/memory.json``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'field':>12} {'format':>6} {'MB on disk':>10} {'seconds':>8} {'peak RSS MB':>11} {'detections':>10}")
    for text in _items(sizes):
        (w, h), name = _size(text), text
        for fmt in _items(formats):
            image = root / f"field_{name}.{fmt}"
            _write_field(image, (w, h))
            row = {"size": name, "format": fmt, **_run_detect(image, root / f"out_{name}_{fmt}", threads)}
            row["file_mb"] = image.stat().st_size / 2**20
            rows.append(row)
            print(
                f"{w:>5}x{h:<6} {fmt:>6} {row['file_mb']:>10.1f} {row['seconds']:>8.1f} "
                f"{row['peak_rss_mb']:>11.0f} {row['detections']!s:>10}",
                flush=True,
            )
    (root / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    fire.Fire(main)

"""Peak resident memory of the ``detect`` command, end to end (decoding, stain normalisation, both stages).

``python -m mssn_monai benchmark --suite memory [--sizes 2048,4096,8192,40000x30000] [--formats png,tif]
[--threads 2] [--out DIR] [--bundle DIR] [--device cpu|cuda]``

For each size a synthetic 1024x1024 field is tiled up to ``width x height`` and written as a PNG and as a
tiled (512x512), deflate-compressed TIFF; ``python -m mssn_monai detect`` then runs on each file in its
own process and the table gives the child's peak RSS (``wait4``'s ``ru_maxrss``), its wall time and the
detections written. The images are kept under ``--out`` and reused by later runs (default: a temporary
folder, removed at the end).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from mssn_monai.benchmark.common import format_table, run_child, tiled_field

__all__ = ["FORMATS", "run_memory", "format_memory"]

FORMATS = ("png", "tif")


def _write_field(path: Path, width: int, height: int) -> None:
    import tifffile
    from PIL import Image

    if path.is_file():
        return
    image = tiled_field(width, height)
    tmp = path.with_name(path.name + ".part")
    if path.suffix == ".png":
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
    else:
        tifffile.imwrite(tmp, image, tile=(512, 512), compression="zlib", photometric="rgb")
    os.replace(tmp, path)


def run_memory(
    sizes: list[tuple[int, int]],
    formats: list[str],
    threads: int | None = None,
    out: str | None = None,
    device: str = "cpu",
    bundle: str | None = None,
) -> dict[str, Any]:
    """One ``detect`` process per (size, format); the rows of the table."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = []
        for w, h in sizes:
            for fmt in formats:
                image = root / f"field_{w}x{h}.{fmt}"
                _write_field(image, w, h)
                result = root / f"out_{w}x{h}_{fmt}"
                shutil.rmtree(result, ignore_errors=True)  # detect refuses to replace earlier outputs
                argv = [sys.executable, "-m", "mssn_monai", "detect", "--input", str(image), "--out", str(result)]
                argv += ["--device", device] + (["--bundle", bundle] if bundle is not None else [])
                run = run_child(argv, threads)
                summary = json.loads((result / f"{image.stem}.json").read_text())
                rows.append(
                    {
                        "size": f"{w}x{h}",
                        "format": fmt,
                        "file_mb": image.stat().st_size / 2**20,
                        "seconds": run.seconds,
                        "peak_rss_mb": run.peak_rss_mb,
                        "detections": summary["count"],
                    }
                )
    return {"suite": "memory", "device": device, "threads": threads, "rows": rows}


def format_memory(results: dict[str, Any]) -> str:
    """The table of :func:`run_memory`."""
    head = f"detect, end to end, {results['device']}, threads {results['threads'] or 'default'}, once each"
    table = format_table(
        results["rows"],
        [
            ("size", "field", ""),
            ("format", "format", ""),
            ("file_mb", "MB on disk", ".1f"),
            ("seconds", "seconds", ".1f"),
            ("peak_rss_mb", "peak RSS MB", ".0f"),
            ("detections", "detections", "d"),
        ],
    )
    return f"{head}\n{table}"

"""Throughput and peak memory of the whole two-stage detector (``MSSNDetector.detect``) on large regions.

``python -m mssn_monai benchmark --suite detector [--sizes 1024x1024,2084x2084,6000x5000] [--tiles 1024,2048]
[--repeats 3] [--threads 2] [--scripted] [--bundle DIR] [--device cpu|cuda]``

Each (region, tile, mode) runs in its own process, so its peak resident memory (``wait4``'s
``ru_maxrss``) is its own. The region is a synthetic 1024x1024 field tiled up to the requested size
(uint8 input, as ``detect`` feeds it after stain normalisation). Seconds are the median of ``repeats``
runs after one warm-up run; ``--scripted`` also times the TorchScript detector.
"""

from __future__ import annotations

from typing import Any

from mssn_monai.benchmark.common import format_table, run_in_child

__all__ = ["run_detector", "format_detector", "detector_child"]


def detector_child(
    width: int,
    height: int,
    tile: int,
    repeats: int,
    scripted: bool,
    threads: int | None,
    device: str,
    bundle: str | None,
) -> dict[str, Any]:
    """In the child process: the bundle's networks as an ``MSSNDetector`` of tile ``tile`` on one region."""
    import statistics
    import warnings
    from pathlib import Path

    import torch

    from mssn_monai.benchmark.common import tiled_field, timed
    from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_network
    from mssn_monai.constants import DEFAULT_SPACING_UM
    from mssn_monai.networks.detector import MSSNDetector

    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    root = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    base = load_network(root / "models" / "model.pt", root / "configs" / "inference.json", "network_def", dev)
    det = MSSNDetector(base.fnr, base.fpr, tile_px=tile).to(dev).eval()
    if scripted:
        warnings.simplefilter("ignore")
        det = torch.jit.script(det)
    image = torch.from_numpy(tiled_field(width, height)).permute(2, 0, 1).contiguous().to(dev)

    def once() -> Any:
        with torch.inference_mode():
            return det.detect(image, DEFAULT_SPACING_UM)

    times, out = timed(once, repeats, torch.cuda.synchronize if dev.type == "cuda" else lambda: None)
    return {
        "seconds": statistics.median(times),
        "candidates": int(out["candidates"].shape[0]),
        "detections": int(out["detections"].shape[0]),
    }


def run_detector(
    sizes: list[tuple[int, int]],
    tiles: list[int],
    repeats: int = 3,
    threads: int | None = None,
    scripted: bool = False,
    device: str = "cpu",
    bundle: str | None = None,
) -> dict[str, Any]:
    """Every (size, tile, mode) in a fresh process; the rows of the table."""
    rows = []
    for w, h in sizes:
        for tile in tiles:
            for mode in ("eager", "torchscript") if scripted else ("eager",):
                kwargs = {
                    "width": w,
                    "height": h,
                    "tile": tile,
                    "repeats": repeats,
                    "scripted": mode != "eager",
                    "threads": threads,
                    "device": device,
                    "bundle": bundle,
                }
                child = run_in_child("mssn_monai.benchmark.detector:detector_child", kwargs, threads)
                rows.append({"region": f"{w}x{h}", "tile": tile, "mode": mode, **child})
    return {"suite": "detector", "device": device, "threads": threads, "repeats": repeats, "rows": rows}


def format_detector(results: dict[str, Any]) -> str:
    """The table of :func:`run_detector`."""
    threads = results["threads"] or "default"
    head = f"MSSNDetector.detect, {results['device']}, threads {threads}, medians of {results['repeats']}"
    table = format_table(
        results["rows"],
        [
            ("region", "region", ""),
            ("tile", "tile", "d"),
            ("mode", "mode", ""),
            ("seconds", "seconds", ".2f"),
            ("peak_rss_mb", "peak RSS MB", ".0f"),
            ("candidates", "candidates", "d"),
            ("detections", "detections", "d"),
        ],
    )
    return f"{head}\n{table}"

"""The headline numbers: ``python -m mssn_monai benchmark [--device cpu|cuda] [--json FILE]`` (``--suite headline``).

Every number comes from the bundle's detector as users run it (:func:`mssn_monai.checkpoints.load_detector`:
stain normalisation, both stages), after a warm-up run, as the median of ``repeats`` runs where stated:

- ``field_seconds``: both stages on one synthetic 2084x2084 field (median of ``repeats``);
  ``field_seconds_bf16`` the same with stage 1 in bfloat16 (``--bf16`` of ``detect``).
- ``stage1_seconds``: the dense FNR alone on that field (median of ``repeats``).
- ``field_seconds_int8``, ``stage1_seconds_int8``, ``slide_mm2_per_s_int8``: the same with both stages
  in 8-bit integers (``--int8``; CPU, when the bundle has ``models/int8_calibration.json``), with the number
  of detections beside them (``field_detections_int8``, ``slide_detections_int8``).
- ``naive_ratio``: the same FNR weights run patch by patch (``classify_patches`` on 120x120 patches,
  one per map cell, batches of 64) on ``naive_cells`` cells, extrapolated to the field's
  ``ceil(2084 / s)**2`` cells (``s`` the stride of the map, 4, or 8 with a half-resolution stage 1, whose
  patches are then cut from the reduced field), divided by ``stage1_seconds`` (what the dense, shared
  computation saves). ``stage1_downsample`` says which.
- ``floor_ratio``: ``field_seconds`` divided by (FLOPs of both stages on the field, counted with
  ``torch.utils.flop_counter``) / (matmul throughput measured in the same run, 2048x2048 float32).
- ``region_seconds`` and ``peak_rss_mb``: a 6000x5000 field (a synthetic 1024x1024 field tiled) through
  the tiled path (``detect``'s code), in a fresh process so the peak resident memory is its own
  (``wait4``'s ``ru_maxrss``); once.
- ``slide_mm2_per_s``: tissue mm² per second of ``slide`` on a generated pyramidal slide
  (:func:`mssn_monai.data.synthetic_slide.generate_slide`), reading, tissue detection and stain fit
  included, report excluded; after a warm-up run, the median of ``repeats`` (one run moved it by up
  to 2x on a shared machine). That slide holds six small islands, where the glass margin around each
  and the per-slide steps weigh much; ``slide_large_mm2_per_s`` (and ``_int8``) is the same on a slide
  whose tissue is one region of about 0.8 mm² (a 4096-px field cut to an ellipse), the shape of a
  resection's tissue (``large_slide_px=None`` skips it).
"""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mssn_monai.benchmark.common import run_in_child, tiled_field, timed
from mssn_monai.constants import APERIO_SPACING_UM

__all__ = ["run_benchmark", "format_benchmark", "region_child"]


def region_child(bundle: str | None, device: str, threads: int, width: int, height: int) -> dict[str, Any]:
    """In the child process: the region (6000x5000) once through the bundle's detector."""
    import time

    import torch

    from mssn_monai.checkpoints import load_detector

    torch.set_num_threads(threads)
    fields = load_detector(bundle, device)
    fields.detector.progress = False
    image = tiled_field(width, height)
    start = time.perf_counter()
    out = fields(image, APERIO_SPACING_UM)
    return {"seconds": time.perf_counter() - start, "detections": int(len(out["detections"]))}


def _median(fn: Any, repeats: int, sync: Any) -> tuple[float, Any]:
    times, out = timed(fn, repeats, sync)
    return statistics.median(times), out


def run_benchmark(
    device: str = "cpu",
    repeats: int = 3,
    threads: int | None = None,
    bundle: str | None = None,
    naive_cells: int = 256,
    slide_size: tuple[int, int] = (6144, 4096),
    slide_islands: int = 6,
    region: bool = True,
    field_px: int = 2084,
    region_size: tuple[int, int] = (6000, 5000),
    large_slide_px: int | None = 4096,
) -> dict[str, Any]:
    """Run every measurement (see the module docstring) and return them as a dict.

    ``field_px`` (2084) and ``region_size`` (width, height) are the field's side and the region's size,
    ``large_slide_px`` (4096) the side of the large slide's tissue field (``None``: no large slide);
    smaller only to keep tests quick.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mssn_monai.checkpoints import load_detector
    from mssn_monai.data.synthetic import generate_field
    from mssn_monai.data.synthetic_slide import generate_slide
    from mssn_monai.slide import detect_slide

    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    fields = load_detector(bundle, dev)
    fields.detector.progress = False
    image = generate_field((field_px, field_px), seed=7).image
    spacing = APERIO_SPACING_UM
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "repeats": repeats,
    }
    field_s, out = _median(lambda: fields(image, spacing), repeats, sync)
    results["field_seconds"] = field_s
    results["field_detections"] = int(len(out["detections"]))
    results["field_candidates"] = int(len(out["candidates"]))
    stage1_s, _ = _median(lambda: fields.fused_map(image), repeats, sync)
    results["stage1_seconds"] = stage1_s
    fields.stage1_bf16 = True  # the opt-in: stage 1 in bfloat16, stage 2 float32
    results["field_seconds_bf16"], _ = _median(lambda: fields(image, spacing), repeats, sync)
    fields.stage1_bf16 = False
    int8 = _int8_fields(fields, bundle, dev)  # the other opt-in: both stages in int8 (CPU, the bundle's calibration)
    if int8 is not None:
        results["field_seconds_int8"], out8 = _median(lambda: int8(image, spacing), repeats, sync)
        results["field_detections_int8"] = int(len(out8["detections"]))
        results["stage1_seconds_int8"], _ = _median(lambda: int8.fused_map(image), repeats, sync)

    # naive: one 120x120 patch per map cell, same weights, same stride
    det = fields.detector
    fnr = det.fnr
    results["stage1_downsample"] = det.stage1_downsample
    chw = torch.as_tensor(np.ascontiguousarray(image[:512, :512])).permute(2, 0, 1).float().div(255).to(dev)
    chw = det.stage1_input(chw)[0]  # the field as stage 1 reads it (reduced for a half-resolution stage 1)
    pad = torch.nn.functional.pad(chw[None], (60, 60, 60, 60), mode="reflect")[0]
    side = int(math.sqrt(naive_cells))
    centres = [(4 * j, 4 * i) for i in range(side) for j in range(side)]

    def naive() -> None:
        with torch.inference_mode():
            for k in range(0, len(centres), 64):
                batch = torch.stack([pad[:, y : y + 120, x : x + 120] for x, y in centres[k : k + 64]])
                fnr.classify_patches(batch)

    naive_s, _ = _median(naive, repeats, sync)
    cells = math.ceil(field_px / det.output_stride) ** 2
    results["naive_seconds_extrapolated"] = naive_s / len(centres) * cells
    results["naive_ratio"] = results["naive_seconds_extrapolated"] / stage1_s

    # floor: FLOPs of both stages over measured matmul throughput
    counter = FlopCounterMode(display=False)
    with counter:
        fields(image, spacing)
    flops = counter.get_total_flops()
    a = torch.randn(2048, 2048, device=dev)
    mm_s, _ = _median(lambda: a @ a, max(repeats, 5), sync)
    throughput = 2 * 2048**3 / mm_s
    results["gflops_field"] = flops / 1e9
    results["matmul_gflop_per_s"] = throughput / 1e9
    results["floor_ratio"] = field_s / (flops / throughput)

    if region:
        w, h = region_size
        kwargs = {"bundle": bundle, "device": str(dev), "threads": torch.get_num_threads(), "width": w, "height": h}
        child = run_in_child("mssn_monai.benchmark.headline:region_child", kwargs, threads)
        results["region_seconds"] = child["seconds"]
        results["peak_rss_mb"] = child["peak_rss_mb"]

    slides = [("slide", {"size": slide_size, "n_islands": slide_islands})]
    if large_slide_px:
        side = large_slide_px + 2 * max(large_slide_px // 8, 16)  # the island and its glass margin
        slides.append(("slide_large", {"size": (side, side), "island": large_slide_px, "n_islands": 1}))
    with tempfile.TemporaryDirectory() as tmp:
        for name, layout in slides:
            synthetic = generate_slide(Path(tmp) / f"{name}.tif", seed=5, **layout)
            for suffix, detector in (("", fields), ("_int8", int8)):
                if detector is None:
                    continue
                out = Path(tmp) / f"{name}{suffix}"

                def run_slide(detector: Any = detector, out: Path = out, path: Path = synthetic.path) -> dict[str, Any]:
                    return detect_slide(str(path), out, detector, progress=False)

                seconds, run = _median(run_slide, repeats, sync)
                results[f"{name}_mm2_per_s{suffix}"] = run["tissue_mm2"] / seconds
                results[f"{name}_detections{suffix}"] = int(len(run["detections"]))
                if not suffix:
                    results[f"{name}_seconds"] = seconds
                    results[f"{name}_tissue_mm2"] = run["tissue_mm2"]
                    results[f"{name}_blocks"] = run["blocks"]
    return results


def _int8_fields(fields: Any, bundle: str | None, dev: Any) -> Any:
    """``fields``' detector and normaliser with both stages in int8 (the bundle's calibration), or ``None`` on
    a GPU or without ``models/int8_calibration.json``."""
    from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_int8_calibration
    from mssn_monai.constants import INT8_CALIBRATION_FILE
    from mssn_monai.networks.detector import FieldDetector

    root = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    if dev.type != "cpu" or not (root / "models" / INT8_CALIBRATION_FILE).is_file():
        return None
    return FieldDetector(fields.detector, fields.normalizer, int8=load_int8_calibration(root))


_GOALS = {
    "field_seconds": "<= 1.0",
    "naive_ratio": ">= 200",
    "floor_ratio": "<= 2",
    "peak_rss_mb": "<= 2048",
    "slide_mm2_per_s": ">= 1.0 (CPU), >= 100 (GPU)",
    "slide_large_mm2_per_s": ">= 1.0 (CPU), >= 100 (GPU)",
}


def format_benchmark(results: dict[str, Any]) -> str:
    """A plain-text table of :func:`run_benchmark`'s numbers with the issue's goals."""
    lines = [f"device: {results['device']}  (torch {results['torch']}, medians of {results['repeats']})"]
    lines.append(f"{'measure':<28} {'value':>12}  goal")
    for key, value in results.items():
        if key in ("device", "torch", "repeats"):
            continue
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<28} {text:>12}  {_GOALS.get(key, '')}")
    return "\n".join(lines)

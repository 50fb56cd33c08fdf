"""Cost of dense FNR inference on one field: GFLOPs and parameters per part, and time per field.

``python -m mssn_monai benchmark --suite fnr [--sizes 2084] [--repeats 3] [--threads 2] [--device cpu|cuda]``

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; only
convolutions and matrix products are counted, not BatchNorm / ReLU / sigmoid / padding). The model is
:class:`~mssn_monai.networks.MultiScaleFNR` in its default configuration (random weights: cost does not
depend on them) on a random field. Time is the median of ``repeats`` dense passes after one warm-up pass,
under ``torch.inference_mode`` with the model and the input in ``torch.channels_last``.
"""

from __future__ import annotations

import statistics
from typing import Any

from mssn_monai.benchmark.common import format_table, timed

__all__ = ["run_fnr", "format_fnr"]


def _flops_by_part(model: Any, image: Any) -> dict[str, int]:
    """FLOPs of ``stem`` (both stem layers, all phases), each head and ``total``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(image)
    counts = counter.get_flop_counts()

    def module_total(prefix: str) -> int:
        return sum(counts.get(f"{model.__class__.__name__}.{prefix}", {}).values())

    out = {"stem": module_total("stem1") + module_total("stem2")}
    for name in model.sub_models:
        out[name] = module_total(f"heads.{name}")
    out["total"] = counter.get_total_flops()
    return out


def _params_by_part(model: Any) -> dict[str, int]:
    out = {"stem": sum(p.numel() for m in (model.stem1, model.stem2) for p in m.parameters())}
    for name in model.sub_models:
        out[name] = sum(p.numel() for p in model.heads[name].parameters())
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


def run_fnr(
    sizes: list[tuple[int, int]], repeats: int = 3, threads: int | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """GFLOPs and parameters per part, and seconds per field, for each ``(width, height)`` in ``sizes``."""
    import torch

    from mssn_monai.networks import MultiScaleFNR

    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = MultiScaleFNR().eval().to(dev, memory_format=torch.channels_last)
    params = _params_by_part(model)
    parts, fields = [], []
    for w, h in sizes:
        image = torch.rand(1, 3, h, w, device=dev).contiguous(memory_format=torch.channels_last)
        flops = _flops_by_part(model, image)
        parts += [
            {"size": f"{w}x{h}", "part": part, "gflops": flops[part] / 1e9, "params": params[part]} for part in flops
        ]

        def once(image: torch.Tensor = image) -> None:
            with torch.inference_mode():
                model(image)

        times, _ = timed(once, repeats, sync)
        median = statistics.median(times)
        fields.append(
            {
                "size": f"{w}x{h}",
                "seconds": median,
                "min_seconds": min(times),
                "max_seconds": max(times),
                "gflop_per_s": flops["total"] / 1e9 / median,
            }
        )
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "suite": "fnr",
        "device": device_name,
        "torch": torch.__version__,
        "repeats": repeats,
        "parts": parts,
        "fields": fields,
    }


def format_fnr(results: dict[str, Any]) -> str:
    """The parts table and the time-per-field table of :func:`run_fnr`."""
    head = f"MultiScaleFNR default config, {results['device']}, medians of {results['repeats']}"
    parts = format_table(
        results["parts"],
        [("size", "field", ""), ("part", "part", ""), ("gflops", "GFLOPs", ".2f"), ("params", "params", ",d")],
    )
    fields = format_table(
        results["fields"],
        [
            ("size", "field", ""),
            ("seconds", "s/field", ".3f"),
            ("min_seconds", "min", ".3f"),
            ("max_seconds", "max", ".3f"),
            ("gflop_per_s", "GFLOP/s", ".0f"),
        ],
    )
    return "\n".join([head, parts, "", fields])

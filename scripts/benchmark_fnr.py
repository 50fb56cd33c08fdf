"""Cost of dense FNR inference on one field: GFLOPs and parameters per part, and CPU time per field.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; only
convolutions and matrix products are counted, not BatchNorm / ReLU / sigmoid / padding). Time is the
median of ``--runs`` dense passes after ``--warmup`` passes, under ``torch.inference_mode`` with the
model and the input in ``torch.channels_last`` and ``torch.set_num_threads(--threads)``.

Typical usage:

.. code-block:: bash

    .venv/bin/python scripts/benchmark_fnr.py               # 2084 x 2084 field, 2 threads
    .venv/bin/python scripts/benchmark_fnr.py --size 1024 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mssn_monai.networks import MultiScaleFNR


def _flops_by_part(model: MultiScaleFNR, image: torch.Tensor) -> dict[str, int]:
    """GFLOP-able counts for ``stem`` (both stem layers, all phases), each head and ``total``."""
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


def _params_by_part(model: MultiScaleFNR) -> dict[str, int]:
    out = {"stem": sum(p.numel() for m in (model.stem1, model.stem2) for p in m.parameters())}
    for name in model.sub_models:
        out[name] = sum(p.numel() for p in model.heads[name].parameters())
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


def _time_per_field(model: MultiScaleFNR, image: torch.Tensor, warmup: int, runs: int) -> list[float]:
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(image)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2084, help="field height = width in pixels (default 2084)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="timed passes; the median is reported (default 3)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = MultiScaleFNR().eval().to(memory_format=torch.channels_last)
    image = torch.rand(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)

    flops = _flops_by_part(model, image)
    params = _params_by_part(model)
    times = _time_per_field(model, image, args.warmup, args.runs)
    median = statistics.median(times)

    print(f"MultiScaleFNR default config, input 1x3x{args.size}x{args.size}, {torch.get_num_threads()} threads")
    print(f"{'part':<12} {'GFLOPs':>8} {'params':>9}")
    for part in flops:
        print(f"{part:<12} {flops[part] / 1e9:>8.2f} {params[part]:>9,d}")
    print(
        f"time/field: median {median:.3f} s over {args.runs} runs "
        f"(min {min(times):.3f}, max {max(times):.3f}); {flops['total'] / 1e9 / median:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()

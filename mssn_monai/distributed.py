"""Helpers for multi-GPU training (``bundle/configs/multi_gpu_train.json``, PyTorch DistributedDataParallel).

Every function here works without a process group too (one process: rank 0 of 1), so library code
such as :class:`mssn_monai.handlers.HardNegativeMiner` can call them unconditionally.

Typical usage (one node, two processes; ``gloo`` on CPU, ``nccl`` on GPUs)::

    torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']" \\
        --bundle_root bundle --dataset_dir DATASET_DIR
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "MethodAsForward",
    "all_gather_objects",
    "broadcast_module_state",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "log_rank_summary",
    "quiet_other_ranks",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a default process group is initialised (e.g. under ``torchrun`` with ``multi_gpu_train.json``)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


class MethodAsForward(nn.Module):
    """Expose one method of ``module`` as ``forward``, so that ``DistributedDataParallel`` can wrap it.

    DDP synchronises gradients only for what goes through its own ``forward``, which calls the wrapped
    module's ``forward``. Stage 1 trains through ``MultiScaleFNR.classify_patches`` (its ``forward``
    is the dense map), so the trainer gets ``DDP(MethodAsForward(fnr, "classify_patches"))`` and a
    ``SimpleInferer``. The wrapper has no parameters of its own; save ``module`` (not the wrapper)
    to keep the plain state dict.

    Args:
        module: the network.
        method: name of the method of ``module`` that ``forward`` calls.

    Raises:
        TypeError: ``module`` has no callable ``method``.
    """

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        if not callable(getattr(module, method, None)):
            raise TypeError(f"{type(module).__name__} has no method {method!r}")
        self.module = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, self.method)(*args, **kwargs)


def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers into ``module`` on every rank (a no-op in one process).

    DDP keeps parameters identical but not buffers (batch-norm statistics are updated from each rank's
    own batch), so anything every rank computes with the network in eval mode (hard-negative mining)
    must first take one rank's buffers. Every rank must call it, with tensors of the same shapes.
    """
    if get_world_size() < 2:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process. Every rank must call it."""
    if get_world_size() < 2:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def quiet_other_ranks(level: int = logging.WARNING) -> None:
    """On ranks > 0, raise the root logger to ``level`` (rank 0 alone reports); this module's lines stay at INFO."""
    if get_rank() > 0:
        logging.getLogger().setLevel(level)
        logger.setLevel(logging.INFO)  # the per-rank summary of log_rank_summary stays visible


def log_rank_summary(
    engines: Mapping[str, Any], networks: Mapping[str, nn.Module], datasets: Mapping[str, Any] | None = None
) -> str:
    """Log (and return) one line per rank: what each rank ran, and fingerprints of what must agree across ranks.

    DDP keeps parameters bit-identical across ranks, so equal parameter checksums on every rank show that
    the gradients were synchronised; equal hard-negative counts show that mining left every rank's
    sampler in the same state; the iteration counts show that every rank trained.

    Args:
        engines: name -> Ignite engine (``engine.state.iteration`` is read).
        networks: name -> network (float64 sum of all its parameters).
        datasets: name -> ``PatchSampleDataset`` (number of hard negatives it holds).
    """
    parts = [f"{name} {engine.state.iteration} iterations" for name, engine in engines.items()]
    for name, network in networks.items():
        with torch.no_grad():
            total = sum(float(p.detach().double().sum()) for p in network.parameters())
        parts.append(f"{name} parameter checksum {total:.12g}")
    for name, dataset in (datasets or {}).items():
        parts.append(f"{name} hard negatives {sum(len(h) for h in dataset.hard_negatives.values())}")
    line = f"rank {get_rank()} of {get_world_size()}: " + ", ".join(parts)
    logger.info(line)
    return line

"""BatchNorm statistics alignment: move a trained network to a new look without a single label.

A network's BatchNorm layers hold the per-channel mean and variance of the activations they saw in
training. A new scanner or stain shifts those activations, and every later layer then reads inputs off
the scale it learnt. AdaBN (Li et al., "Revisiting batch normalization for practical domain
adaptation", 2016) replaces the statistics with the new domain's. Here the training statistics were
collected on class-balanced training patches, not on whole fields, so the new look's statistics are
not substituted but *shifted in*: both looks are measured the same way (whole fields, each layer
normalised by its own batch as in AdaBN) and the difference moves the trained statistics::

    running_mean += mean_target - mean_source
    running_var  *= (var_target + eps) / (var_source + eps)

so a field of the source look measured this way leaves the network unchanged, whatever sampling the
training statistics came from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BatchNormStatistics", "batch_norm_layers", "batch_norm_statistics", "shift_batch_norm"]

BatchNormStatistics = list[tuple[torch.Tensor, torch.Tensor]]
"""Per BatchNorm layer of a module (in ``modules()`` order): ``(mean (C,), var (C,))``."""


def batch_norm_layers(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` that track running statistics, in ``modules()`` order."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def batch_norm_statistics(
    module: nn.Module, inputs: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None = None
) -> BatchNormStatistics:
    """The activation statistics every BatchNorm layer of ``module`` sees over ``inputs`` (AdaBN's pass).

    Runs a copy of ``module`` in training mode without gradients, each layer normalised by the
    statistics of its own batch, and averages each layer's batch mean and (unbiased) variance over
    the batches with equal weight. ``module`` itself is not changed.

    Args:
        module: a network with BatchNorm layers.
        inputs: the batches, e.g. ``(1, 3, H, W)`` float fields.
        forward: ``forward(copy, batch)`` runs one batch (default: ``copy(batch)``).

    Returns:
        :data:`BatchNormStatistics`, one ``(mean, var)`` per layer of :func:`batch_norm_layers`.

    Raises:
        ValueError: ``module`` has no BatchNorm layer, or ``inputs`` is empty.
    """
    probe = copy.deepcopy(module).train()
    layers = batch_norm_layers(probe)
    if not layers:
        raise ValueError(f"{type(module).__name__} has no BatchNorm layer to measure.")
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: every batch weighs the same
    run = forward if forward is not None else (lambda m, x: m(x))
    batches = 0
    with torch.no_grad():
        for batch in inputs:
            run(probe, batch)
            batches += 1
    if batches == 0:
        raise ValueError("no inputs to measure BatchNorm statistics on.")
    return [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]  # type: ignore[union-attr]


def shift_batch_norm(
    module: nn.Module,
    source: Sequence[tuple[torch.Tensor, torch.Tensor]],
    target: Sequence[tuple[torch.Tensor, torch.Tensor]],
    eps: float = 1e-5,
) -> None:
    """Move ``module``'s running statistics by the difference between ``target`` and ``source``, in place.

    Args:
        module: the network whose BatchNorm layers are shifted.
        source: :func:`batch_norm_statistics` of ``module`` on fields of the look it was trained on.
        target: the same on fields of the new look, measured the same way.
        eps: added to both variances before their ratio is taken.

    Raises:
        ValueError: when the statistics do not match the module's BatchNorm layers.
    """
    layers = batch_norm_layers(module)
    if not (len(layers) == len(source) == len(target)):
        raise ValueError(
            f"statistics for {len(source)} and {len(target)} layers, but the module has {len(layers)} BatchNorm layers."
        )
    with torch.no_grad():
        for layer, (mean_s, var_s), (mean_t, var_t) in zip(layers, source, target, strict=True):
            if mean_s.shape != layer.running_mean.shape or mean_t.shape != layer.running_mean.shape:  # type: ignore[union-attr]
                raise ValueError(
                    f"statistics of {tuple(mean_s.shape)} / {tuple(mean_t.shape)} channels for a layer of "
                    f"{tuple(layer.running_mean.shape)}."  # type: ignore[union-attr]
                )
            layer.running_mean += (mean_t - mean_s).to(layer.running_mean)  # type: ignore[operator]
            layer.running_var *= ((var_t + eps) / (var_s + eps)).to(layer.running_var)  # type: ignore[operator]

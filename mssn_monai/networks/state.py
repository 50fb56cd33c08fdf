"""Loading weights saved before a buffer existed: the buffer keeps the value the module was built with.

A setting saved with the weights (a buffer: stage 1's ``input_downsample``, stage 2's
``input_standardization``) makes a checkpoint run as it was trained, whatever the config says. A checkpoint
written before that buffer existed lacks the key; :func:`keep_constructed_buffers` fills it from the module
itself, so such weights load (strictly) and keep the constructor's value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["keep_constructed_buffers"]


def keep_constructed_buffers(*names: str) -> Callable[..., None]:
    """A ``register_load_state_dict_pre_hook`` hook: each buffer of ``names`` missing from the state dict
    is added with the module's current value.

    Example:
        >>> net.register_load_state_dict_pre_hook(keep_constructed_buffers("input_downsample"))  # doctest: +SKIP
    """

    def hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in names:
            if prefix + name not in state_dict:
                state_dict[prefix + name] = getattr(module, name).clone()

    return hook

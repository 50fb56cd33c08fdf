"""Stage 1 in 8-bit integers on CPU: the same :class:`~mssn_monai.networks.fnr.MultiScaleFNR`, its
convolutions quantized (PyTorch's eager-mode static quantization, ``torch.ao.quantization``).

Every convolution + ReLU of the stem and of the branches runs as an int8 ``ConvReLU2d`` (weights int8
per output channel, symmetric; activations uint8 per tensor), the image is quantized once on entry
and each branch's features are dequantized before its 1x1 classifier, which stays float32. The
module returned by :func:`quantize_fnr` is a :class:`MultiScaleFNR` with those modules swapped in, so
its ``forward_region`` (padding, border rule, stem phases, map alignment) is the float network's own
code: only the arithmetic changes.

The activation scales come from a *calibration*: :func:`calibrate_fnr` runs the float network over
some fields and records, per quantized activation, the ``(scale, zero_point)`` that a
``HistogramObserver`` chooses. They are stored with a bundle (``models/stage1_int8.json``, written by
``python -m mssn_monai quantize``), so every run of that bundle quantizes the same way; the weights'
scales follow from the weights.

Quantized kernels exist on CPU only (x86: fbgemm / oneDNN, fastest with AVX512-VNNI or AVX-VNNI;
ARM: qnnpack). The engine is recorded with the calibration and selected again when the network is
quantized (``torch.backends.quantized.engine`` is process-wide).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Final

import torch
from torch import nn

from mssn_monai.networks.fnr import MultiScaleFNR

__all__ = ["calibrate_fnr", "quantize_fnr"]

_FORMAT: Final[int] = 1


def _engine(requested: str | None = None) -> str:
    """The quantized engine to use: ``requested`` when given (it must be supported), else ``x86``
    where PyTorch has it, else the first supported one."""
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if requested is not None:
        if requested not in supported:
            raise ValueError(
                f"this PyTorch build has no {requested!r} quantized engine (it has {supported}); "
                "re-run `python -m mssn_monai quantize` on this machine."
            )
        return requested
    for preferred in ("x86", "fbgemm", "onednn", "qnnpack"):
        if preferred in supported:
            return preferred
    raise ValueError("this PyTorch build has no quantized CPU engine; run stage 1 in float32.")


def _fold(layer: nn.Module) -> nn.Module:
    """``_ConvNormAct`` (eval) -> ``ConvReLU2d`` with the BatchNorm folded into the convolution's weight and bias."""
    import torch.ao.nn.intrinsic as nni

    conv, norm = layer.conv, layer.norm
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, bias=True)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_(norm.bias - norm.running_mean * scale)
    return nni.ConvReLU2d(folded, nn.ReLU())


def _prepared(fnr: MultiScaleFNR, engine: str, observer: Any = None) -> MultiScaleFNR:
    """A copy of ``fnr`` (eval) with the quantizable modules swapped in and observers attached."""
    import torch.ao.quantization as tq

    net = copy.deepcopy(fnr).cpu().eval()
    net.stem1 = nn.Sequential(tq.QuantStub(), _fold(fnr.stem1))
    net.stem2 = _fold(fnr.stem2)
    for head in net.heads.values():
        for i, branch in enumerate(head.branches):
            head.branches[i] = nn.Sequential(*[_fold(layer) for layer in branch], tq.DeQuantStub())
    qconfig = tq.get_default_qconfig(engine)
    if observer is not None:
        qconfig = tq.QConfig(activation=observer, weight=qconfig.weight)
    for module in (net.stem1, net.stem2, *[b for h in net.heads.values() for b in h.branches]):
        module.qconfig = qconfig
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return tq.prepare(net, inplace=False)


def _activation_observers(net: nn.Module) -> dict[str, Any]:
    return {
        name: module.activation_post_process
        for name, module in net.named_modules()
        if hasattr(module, "activation_post_process") and hasattr(module.activation_post_process, "calculate_qparams")
    }


@torch.no_grad()
def calibrate_fnr(fnr: MultiScaleFNR, images: Iterable[torch.Tensor], engine: str | None = None) -> dict[str, Any]:
    """Activation scales of stage 1 in int8, chosen on ``images`` (the input stage 1 sees in use).

    Args:
        fnr: the float stage-1 network (its weights trained; not modified).
        images: ``(3, H, W)`` or ``(1, 3, H, W)`` float RGB in ``[0, 1]``, stain-normalised as the
            detector normalises them (:meth:`~mssn_monai.networks.detector.FieldDetector.prepare`); the
            whole of each image is run (mirrored borders), so keep them field-sized.
        engine: quantized engine (default ``x86`` where available).

    Returns:
        ``{"format", "engine", "images", "activations": {module: [scale, zero_point]}}``, JSON-ready.

    Raises:
        ValueError: when ``images`` is empty.
    """
    engine = _engine(engine)
    torch.backends.quantized.engine = engine
    net = _prepared(fnr, engine)
    n = 0
    for image in images:
        x = image if image.ndim == 4 else image.unsqueeze(0)
        net(x.float().cpu())
        n += 1
    if n == 0:
        raise ValueError("calibrate_fnr needs at least one image.")
    activations = {}
    for name, observer in _activation_observers(net).items():
        scale, zero_point = observer.calculate_qparams()
        activations[name] = [float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])]
    return {"format": _FORMAT, "engine": engine, "images": n, "activations": activations}


def quantize_fnr(fnr: MultiScaleFNR, calibration: Mapping[str, Any]) -> MultiScaleFNR:
    """``fnr`` with its convolutions in int8 on CPU, at the activation scales of ``calibration``.

    Args:
        fnr: the float stage-1 network (not modified).
        calibration: what :func:`calibrate_fnr` returned for these weights (a bundle's
            ``models/stage1_int8.json``, :func:`mssn_monai.checkpoints.load_int8_calibration`).

    Returns:
        a :class:`MultiScaleFNR` (eval, CPU) whose ``forward`` / ``forward_region`` give the same maps
        as ``fnr`` up to the int8 rounding (about 1e-3 in probability on average).

    Raises:
        ValueError: a calibration of another format or another network (its modules do not match).
        ValueError: also when the calibration's engine is missing from this PyTorch build.
    """
    import torch.ao.quantization as tq
    from torch.ao.quantization.observer import FixedQParamsObserver

    if calibration.get("format") != _FORMAT or not isinstance(calibration.get("activations"), Mapping):
        raise ValueError(f"not a stage-1 int8 calibration of format {_FORMAT}: keys {sorted(calibration)}")
    engine = _engine(str(calibration.get("engine")))
    torch.backends.quantized.engine = engine
    net = _prepared(fnr, engine)
    observers = _activation_observers(net)
    stored = calibration["activations"]
    if set(observers) != set(stored):
        missing, unknown = sorted(set(observers) - set(stored)), sorted(set(stored) - set(observers))
        raise ValueError(
            f"the int8 calibration does not match this stage-1 network (missing {missing[:3]}, unknown {unknown[:3]}); "
            "re-run `python -m mssn_monai quantize` for these weights."
        )
    for name, observer in observers.items():
        scale, zero_point = stored[name]
        fixed = FixedQParamsObserver(
            float(scale), int(zero_point), quant_min=observer.quant_min, quant_max=observer.quant_max
        )
        owner = net.get_submodule(name)
        owner.activation_post_process = fixed
    with warnings.catch_warnings():  # torch.ao's deprecation notices, once per layer: the API is pinned
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return tq.convert(net, inplace=False).eval()

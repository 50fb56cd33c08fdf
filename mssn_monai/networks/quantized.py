"""Both stages in 8-bit integers on CPU: the same :class:`~mssn_monai.networks.fnr.MultiScaleFNR` and
:class:`~mssn_monai.networks.fpr.SiameseEmbedding`, their convolutions quantized (PyTorch's eager-mode
static quantization, ``torch.ao.quantization``).

Stage 1: every convolution + ReLU of the stem and of the branches runs as an int8 ``ConvReLU2d``
(weights int8 per output channel, symmetric; activations uint8 per tensor); the image is quantized
once on entry and each branch's features are dequantized before its 1x1 classifier, which stays
float32. Stage 2: the convolution + BatchNorm + ReLU stages of the embedding run as int8
``ConvReLU2d``; the patches are quantized on entry and the feature map dequantized before the mean,
the projection and the normalisation, which stay float32, as do the reference bank and the vote.

:func:`quantize_fnr` and :func:`quantize_fpr` return a :class:`MultiScaleFNR` and a
:class:`SiameseEmbedding` with those modules swapped in, so their ``forward_region`` (padding, border
rule, stem phases, map alignment) and ``forward`` are the float networks' own code: only the arithmetic
changes.

The activation scales come from a *calibration*: :func:`calibrate_fnr` and :func:`calibrate_fpr` run
the float networks over fields and vote patches and record, per quantized activation, the
``(scale, zero_point)`` that a ``HistogramObserver`` chooses. They are stored with a bundle
(``models/int8_calibration.json``, written by ``python -m mssn_monai quantize``), so every run of that
bundle quantizes the same way; the weights' scales follow from the weights.

Quantized kernels exist on CPU only (x86: fbgemm / oneDNN, fastest with AVX512-VNNI or AVX-VNNI;
ARM: qnnpack). The engine is recorded with the calibration and selected again when a network is
quantized (``torch.backends.quantized.engine`` is process-wide). PyTorch has announced that this API
moves to ``torchao``; the pinned ``torch==2.13.0`` has it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from mssn_monai.networks.fnr import MultiScaleFNR
from mssn_monai.networks.fpr import SiameseEmbedding

__all__ = ["calibrate_fnr", "calibrate_fpr", "quantize_fnr", "quantize_fpr"]


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
    raise ValueError("this PyTorch build has no quantized CPU engine; run without --int8.")


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


def _fold_sequence(layers: nn.Sequential) -> list[nn.Module]:
    """``Conv2d, BatchNorm2d, ReLU, ...`` (eval) -> one ``ConvReLU2d`` per triple, the BatchNorm folded in."""
    from torch.ao.quantization.fuse_modules import fuse_conv_bn_relu

    modules = list(layers)
    return [fuse_conv_bn_relu(False, *modules[i : i + 3]) for i in range(0, len(modules), 3)]


def _prepare(net: nn.Module, modules: Iterable[nn.Module], engine: str) -> nn.Module:
    """Observers on ``modules`` of ``net`` (the engine's default qconfig), the rest left float."""
    import torch.ao.quantization as tq

    qconfig = tq.get_default_qconfig(engine)
    for module in modules:
        module.qconfig = qconfig
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return tq.prepare(net, inplace=False)


def _prepared_fnr(fnr: MultiScaleFNR, engine: str) -> nn.Module:
    """A copy of ``fnr`` (eval, CPU) with the quantizable modules swapped in and observers attached."""
    import torch.ao.quantization as tq

    net = copy.deepcopy(fnr).cpu().eval()
    net.stem1 = nn.Sequential(tq.QuantStub(), _fold(fnr.stem1))
    net.stem2 = _fold(fnr.stem2)
    for head in net.heads.values():
        for i, branch in enumerate(head.branches):
            head.branches[i] = nn.Sequential(*[_fold(layer) for layer in branch], tq.DeQuantStub())
    return _prepare(net, (net.stem1, net.stem2, *[b for h in net.heads.values() for b in h.branches]), engine)


def _prepared_fpr(fpr: SiameseEmbedding, engine: str) -> nn.Module:
    """A copy of ``fpr`` (eval, CPU) whose ``features`` are quantizable, with observers attached."""
    import torch.ao.quantization as tq

    net = copy.deepcopy(fpr).cpu().eval()
    layers = [m for stage in net.features for m in _fold_sequence(stage)]
    net.features = nn.Sequential(tq.QuantStub(), *layers, tq.DeQuantStub())
    return _prepare(net, (net.features,), engine)


def _activation_observers(net: nn.Module) -> dict[str, Any]:
    return {
        name: module.activation_post_process
        for name, module in net.named_modules()
        if hasattr(module, "activation_post_process") and hasattr(module.activation_post_process, "calculate_qparams")
    }


def _scales(net: nn.Module) -> dict[str, list[float | int]]:
    out: dict[str, list[float | int]] = {}
    for name, observer in _activation_observers(net).items():
        scale, zero_point = observer.calculate_qparams()
        out[name] = [float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])]
    return out


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
        ``{"engine", "images", "activations": {module: [scale, zero_point]}}``, JSON-ready.

    Raises:
        ValueError: when ``images`` is empty.
    """
    engine = _engine(engine)
    torch.backends.quantized.engine = engine
    net = _prepared_fnr(fnr, engine)
    n = 0
    for image in images:
        net((image if image.ndim == 4 else image.unsqueeze(0)).float().cpu())
        n += 1
    if n == 0:
        raise ValueError("calibrate_fnr needs at least one image.")
    return {"engine": engine, "images": n, "activations": _scales(net)}


@torch.no_grad()
def calibrate_fpr(fpr: SiameseEmbedding, patches: Iterable[torch.Tensor], engine: str | None = None) -> dict[str, Any]:
    """Activation scales of stage 2's embedding in int8, chosen on ``patches``.

    Args:
        fpr: the float stage-2 network (not modified).
        patches: batches ``(B, 3, P, P)`` of vote patches as :meth:`MSSNDetector.vote` cuts them (float RGB
            in ``[0, 1]``, stain-normalised, around stage-1 candidates).
        engine: quantized engine (default ``x86`` where available).

    Returns:
        ``{"engine", "patches", "activations": {module: [scale, zero_point]}}``, JSON-ready.

    Raises:
        ValueError: when there is no patch.
    """
    engine = _engine(engine)
    torch.backends.quantized.engine = engine
    net = _prepared_fpr(fpr, engine)
    n = 0
    for batch in patches:
        if batch.shape[0]:
            net(batch.float().cpu())
            n += int(batch.shape[0])
    if n == 0:
        raise ValueError("calibrate_fpr needs at least one patch.")
    return {"engine": engine, "patches": n, "activations": _scales(net)}


def _convert(prepare: Callable[[str], nn.Module], calibration: Mapping[str, Any], what: str) -> nn.Module:
    """The network ``prepare(engine)`` builds, converted to int8 at the stored scales of ``calibration``
    (with its engine selected)."""
    import torch.ao.quantization as tq
    from torch.ao.quantization.observer import FixedQParamsObserver

    if not isinstance(calibration, Mapping) or not isinstance(calibration.get("activations"), Mapping):
        keys = sorted(calibration) if isinstance(calibration, Mapping) else type(calibration).__name__
        raise ValueError(f"not an int8 calibration of {what}: {keys}")
    engine = _engine(str(calibration.get("engine")))
    torch.backends.quantized.engine = engine
    net = prepare(engine)
    observers = _activation_observers(net)
    stored = calibration["activations"]
    if set(observers) != set(stored):
        missing, unknown = sorted(set(observers) - set(stored)), sorted(set(stored) - set(observers))
        raise ValueError(
            f"the int8 calibration does not match this {what} (missing {missing[:3]}, unknown {unknown[:3]}); "
            "re-run `python -m mssn_monai quantize` for these weights."
        )
    for name, observer in observers.items():
        scale, zero_point = stored[name]
        net.get_submodule(name).activation_post_process = FixedQParamsObserver(
            float(scale), int(zero_point), quant_min=observer.quant_min, quant_max=observer.quant_max
        )
    with warnings.catch_warnings():  # torch.ao's deprecation notices, once per layer: the API is pinned
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return tq.convert(net, inplace=False).eval()


def quantize_fnr(fnr: MultiScaleFNR, calibration: Mapping[str, Any]) -> MultiScaleFNR:
    """``fnr`` with its convolutions in int8 on CPU, at the activation scales of ``calibration``.

    Args:
        fnr: the float stage-1 network (not modified).
        calibration: what :func:`calibrate_fnr` returned for these weights (the ``"stage1"`` entry of a
            bundle's ``models/int8_calibration.json``).

    Returns:
        a :class:`MultiScaleFNR` (eval, CPU) whose ``forward`` / ``forward_region`` give the same maps
        as ``fnr`` up to the int8 rounding (about 1e-3 in probability on average).

    Raises:
        ValueError: a calibration of another network (its modules do not match), or of an engine this
            PyTorch build lacks.
    """
    return _convert(lambda engine: _prepared_fnr(fnr, engine), calibration, "stage-1 network")


def quantize_fpr(fpr: SiameseEmbedding, calibration: Mapping[str, Any]) -> SiameseEmbedding:
    """``fpr`` with its embedding's convolutions in int8 on CPU, at the activation scales of ``calibration``.

    Args:
        fpr: the float stage-2 network (not modified).
        calibration: what :func:`calibrate_fpr` returned for these weights (the ``"stage2"`` entry of a
            bundle's ``models/int8_calibration.json``).

    Returns:
        a :class:`SiameseEmbedding` (eval, CPU) with the same reference bank, calibration and operating
        threshold, whose embeddings equal ``fpr``'s up to the int8 rounding.

    Raises:
        ValueError: as :func:`quantize_fnr`.
    """
    return _convert(lambda engine: _prepared_fpr(fpr, engine), calibration, "stage-2 network")

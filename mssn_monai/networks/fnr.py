"""Stage 1 of MSSN (false-negative reduction, FNR): four patch classifiers that also run densely.

Ma et al. (ICPR 2018, Sec. III-A) classify the centre of a patch as mitosis / not mitosis with four
sub-models that see different context: a 72x72 square, a 96x96 square, a *cross-bar* (a vertical
120x60 and a horizontal 60x120 branch, H x W, whose features are fused before the classifier) and a
120x120 view built from dilated convolutions. A location is a candidate when any sub-model fires.

Every sub-model here is a patch classifier *and* a fully convolutional network, with one set of
weights. Inside the nets every convolution is unpadded ("valid") and the last convolution of each
branch spans exactly what is left of the patch, so a sub-model's receptive field through the shared
stem and its head **is** its patch (72x72, 96x96, 120x60 + 60x120, 120x120), with no global pooling
and no fully connected layer. BatchNorm is folded into the preceding convolution in eval mode (a
per-channel affine map), so it does not break the equivalence either.

Input
    ``image``: RGB float in :data:`INPUT_RANGE` = ``[0, 1]`` (``uint8 / 255``), shape ``(B, 3, H, W)``;
    this is the one place the input range is defined, and training and inference must both follow it
    (the BatchNorm running statistics learn it). The network adds no normalisation of its own and
    needs none: its first convolution is unpadded and followed by BatchNorm, which absorbs a global
    offset of the input exactly (so subtracting 0.5 inside would change nothing). Stain
    normalisation, if any, happens before.

Alignment (dense maps)
    Output stride is :data:`OUTPUT_STRIDE` = 4 px. Map cell ``[i, j]`` is the classification of the
    patch whose centre pixel is ``(x, y) = (4 j, 4 i)`` in input pixels, where the centre pixel of a
    patch of (even) size ``P`` starting at pixel ``s`` is ``s + P // 2``: the patch covers
    ``[4 j - P/2, 4 j + P/2 - 1]`` (and the same for rows, per axis for the cross-bar branches).
    Every map, the ``"fused"`` one included, has shape ``(B, 1, ceil(H / 4), ceil(W / 4))``, so all
    sub-models align cell for cell, and ``fused`` is their per-cell maximum probability.

Border rule
    Pixels outside the image are the image mirrored *with* its edge pixel repeated, i.e.
    ``numpy.pad(mode="symmetric")`` (``... c b a | a b c ... x y z | z y x ...``), applied periodically
    so any pad works, even around a 1x1 image. The rule lives in :mod:`mssn_monai.ops.patches`, which
    cuts the training patches and the stage-2 vote patches, so training and inference see the same
    borders. The dense path pads above and left by half the largest patch extent on that axis (60 px
    by default) and below and right by just enough for ``ceil(H / 4)`` x ``ceil(W / 4)`` outputs.

Patch path
    :meth:`MultiScaleFNR.classify_patches` takes ``(B, 3, 120, 120)`` samples (any even size that
    holds the largest patch) whose centre pixel is the location to classify; each sub-model sees its
    own centre crop. It runs the same code as the dense path on a "padded image" that yields exactly
    one output cell, so ``sigmoid(classify_patches(extract_patch(image, 4j, 4i, 120)))`` equals
    ``forward(image)[name][..., i, j]`` up to float rounding.

Architecture and cost
    A shared stem (conv 4x4 stride 2, conv 3x3 stride 2; receptive field 8 px, stride 4) feeds every
    head. The stem's stride-4 grid is evaluated at pixel phase 0 for the square and dilated
    sub-models, and at phase 2 px along the 60-px axis of each cross-bar branch, because that patch's
    half-width, 30 px, is not a multiple of 4 (the same stem weights, three shifted views; only the
    second stem layer is repeated). Each branch is two or three 3x3 convolutions at stride 4, dilated
    instead of pooled so the output stride stays 4, then a *feature* convolution (3 taps per axis,
    2 on the cross-bar's short axis) whose dilation spans the rest of the patch, then a 1x1
    classifier to one logit. The defaults cost about 72 GFLOP (convolutions) per 2084x2084 field,
    inside the design budget of 75 GFLOP and 1.5 s on two CPU cores; ``python -m mssn_monai
    benchmark --suite fnr`` measures both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import StrEnum, look_up_option
from torch import nn

from mssn_monai.networks.state import keep_constructed_buffers
from mssn_monai.ops.intensity import to_float01
from mssn_monai.ops.patches import as_pair, mirror_take

__all__ = [
    "FNRSubModel",
    "FUSED_KEY",
    "OUTPUT_STRIDE",
    "INPUT_RANGE",
    "conv_receptive_field",
    "MultiScaleFNR",
]

OUTPUT_STRIDE: Final[int] = 4
"""Pixels between neighbouring cells of every dense map (and of the stem's feature grid)."""

INPUT_RANGE: Final[tuple[float, float]] = (0.0, 1.0)
"""Expected range of the RGB input (``uint8 / 255``); see "Input" in the module docstring."""

FUSED_KEY: Final[str] = "fused"
"""Key of the per-cell maximum over the sub-models in :meth:`MultiScaleFNR.forward`."""


class FNRSubModel(StrEnum):
    """Names of the four FNR sub-models (keys of the outputs of :class:`MultiScaleFNR`)."""

    SQUARE72 = "square72"
    SQUARE96 = "square96"
    CROSSBAR = "crossbar"
    DILATED120 = "dilated120"


# Per sub-model defaults. ``patch_size`` is (H, W) in pixels; for the cross-bar it is the vertical
# branch and the horizontal branch is its transpose (likewise ``dilations`` and ``final_kernel``).
# ``dilations`` lists the 3x3 body convolutions (one per entry, (dh, dw) or one int), all at stride 4;
# the feature convolution then has ``final_kernel`` taps per axis and the dilation that makes the
# receptive field equal ``patch_size`` (see MultiScaleFNR for the arithmetic).
_DEFAULT_PATCH_SIZES: Final[dict[str, list[int]]] = {
    FNRSubModel.SQUARE72: [72, 72],
    FNRSubModel.SQUARE96: [96, 96],
    FNRSubModel.CROSSBAR: [120, 60],
    FNRSubModel.DILATED120: [120, 120],
}
_DEFAULT_DILATIONS: Final[dict[str, list[Any]]] = {
    FNRSubModel.SQUARE72: [1, 2],
    FNRSubModel.SQUARE96: [1, 3],
    FNRSubModel.CROSSBAR: [[1, 1], [2, 1], [4, 2]],
    FNRSubModel.DILATED120: [1, 2, 4],
}
_DEFAULT_FINAL_KERNELS: Final[dict[str, list[int]]] = {
    FNRSubModel.SQUARE72: [3, 3],
    FNRSubModel.SQUARE96: [3, 3],
    FNRSubModel.CROSSBAR: [3, 2],
    FNRSubModel.DILATED120: [3, 3],
}
_DEFAULT_HEAD_CHANNELS: Final[dict[str, int]] = {
    FNRSubModel.SQUARE72: 32,
    FNRSubModel.SQUARE96: 32,
    FNRSubModel.CROSSBAR: 20,
    FNRSubModel.DILATED120: 32,
}

# Stem layers: (kernel, stride). Receptive field 4 + (3 - 1) * 2 = 8 px at stride 4.
_STEM_LAYERS: Final[tuple[tuple[int, int], ...]] = ((4, 2), (3, 2))
_STEM_RF: Final[int] = 8


def conv_receptive_field(layers: Sequence[nn.Module]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Receptive field and stride, in input pixels, of a chain of unpadded convolutions / poolings.

    Args:
        layers: modules applied in order; ``nn.Conv2d`` (and ``nn.MaxPool2d`` / ``nn.AvgPool2d``) count,
            other modules are ignored.

    Returns:
        ``((rf_h, rf_w), (stride_h, stride_w))``.

    Raises:
        ValueError: when a counted layer has padding (the FNR networks use none).
    """
    rf, jump = [1, 1], [1, 1]
    for layer in layers:
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        k, s = as_pair(layer.kernel_size, "kernel_size"), as_pair(layer.stride, "stride")
        d = as_pair(getattr(layer, "dilation", 1), "dilation")
        if as_pair(layer.padding, "padding") != (0, 0):
            raise ValueError(f"{layer} has padding {layer.padding}; the FNR networks need unpadded layers.")
        for a in range(2):
            rf[a] += (k[a] - 1) * d[a] * jump[a]
            jump[a] *= s[a]
    return (rf[0], rf[1]), (jump[0], jump[1])


def _support_1d(layers: Sequence[tuple[int, int, int]]) -> set[int]:
    """Input offsets (pixels, relative to the first one) that reach one output of a 1-D chain of
    ``(kernel, stride, dilation)`` layers; used to reject receptive fields with holes."""
    support, jump = {0}, 1
    for k, s, d in layers:
        support = {p + t * d * jump for p in support for t in range(k)}
        jump *= s
    return support


class _ConvNormAct(nn.Module):
    """Unpadded conv -> BatchNorm -> ReLU; in eval mode the BatchNorm is folded into the convolution.

    Folding computes ``w * g / sqrt(v + eps)`` and the matching bias on every call (negligible next to
    the convolution) and saves a full pass over the feature map, which matters at stride 2 and 4 on a
    2084x2084 field. The state dict is the ordinary ``conv.weight`` + ``norm.*``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: int = 1,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=0, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.norm.running_mean, self.norm.running_var
        if self.training or mean is None or var is None:
            return F.relu(self.norm(self.conv(x)), inplace=True)
        scale = self.norm.weight * torch.rsqrt(var + self.norm.eps)
        weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = self.norm.bias - mean * scale
        y = F.conv2d(x, weight, bias, self.conv.stride, 0, self.conv.dilation)
        return F.relu_(y)


class _Branch(nn.Sequential):
    """3x3 body convolutions at stride 4, then the feature convolution spanning the rest of the patch.

    Attributes:
        patch_size: ``(H, W)`` pixels seen through stem + branch.
        cells: ``(H, W)`` receptive field of the branch alone, in stride-4 cells.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        features: int,
        dilations: Sequence[tuple[int, int]],
        final_kernel: tuple[int, int],
        final_dilation: tuple[int, int],
        patch_size: tuple[int, int],
    ) -> None:
        layers: list[nn.Module] = []
        c_in = in_channels
        for d in dilations:
            layers.append(_ConvNormAct(c_in, channels, (3, 3), dilation=d))
            c_in = channels
        layers.append(_ConvNormAct(c_in, features, final_kernel, dilation=final_dilation))
        super().__init__(*layers)
        self.patch_size = patch_size
        self.cells = (
            (patch_size[0] - _STEM_RF) // OUTPUT_STRIDE + 1,
            (patch_size[1] - _STEM_RF) // OUTPUT_STRIDE + 1,
        )


class _Head(nn.Module):
    """One sub-model after the stem: one or two branches, channel concatenation, a 1x1 classifier."""

    def __init__(self, branches: Sequence[_Branch], features: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.classifier = nn.Conv2d(features * len(branches), 1, kernel_size=1)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        feats: list[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            feats.append(branch(inputs[i]))
        return self.classifier(feats[0] if len(feats) == 1 else torch.cat(feats, dim=1))


class MultiScaleFNR(nn.Module):
    """The four MSSN FNR sub-models on a shared stem: dense probability maps or per-patch logits.

    See the module docstring for the input range, the map alignment and the border rule. Each
    sub-model outputs one logit per location (mitosis vs. not; ``sigmoid`` gives the probability,
    train with ``BCEWithLogitsLoss``).

    Receptive-field arithmetic: the stem sees 8 px at stride 4, so a branch of patch size ``P`` (per
    axis) must see ``(P - 8) / 4 + 1`` stride-4 cells: ``sum(2 * d)`` over its 3x3 body convolutions
    plus ``(final_kernel - 1) * final_dilation`` for its feature convolution, plus one. The feature
    convolution's dilation is solved from that equation, and the whole receptive field must be free
    of holes. ``P`` must be a multiple of 4 and at least 8 + 4 * sum(2 * d).

    Args:
        sub_models: names of the sub-models to build, from :class:`FNRSubModel`
            (``"square72"``, ``"square96"``, ``"crossbar"``, ``"dilated120"``); output order follows it.
        in_channels: image channels (3 for RGB).
        stem_channels: ``[c1, c2]`` output channels of the two stem convolutions.
        head_channels: channels of the body convolutions; one int for all, or a mapping name -> int
            (``None`` or missing names: 32, and 20 per cross-bar branch).
        features: output channels of each branch's feature convolution (the cross-bar classifier sees
            ``2 * features``).
        patch_sizes: mapping name -> ``P`` or ``[H, W]`` in pixels (defaults 72, 96, ``[120, 60]``, 120).
            For ``"crossbar"`` it is the vertical branch; the horizontal branch is its transpose.
        dilations: mapping name -> list of dilations of the 3x3 body convolutions, each an int or
            ``[dh, dw]`` (defaults ``[1, 2]``, ``[1, 3]``, ``[[1, 1], [2, 1], [4, 2]]``, ``[1, 2, 4]``).
        final_kernels: mapping name -> taps of the feature convolution, int or ``[kh, kw]``
            (default 3, and ``[3, 2]`` for the cross-bar's vertical branch).
        input_downsample: the image reduction the weights are trained for (1: full resolution; 2: each
            ``2 x 2`` block averaged first, :func:`~mssn_monai.ops.resample.downsample_mean`, as "Fast and
            Slow" runs its candidate stage). The network itself never reduces: its input is the reduced
            image (training patches cut from reduced fields, ``PatchSampleDataset(downsample=2)``), and
            :class:`~mssn_monai.networks.detector.MSSNDetector` reduces a field before stage 1 and maps
            the candidates back to full-resolution pixels. Stored as the ``input_downsample`` buffer, so
            saved weights say which input they expect (a checkpoint without it: the constructed value).

    Raises:
        ValueError: on an unknown or repeated sub-model name (with a "did you mean" hint), an unknown
            name in a mapping, non-positive widths, or a patch size that the layers cannot span exactly.

    Example:
        >>> net = MultiScaleFNR().eval()
        >>> maps = net(torch.rand(1, 3, 130, 250))
        >>> maps["fused"].shape
        torch.Size([1, 1, 33, 63])
    """

    def __init__(
        self,
        sub_models: Sequence[str] = ("square72", "square96", "crossbar", "dilated120"),
        in_channels: int = 3,
        stem_channels: Sequence[int] = (16, 32),
        head_channels: int | Mapping[str, int] | None = None,
        features: int = 16,
        patch_sizes: Mapping[str, int | Sequence[int]] | None = None,
        dilations: Mapping[str, Sequence[int | Sequence[int]]] | None = None,
        final_kernels: Mapping[str, int | Sequence[int]] | None = None,
        input_downsample: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(input_downsample, bool) or not isinstance(input_downsample, int) or input_downsample < 1:
            raise ValueError(f"input_downsample must be an int >= 1, got {input_downsample!r}.")
        if isinstance(sub_models, str) or len(sub_models) == 0:
            raise ValueError(
                f"sub_models must be a non-empty list of names from {list(map(str, FNRSubModel))}, got {sub_models!r}."
            )
        names = [str(look_up_option(name, FNRSubModel)) for name in sub_models]
        if len(set(names)) != len(names):
            raise ValueError(f"sub_models has a repeated name: {list(sub_models)!r}.")
        if len(stem_channels) != 2:
            raise ValueError(f"stem_channels must be [c1, c2], got {stem_channels!r}.")
        _check_positive(
            in_channels=in_channels,
            features=features,
            **{f"stem_channels[{i}]": c for i, c in enumerate(stem_channels)},
        )
        widths = _per_model(head_channels, _DEFAULT_HEAD_CHANNELS, "head_channels", names)
        patches = _per_model(patch_sizes, _DEFAULT_PATCH_SIZES, "patch_sizes", names)
        dils = _per_model(dilations, _DEFAULT_DILATIONS, "dilations", names)
        finals = _per_model(final_kernels, _DEFAULT_FINAL_KERNELS, "final_kernels", names)

        self.sub_models: tuple[str, ...] = tuple(names)
        self.in_channels = int(in_channels)
        c1, c2 = (int(c) for c in stem_channels)
        self.stem1 = _ConvNormAct(in_channels, c1, (_STEM_LAYERS[0][0],) * 2, stride=_STEM_LAYERS[0][1])
        self.stem2 = _ConvNormAct(c1, c2, (_STEM_LAYERS[1][0],) * 2, stride=_STEM_LAYERS[1][1])
        heads = {}
        for name in names:
            _check_positive(**{f"head_channels[{name!r}]": widths[name]})
            patch = as_pair(patches[name], f"patch_sizes[{name!r}]")
            if isinstance(dils[name], str) or not isinstance(dils[name], Sequence):
                raise ValueError(f"dilations[{name!r}] must be a list of ints or [dh, dw] pairs, got {dils[name]!r}.")
            body = [as_pair(d, f"dilations[{name!r}]") for d in dils[name]]
            final = as_pair(finals[name], f"final_kernels[{name!r}]")
            specs = [(patch, body, final)]
            if name == FNRSubModel.CROSSBAR:  # horizontal branch = the vertical one transposed
                specs.append((patch[::-1], [d[::-1] for d in body], final[::-1]))
            branches = [_build_branch(name, c2, int(widths[name]), int(features), *spec) for spec in specs]
            heads[name] = _Head(branches, int(features))
        self.heads = nn.ModuleDict(heads)
        # Pad above/left = half the largest patch extent per axis: every branch then starts at an even
        # pixel offset (patch sizes are multiples of 4), i.e. on the stride-2 grid of stem1.
        self.half_extent = (
            max(b.patch_size[0] for h in self.heads.values() for b in h.branches) // 2,
            max(b.patch_size[1] for h in self.heads.values() for b in h.branches) // 2,
        )
        # Where each branch reads the stem output (static, so the forward pass is TorchScript-able):
        # [stem phase py, px on stem1's stride-2 grid, first stride-4 cell r0, c0, branch cells h, w].
        self.output_stride = OUTPUT_STRIDE  # attributes, not globals, for TorchScript
        self.fused_key = FUSED_KEY
        self.register_buffer("input_downsample", torch.tensor(int(input_downsample), dtype=torch.int64))
        # weights saved before 0.15.0 have no such buffer: they keep the constructed value
        self.register_load_state_dict_pre_hook(keep_constructed_buffers("input_downsample"))
        self._origins = {
            name: [[*self._branch_origin(b)[0], *self._branch_origin(b)[1], *b.cells] for b in head.branches]
            for name, head in self.heads.items()
        }

    @property
    def sample_size(self) -> tuple[int, int]:
        """``(H, W)`` of the smallest sample :meth:`classify_patches` accepts (120x120 by default)."""
        return 2 * self.half_extent[0], 2 * self.half_extent[1]

    def patch_sizes(self) -> dict[str, list[tuple[int, int]]]:
        """Declared ``(H, W)`` patch of each branch, per sub-model (two entries for the cross-bar)."""
        return {name: [b.patch_size for b in head.branches] for name, head in self.heads.items()}

    def receptive_fields(self) -> dict[str, list[tuple[int, int]]]:
        """``(H, W)`` receptive field of stem + each branch, in pixels, computed from the modules themselves."""
        stem = [self.stem1.conv, self.stem2.conv]
        out = {}
        for name, head in self.heads.items():
            out[name] = [conv_receptive_field(stem + [m.conv for m in b])[0] for b in head.branches]
        return out

    def _branch_origin(self, branch: _Branch) -> tuple[tuple[int, int], tuple[int, int]]:
        """Stem phase ``(py, px)`` on stem1's stride-2 grid and first stride-4 cell ``(r0, c0)`` of ``branch``."""
        phase, start = [], []
        for a in range(2):
            offset_px = self.half_extent[a] - branch.patch_size[a] // 2  # even, >= 0
            half_cells = offset_px // 2
            phase.append(half_cells % 2)
            start.append(half_cells // 2)
        return (phase[0], phase[1]), (start[0], start[1])

    def _logit_maps(self, padded: torch.Tensor, rows: int, cols: int) -> dict[str, torch.Tensor]:
        """Logit maps ``(B, 1, rows, cols)`` per sub-model from an image already padded by the dense rule."""
        x = self.stem1(padded)
        stem: dict[int, torch.Tensor] = {}  # stem2 output per phase (key 2 * py + px)
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            inputs: list[torch.Tensor] = []
            for o in self._origins[name]:
                key = 2 * o[0] + o[1]
                if key not in stem:
                    stem[key] = self.stem2(x[:, :, o[0] :, o[1] :])
                inputs.append(stem[key][:, :, o[2] : o[2] + rows + o[4] - 1, o[3] : o[3] + cols + o[5] - 1])
            out[name] = head(inputs)
        return out

    def _probability_maps(self, padded: torch.Tensor, rows: int, cols: int) -> dict[str, torch.Tensor]:
        """Sigmoid of every sub-model's logit map plus their per-cell maximum under :data:`FUSED_KEY`."""
        return self.probabilities(self._logit_maps(padded, rows, cols))

    def probabilities(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: sigmoid(logit)}`` in ``sub_models`` order plus :data:`FUSED_KEY`, their per-cell maximum.

        Args:
            logits: ``{name: (B, 1, rows, cols)}`` logit maps of every sub-model.
        """
        probs: dict[str, torch.Tensor] = {}
        fused = torch.empty(0)
        for name, logit in logits.items():
            p = torch.sigmoid(logit)
            fused = p if len(probs) == 0 else torch.maximum(fused, p)
            probs[name] = p
        probs[self.fused_key] = fused
        return probs

    @torch.jit.unused
    def _check_image(self, x: torch.Tensor, what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{what} must be a tensor (B, {self.in_channels}, H, W), got {got}.")
        if not x.is_floating_point():
            raise ValueError(f"{what} must be float RGB in [0, 1], got dtype {x.dtype}.")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense probability maps of every sub-model and their per-cell maximum.

        Args:
            image: ``(B, in_channels, H, W)`` float RGB in ``[0, 1]``, any ``H, W >= 1`` (borders are
                mirrored, see the module docstring). Channels-last input is kept channels-last.

        Returns:
            ``{name: (B, 1, ceil(H / 4), ceil(W / 4))}`` probabilities for each sub-model, in
            ``sub_models`` order, plus :data:`FUSED_KEY` (``"fused"``), their elementwise maximum.
            Cell ``[i, j]`` classifies the patch centred at pixel ``(x, y) = (4 j, 4 i)``.

        Raises:
            ValueError: when ``image`` is not a float ``(B, in_channels, H, W)`` tensor (the message
                gives the shape received).
        """
        if not torch.jit.is_scripting():
            self._check_image(image, "image")
        rows = (int(image.shape[-2]) + self.output_stride - 1) // self.output_stride
        cols = (int(image.shape[-1]) + self.output_stride - 1) // self.output_stride
        return self.forward_region(image, 0, rows, 0, cols)

    def forward_region(
        self, image: torch.Tensor, row0: int, rows: int, col0: int, cols: int
    ) -> dict[str, torch.Tensor]:
        """Cells ``[row0, row0 + rows) x [col0, col0 + cols)`` of :meth:`forward`'s maps, from that window only.

        Reads only the image pixels those cells' patches cover (borders mirrored by the same rule), so a
        large image can be processed in tiles whose maps, put side by side, equal the whole image's maps
        (up to float rounding): the tiles overlap by the patch context, nothing else. TorchScript-able
        (``mssn_monai.networks.detector.MSSNDetector`` tiles with it).

        Args:
            image: ``(B, in_channels, H, W)`` float RGB in ``[0, 1]``, or uint8 (divided by 255 here,
                after cropping, so a large image can stay uint8 in memory).
            row0, rows, col0, cols: the output cells wanted (map coordinates, stride 4).

        Returns:
            ``{name: (B, 1, rows, cols)}`` probabilities plus ``"fused"``.
        """
        return self._probability_maps(self.pad_region(image, row0, rows, col0, cols), rows, cols)

    def pad_region(self, image: torch.Tensor, row0: int, rows: int, col0: int, cols: int) -> torch.Tensor:
        """The pixels :meth:`forward_region` classifies for those cells: the window with its patch context
        (borders mirrored), float in ``[0, 1]``, channels-last, ``(B, C, 4 (rows - 1) + 2 qy, 4 (cols - 1) + 2 qx)``
        with ``(qy, qx)`` = :attr:`half_extent`.

        Args:
            image: ``(B, in_channels, H, W)`` float RGB in ``[0, 1]``, or uint8.
            row0, rows, col0, cols: the output cells wanted (map coordinates, stride 4).
        """
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must be (B, {self.in_channels}, H, W), got {list(image.shape)}.")
        h, w = int(image.shape[-2]), int(image.shape[-1])
        n_rows, n_cols = (
            (h + self.output_stride - 1) // self.output_stride,
            (w + self.output_stride - 1) // self.output_stride,
        )
        if not (0 <= row0 < row0 + rows <= n_rows and 0 <= col0 < col0 + cols <= n_cols):
            raise ValueError(
                f"region rows [{row0}, {row0 + rows}) x cols [{col0}, {col0 + cols}) is not inside the "
                f"{n_rows}x{n_cols} map of a {h}x{w} image."
            )
        qy, qx = self.half_extent
        padded = mirror_take(image, 2, self.output_stride * row0 - qy, self.output_stride * (rows - 1) + 2 * qy)
        padded = mirror_take(padded, 3, self.output_stride * col0 - qx, self.output_stride * (cols - 1) + 2 * qx)
        # one copy into channels-last (a window inside the image is a view until here); the uint8 -> float
        # conversion keeps that layout
        return to_float01(padded.contiguous(memory_format=torch.channels_last))

    def classify_patches(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logit of each sub-model for the centre pixel of each sample (the training path).

        Args:
            patches: ``(B, in_channels, h, w)`` float RGB in ``[0, 1]`` with even ``h, w`` at least
                :attr:`sample_size` (120x120 by default), e.g. from :func:`extract_patch`. The centre
                pixel is ``(w / 2, h / 2)``; each sub-model sees its own centre crop (72x72, 96x96,
                120x60 + 60x120, 120x120), anything beyond :attr:`sample_size` is ignored.

        Returns:
            ``{name: (B,)}`` logits, in ``sub_models`` order (no ``"fused"`` entry).

        Raises:
            ValueError: on a wrong rank, channel count, dtype, an odd size or a sample smaller than
                :attr:`sample_size` (the message gives the shape received).
        """
        self._check_image(patches, "patches")
        h, w = int(patches.shape[-2]), int(patches.shape[-1])
        sh, sw = self.sample_size
        if h < sh or w < sw or h % 2 or w % 2:
            raise ValueError(
                f"patches must be (B, {self.in_channels}, h, w) with even h >= {sh} and w >= {sw}, "
                f"got {tuple(patches.shape)}."
            )
        top, left = (h - sh) // 2, (w - sw) // 2
        crop = patches[:, :, top : top + sh, left : left + sw]
        return {name: logit.reshape(-1) for name, logit in self._logit_maps(crop, 1, 1).items()}


def _check_positive(**values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}.")


def _per_model(value: Any, defaults: Mapping[str, Any], knob: str, names: Sequence[str]) -> dict[str, Any]:
    """Resolve a knob given as one value for all sub-models, a partial mapping, or ``None`` (defaults)."""
    out = {name: defaults[name] for name in names}
    if value is None:
        return out
    if isinstance(value, Mapping):
        for key, v in value.items():
            try:
                key = str(look_up_option(key, FNRSubModel))
            except ValueError as e:
                raise ValueError(f"{knob}: {e}") from e
            if key in out:
                out[key] = v
        return out
    return dict.fromkeys(names, value)


def _build_branch(
    name: str,
    in_channels: int,
    channels: int,
    features: int,
    patch: tuple[int, int],
    body: Sequence[tuple[int, int]],
    final: tuple[int, int],
) -> _Branch:
    """Solve the feature convolution's dilation so that stem + branch see exactly ``patch`` pixels."""
    final_dilation = []
    for a, axis in enumerate(("height", "width")):
        p, k = patch[a], final[a]
        if p % OUTPUT_STRIDE or p < _STEM_RF:
            raise ValueError(
                f"patch_sizes[{name!r}] {axis} must be a multiple of {OUTPUT_STRIDE} and >= {_STEM_RF}, got {p}."
            )
        if k < 1 or any(d[a] < 1 for d in body):
            raise ValueError(
                f"{name!r}: kernels and dilations must be >= 1, got final {final}, dilations {list(body)}."
            )
        left = (p - _STEM_RF) // OUTPUT_STRIDE - sum(2 * d[a] for d in body)
        if left < 0 or (k == 1 and left != 0) or (k > 1 and (left == 0 or left % (k - 1))):
            raise ValueError(
                f"{name!r} {axis}: a patch of {p} px needs {(p - _STEM_RF) // OUTPUT_STRIDE} stride-4 cells of span; "
                f"the body convolutions (dilations {[d[a] for d in body]}) use {sum(2 * d[a] for d in body)}, "
                f"leaving {left}, which a feature convolution of {k} taps cannot span exactly "
                f"(needs (taps - 1) * dilation == {left})."
            )
        final_dilation.append(left // (k - 1) if k > 1 else 1)
        layers = [(kk, s, 1) for kk, s in _STEM_LAYERS] + [(3, 1, d[a]) for d in body] + [(k, 1, final_dilation[a])]
        if _support_1d(layers) != set(range(p)):
            raise ValueError(
                f"{name!r} {axis}: the receptive field of {p} px has holes (dilations {[d[a] for d in body]}, "
                f"feature convolution {k} taps at dilation {final_dilation[a]}); use smaller gaps."
            )
    return _Branch(in_channels, channels, features, body, final, (final_dilation[0], final_dilation[1]), patch)

"""Stage 2 of MSSN (false-positive reduction, FPR): a Siamese embedding, a reference bank and the 2-px vote.

Ma et al. (ICPR 2018, Sec. III-B) train an embedding ``G`` as a Siamese pair (shared weights) with a
margin contrastive loss (:class:`mssn_monai.losses.MarginContrastiveLoss`) on three kinds of patches:
ordinary tissue, mitoses and hard mimics. At test time every candidate of stage 1 is re-sampled at
the pixels around its centre (:func:`vote_offsets`), each patch ``C_ij`` gets a similarity to mitosis
``C_ij1`` and to not-mitosis ``C_ij0``, and the candidate is kept when ``sum_j C_ij1 > sum_j C_ij0``
(:func:`fpr_vote`). The paper compares a patch with "patches" of each class but does not say which;
here each class is represented by a few stored embeddings, the *reference bank*, saved with the
weights so ``model.pt`` alone reproduces the scores.

Input
    ``(B, 3, P, P)`` RGB float in ``[0, 1]`` (``uint8 / 255``, ``mssn_monai.networks.fnr.INPUT_RANGE``),
    ``P = patch_size`` (96 by default, the paper's 96x96 patch), centre pixel at ``(P // 2, P // 2)``
    as :func:`mssn_monai.networks.fnr.extract_patch` cuts it (same border rule as stage 1).

Classes
    ``0`` background / ordinary tissue, ``1`` mitosis, ``2`` hard mimic: :class:`mssn_monai.keys.PatchClass`.

Similarity
    ``s(d) = clamp(1 - d / margin, 0, 1)`` for the Euclidean distance ``d`` between two embeddings
    (:func:`distance_similarity`). It is tied to the contrastive loss: a dissimilar pair costs
    ``max(0, margin - d)^2 / 2 = (margin * s)^2 / 2``, so ``s > 0`` exactly when the loss still pushes
    the pair apart, ``s = 0`` once training has separated it by the margin, and ``s = 1`` when the two
    embeddings coincide, which is where the similar-pair term pulls. A Gaussian kernel would never
    reach 0 and needs its own bandwidth; this one has no parameter beyond the margin the loss uses.
    The similarity of a patch to a class is the maximum over that class's references (0 for a class
    without references), so it is in ``[0, 1]``.

Cost
    The default ``G`` (four stride-2 3x3 conv-BN-ReLU stages of 16, 32, 64 and 96 channels with zero
    padding, global average pooling, a linear projection to 32) costs 16.6 MFLOP (0.0166 GFLOP) per
    96x96 patch (``torch.utils.flop_counter.FlopCounterMode``: convolutions and the projection) and
    has 82,288 parameters. A 2084x2084 field with 50 candidates x 13 vote patches is then about
    11 GFLOP, against about 72 GFLOP for stage 1 (0.3 s on two CPU threads). ``convs_per_stage=2``
    adds a stride-1 convolution per stage: 54 MFLOP per patch, 214 k parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mssn_monai.keys import PatchClass
from mssn_monai.networks.state import keep_constructed_buffers

__all__ = [
    "NUM_CLASSES",
    "MITOSIS_CLASS",
    "DEFAULT_CALIBRATION",
    "STANDARDIZE_MIN_STD",
    "SiameseEmbedding",
    "standardize_patches",
    "distance_similarity",
    "build_reference_bank",
    "vote_offsets",
    "fpr_vote",
    "fit_calibration",
]

NUM_CLASSES: Final[int] = len(PatchClass)
"""Classes of the reference bank: 0 background, 1 mitosis, 2 hard mimic (``PatchClass`` values)."""

MITOSIS_CLASS: Final[int] = int(PatchClass.MITOSIS)
"""The class whose similarity is ``C_ij1``; the other classes make up ``C_ij0``."""

DEFAULT_CALIBRATION: Final[tuple[float, float]] = (4.0, 0.0)
"""``(a, b)`` of ``p = sigmoid(a * votes + b)`` before :func:`fit_calibration` has been run.

``b = 0`` makes ``p > 0.5`` exactly when the paper's vote keeps the candidate (``votes > 0``), and
``a = 4`` spreads the vote range ``[-1, 1]`` over ``[0.018, 0.982]`` so a probability threshold reads
like a vote threshold. Any ``a > 0`` ranks candidates the same way, so FROC and AP do not depend on it.
"""


def _shape_of(x: Any) -> Any:
    """``tuple(x.shape)`` of a tensor or array, else the type name (for error messages)."""
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _check_positive_int(**values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}.")


def _check_classes(classes: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """``classes`` as a flat int64 tensor of length ``n`` with values in ``0 .. NUM_CLASSES - 1``."""
    if not isinstance(classes, torch.Tensor):
        classes = torch.as_tensor(classes)
    if classes.ndim != 1 or classes.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},), got {tuple(classes.shape)}.")
    if classes.is_floating_point():
        if not torch.equal(classes, classes.round()):
            raise ValueError(f"{what} must hold integer class values, got non-integers.")
    elif classes.dtype == torch.bool or classes.is_complex():
        raise ValueError(f"{what} must be integer class values, got dtype {classes.dtype}.")
    classes = classes.long()
    if n and (int(classes.min()) < 0 or int(classes.max()) >= NUM_CLASSES):
        raise ValueError(f"{what} must be in 0 .. {NUM_CLASSES - 1}, got values {torch.unique(classes).tolist()}.")
    return classes


STANDARDIZE_MIN_STD: Final[float] = 0.02
"""Floor of a patch's standard deviation in :func:`standardize_patches` (intensity units): a near-blank
patch (glass) is not blown up to full contrast."""


def standardize_patches(patches: torch.Tensor, min_std: float = STANDARDIZE_MIN_STD) -> torch.Tensor:
    """Each patch minus its per-channel mean, divided by its standard deviation over all channels.

    A patch's brightness and contrast then no longer tell the embedding anything, while its hue
    (the ratios between channels) does: a lighter or fainter rendering of the same figure gives the
    same input, the invariance a new lab's stain amount and scanner tone need.

    Args:
        patches: ``(B, C, P, P)`` float.
        min_std: the standard deviation is at least this (intensity units), so a blank patch stays flat.

    Returns:
        ``(B, C, P, P)``: zero mean per channel, unit standard deviation per patch (below the floor: less).
    """
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    std = centred.pow(2).mean(dim=(-3, -2, -1), keepdim=True).sqrt().clamp_min(min_std)
    return centred / std


def distance_similarity(distances: torch.Tensor, margin: float) -> torch.Tensor:
    """Similarity ``clamp(1 - d / margin, 0, 1)`` of Euclidean distances (see the module docstring).

    Args:
        distances: any shape, non-negative distances between embeddings (embedding units).
        margin: the contrastive-loss margin, > 0, same units.

    Returns:
        Same shape: 1 at distance 0, falling linearly to 0 at ``margin`` and 0 beyond.

    Example:
        >>> distance_similarity(torch.tensor([0.0, 0.25, 1.0, 3.0]), margin=1.0)
        tensor([1.0000, 0.7500, 0.0000, 0.0000])
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}.")
    return (1.0 - distances / margin).clamp(0.0, 1.0)


class _Stage(nn.Sequential):
    """A stride-2 3x3 conv-BN-ReLU, then ``extra`` stride-1 3x3 conv-BN-ReLU (zero padding 1)."""

    def __init__(self, in_channels: int, out_channels: int, extra: int) -> None:
        layers: list[nn.Module] = []
        for i in range(1 + extra):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2 if i == 0 else 1, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class SiameseEmbedding(nn.Module):
    """The FPR embedding ``G`` (one twin of the Siamese pair) with its reference bank and calibration.

    Train it with :class:`mssn_monai.losses.MarginContrastiveLoss` on batches of ``(patch, class)``: the
    loss forms every pair in the batch, which is the Siamese pair with shared weights. Then
    :meth:`build_references` from embeddings of training patches, :meth:`set_calibration` from
    :func:`fit_calibration` on validation votes; ``MSSNDetector.vote`` runs the vote on candidates.

    Embeddings are L2-normalised by default (``normalize=True``). The contrastive loss's hinge
    ``max(0, margin - d)`` is only meaningful against a fixed scale: unnormalised, the network can
    satisfy it by inflating every embedding and the margin says nothing. On the unit sphere distances
    lie in ``[0, 2]``, so ``margin = 1`` asks dissimilar patches to be at least 60 degrees apart
    (chord 1), which three classes can all satisfy at once (an equilateral triangle has chord
    ``sqrt(3)``), and the similarity ``1 - d / margin`` of :func:`distance_similarity` is on a fixed scale.

    Buffers (in ``state_dict``, so saved in ``model.pt``):
        ``references``: ``(K, embedding_dim)`` float, the reference embeddings (``K = 0`` when fresh).
        ``reference_classes``: ``(K,)`` int64, each reference's class (0 background, 1 mitosis, 2 mimic).
        ``calibration``: ``(2,)`` float, ``(a, b)`` of ``probability = sigmoid(a * votes + b)``;
        :data:`DEFAULT_CALIBRATION` = ``(4, 0)`` until set.
        ``operating_threshold``: scalar, the minimum calibrated probability of a detection among the
        candidates the vote keeps (0 = the vote alone decides); chosen on held-out fields to maximise F1.
        ``input_standardization``: bool scalar, whether :meth:`forward` first applies
        :func:`standardize_patches`; saved with the weights, so weights trained either way load and run as
        trained whatever the config says (a checkpoint saved without it keeps the constructor's value).
        Loading a state dict resizes the first two to the checkpoint's ``K`` (see :meth:`_load_from_state_dict`).

    Args:
        patch_size: side ``P`` of the square input patch in pixels (default 96, as in the paper).
        in_channels: image channels (3 for RGB).
        embedding_dim: size ``D`` of the embedding.
        channels: output channels of the stages; each stage halves the resolution (stride-2 conv).
        convs_per_stage: 3x3 conv-BN-ReLU layers per stage (the first at stride 2, the rest at stride 1).
        normalize: L2-normalise the embeddings (see above).
        margin: the contrastive-loss margin in embedding units, > 0; the similarity reaches 0 there.
            Use the same value (one config id) for the loss.
        chunk_size: patches per forward pass in :meth:`embed` and in ``MSSNDetector.vote`` (bounds memory).
            The default 64 keeps a pass's activations in a CPU's cache: on the 2-core development
            machine a 2084x2084 field with 165 candidates (both stages) took 1.19 s with 64 against
            1.64 s with 512, with the same votes; on a GPU a larger chunk may be faster.
        standardize_input: standardise each patch first (:func:`standardize_patches`): brightness and
            contrast removed, hue kept. Stored as the ``input_standardization`` buffer.

    Raises:
        ValueError: on a non-positive width, size or chunk, an empty ``channels``, a non-positive margin
            or a patch too small for the number of stages.

    Example:
        >>> net = SiameseEmbedding().eval()
        >>> net(torch.rand(4, 3, 96, 96)).shape
        torch.Size([4, 32])
    """

    def __init__(
        self,
        patch_size: int = 96,
        in_channels: int = 3,
        embedding_dim: int = 32,
        channels: Sequence[int] = (16, 32, 64, 96),
        convs_per_stage: int = 1,
        normalize: bool = True,
        margin: float = 1.0,
        chunk_size: int = 64,
        standardize_input: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(channels, (str, int)) or len(channels) == 0:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}.")
        _check_positive_int(
            patch_size=patch_size,
            in_channels=in_channels,
            embedding_dim=embedding_dim,
            convs_per_stage=convs_per_stage,
            chunk_size=chunk_size,
            **{f"channels[{i}]": c for i, c in enumerate(channels)},
        )
        if patch_size < 2 ** len(channels):
            raise ValueError(
                f"patch_size {patch_size} is smaller than 2 ** len(channels) = {2 ** len(channels)} "
                f"({len(channels)} stride-2 stages)."
            )
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin <= 0:
            raise ValueError(f"margin must be a finite number > 0, got {margin!r}.")
        self.patch_size = int(patch_size)
        self.in_channels = int(in_channels)
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.margin = float(margin)
        self.chunk_size = int(chunk_size)
        self.num_classes, self.mitosis_class = NUM_CLASSES, MITOSIS_CLASS  # attributes for TorchScript
        widths = [int(in_channels)] + [int(c) for c in channels]
        self.features = nn.Sequential(
            *[_Stage(widths[i], widths[i + 1], int(convs_per_stage) - 1) for i in range(len(channels))]
        )
        self.projection = nn.Linear(widths[-1], self.embedding_dim)
        self.register_buffer("references", torch.zeros(0, self.embedding_dim))
        self.register_buffer("reference_classes", torch.zeros(0, dtype=torch.long))
        self.register_buffer("calibration", torch.tensor(DEFAULT_CALIBRATION, dtype=torch.float32))
        self.register_buffer("operating_threshold", torch.tensor(0.0))
        self.register_buffer("input_standardization", torch.tensor(bool(standardize_input)))

    # ------------------------------------------------------------------ embedding

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Embed a batch of patches.

        Args:
            patches: ``(B, in_channels, P, P)`` float RGB in ``[0, 1]``, ``P = patch_size``.

        Returns:
            ``(B, embedding_dim)`` embeddings, of unit L2 norm when ``normalize`` is set.

        Raises:
            ValueError: on a wrong rank, channel count, patch size or a non-float dtype (the message
                gives the shape received).
        """
        if not torch.jit.is_scripting():
            self._check_patches(patches)
        if bool(self.input_standardization):
            patches = standardize_patches(patches)
        x = self.features(patches).mean(dim=(-2, -1))
        x = self.projection(x)
        # eps keeps an all-zero embedding finite (it stays zero rather than becoming NaN).
        return F.normalize(x, p=2.0, dim=1, eps=1e-12) if self.normalize else x

    @torch.jit.unused
    def _check_patches(self, patches: torch.Tensor) -> None:
        p, c = self.patch_size, self.in_channels
        if not isinstance(patches, torch.Tensor) or patches.ndim != 4 or tuple(patches.shape[1:]) != (c, p, p):
            got = _shape_of(patches)
            raise ValueError(f"patches must be a tensor (B, {c}, {p}, {p}), got {got}.")
        if not patches.is_floating_point():
            raise ValueError(f"patches must be float RGB in [0, 1], got dtype {patches.dtype}.")

    def embed(self, patches: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """:meth:`forward` over ``chunk_size`` patches at a time (the same numbers in eval mode).

        Args:
            patches: ``(M, in_channels, P, P)``; ``M`` may be 0.
            chunk_size: patches per pass (default: the ``chunk_size`` knob).

        Returns:
            ``(M, embedding_dim)``.
        """
        chunk = self.chunk_size if chunk_size is None else chunk_size
        _check_positive_int(chunk_size=chunk)
        if isinstance(patches, torch.Tensor) and patches.ndim == 4 and patches.shape[0] == 0:
            self.forward(patches)  # validates the shape
            return patches.new_zeros(0, self.embedding_dim)
        return torch.cat([self.forward(part) for part in torch.split(patches, chunk)], dim=0)

    # ------------------------------------------------------------------ reference bank

    def set_references(self, embeddings: torch.Tensor, classes: torch.Tensor) -> None:
        """Replace the reference bank (stored as given: no normalisation, detached copies).

        Args:
            embeddings: ``(K, embedding_dim)`` finite float embeddings (``K`` may be 0).
            classes: ``(K,)`` integer classes in ``{0, 1, 2}`` (int or integral float).

        Raises:
            ValueError: on a wrong shape, non-finite embeddings or a class out of range.
        """
        if (
            not isinstance(embeddings, torch.Tensor)
            or embeddings.ndim != 2
            or embeddings.shape[1] != self.embedding_dim
        ):
            got = _shape_of(embeddings)
            raise ValueError(f"embeddings must be (K, {self.embedding_dim}), got {got}.")
        if not embeddings.is_floating_point() or not bool(torch.isfinite(embeddings).all()):
            raise ValueError("embeddings must be finite floats.")
        cls = _check_classes(classes, embeddings.shape[0], "classes")
        ref = self.references
        self.references = embeddings.detach().to(device=ref.device, dtype=ref.dtype).clone()
        self.reference_classes = cls.detach().to(device=ref.device).clone()

    def build_references(
        self, embeddings: torch.Tensor, classes: torch.Tensor, per_class: int = 8, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduce many labelled embeddings to at most ``per_class`` references per class and store them.

        See :func:`build_reference_bank` (called with this network's ``normalize``).

        Args:
            embeddings: ``(n, embedding_dim)`` embeddings, e.g. of training patches from :meth:`embed`.
            classes: ``(n,)`` their classes in ``{0, 1, 2}``.
            per_class: references per class (fewer when a class has fewer distinct embeddings).
            seed: seed of the k-means initialisation.

        Returns:
            The stored ``(references (K, D), reference_classes (K,))``.
        """
        refs, cls = build_reference_bank(embeddings, classes, per_class, normalize=self.normalize, seed=seed)
        self.set_references(refs, cls)
        return self.references, self.reference_classes

    def set_calibration(self, a: float, b: float) -> None:
        """Set ``(a, b)`` of ``probability = sigmoid(a * votes + b)`` (e.g. from :func:`fit_calibration`).

        Raises:
            ValueError: when ``a`` or ``b`` is not finite.
        """
        if not (math.isfinite(float(a)) and math.isfinite(float(b))):
            raise ValueError(f"calibration (a, b) must be finite, got ({a!r}, {b!r}).")
        self.calibration = torch.tensor(
            [float(a), float(b)], dtype=self.calibration.dtype, device=self.calibration.device
        )

    def set_operating_threshold(self, threshold: float) -> None:
        """Set the minimum calibrated probability a kept candidate needs to be reported (in [0, 1])."""
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"operating threshold must be in [0, 1], got {threshold!r}.")
        self.operating_threshold = torch.tensor(float(threshold), device=self.calibration.device)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Resize ``references`` / ``reference_classes`` to the checkpoint's ``K`` before the usual copy.

        Only the number of references may differ; a different ``embedding_dim`` is still reported as
        a size mismatch by :meth:`torch.nn.Module.load_state_dict`. A checkpoint saved before
        ``operating_threshold`` existed loads with threshold 0 (the vote alone decides); one saved before
        ``input_standardization`` existed keeps the value the module was constructed with.
        """
        if prefix + "calibration" in state_dict and prefix + "operating_threshold" not in state_dict:
            state_dict[prefix + "operating_threshold"] = torch.zeros(())
        keep_constructed_buffers("input_standardization")(self, state_dict, prefix)  # saved before 0.14.0
        for name in ("references", "reference_classes"):
            key = prefix + name
            if key not in state_dict:
                continue
            new, old = state_dict[key], getattr(self, name)
            if new.ndim == old.ndim and tuple(new.shape[1:]) == tuple(old.shape[1:]) and new.shape != old.shape:
                self._buffers[name] = old.new_empty(new.shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ similarity and vote

    def class_similarities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Similarity of each embedding to each class: the best :func:`distance_similarity` to its references.

        Args:
            embeddings: ``(B, embedding_dim)``.

        Returns:
            ``(B, 3)`` in ``[0, 1]``, columns background, mitosis, mimic; 0 for a class with no reference.

        Raises:
            RuntimeError: when the reference bank is empty (or its two buffers disagree in length).
            ValueError: on a wrong embedding shape.
        """
        refs, cls = self.references, self.reference_classes
        if refs.shape[0] == 0:
            raise RuntimeError(
                "SiameseEmbedding has no references: call build_references()/set_references() "
                "or load a checkpoint that has them before computing similarities."
            )
        if cls.ndim != 1 or cls.shape[0] != refs.shape[0]:
            raise RuntimeError(
                f"reference bank is inconsistent: references {list(refs.shape)}, classes {list(cls.shape)}."
            )
        if embeddings.ndim != 2 or embeddings.shape[1] != refs.shape[1]:
            raise ValueError(f"embeddings must be (B, {refs.shape[1]}), got {list(embeddings.shape)}.")
        # The direct (non-matmul) form is exact: ||x - r|| = 0 for x == r, which the hand-made tests rely on.
        dist = torch.cdist(
            embeddings.to(refs.dtype).unsqueeze(0), refs.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist"
        )[0]
        sim = distance_similarity(dist, self.margin)  # (B, K), >= 0, so 0 fills the other classes
        onehot = cls.unsqueeze(0) == torch.arange(self.num_classes, device=cls.device).unsqueeze(1)  # (3, K)
        return torch.where(onehot.unsqueeze(1), sim.unsqueeze(0), sim.new_zeros(())).amax(dim=-1).T

    def mitosis_similarity(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's ``C_ij1`` (similar to mitosis) and ``C_ij0`` (similar to not mitosis).

        Args:
            embeddings: ``(B, embedding_dim)``.

        Returns:
            ``c1 (B,)`` the similarity to mitosis and ``c0 (B,)`` the larger of the similarities to
            background and to mimic, both in ``[0, 1]``.
        """
        sim = self.class_similarities(embeddings)
        m = self.mitosis_class
        return sim[:, m], torch.cat([sim[:, :m], sim[:, m + 1 :]], dim=1).amax(dim=1)

    def calibrated_score(self, votes: torch.Tensor) -> torch.Tensor:
        """``sigmoid(a * votes + b)`` with ``(a, b)`` from the ``calibration`` buffer; same shape as ``votes``."""
        a, b = self.calibration[0], self.calibration[1]
        return torch.sigmoid(a * votes.to(self.calibration.dtype) + b)


# ---------------------------------------------------------------------- pure functions


def _kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator, spherical: bool) -> torch.Tensor:
    """Lloyd's k-means (k-means++ seeding) of ``x (n, D)`` float64 with more than ``k`` distinct rows; ``(k, D)``.

    Duplicated rows weigh in the means; k-means++ never picks a duplicate of a chosen centre (its
    sampling weight is 0), so the ``k`` initial centres are distinct.
    """
    n = x.shape[0]
    centres = [x[int(torch.randint(n, (1,), generator=generator))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        nxt = x[int(torch.multinomial(d2, 1, generator=generator))]
        centres.append(nxt)
        d2 = torch.minimum(d2, ((x - nxt) ** 2).sum(1))
    c = torch.stack(centres)
    assign = None
    for _ in range(iterations):
        new_assign = torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(k):  # a loop over clusters (k <= per_class), not over samples
            members = x[assign == j]
            if len(members):  # an emptied cluster keeps its centre
                c[j] = members.mean(0)
        if spherical:
            c = F.normalize(c, dim=1)
    return c


def build_reference_bank(
    embeddings: torch.Tensor,
    classes: torch.Tensor,
    per_class: int = 8,
    normalize: bool = True,
    seed: int = 0,
    iterations: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce labelled embeddings to a small bank: k-means centres per class, deterministic.

    For each class present, in class order: with ``per_class = 1`` the class mean (the prototype);
    otherwise, when the class has at most ``per_class`` distinct embeddings, those embeddings (sorted
    lexicographically); else ``per_class`` k-means centres (k-means++ seeding from a
    ``torch.Generator`` seeded with ``seed``, at most ``iterations`` Lloyd steps, in float64 on the
    CPU). With ``normalize`` the centres are projected back onto the unit sphere after every update
    (spherical k-means), matching embeddings that are L2-normalised.

    Args:
        embeddings: ``(n, D)`` finite float embeddings (not modified).
        classes: ``(n,)`` integer classes in ``{0, 1, 2}``.
        per_class: maximum number of references per class, >= 1.
        normalize: L2-normalise the centres (use the network's ``normalize``).
        seed: seed of the k-means++ initialisation.
        iterations: maximum Lloyd iterations per class.

    Returns:
        ``references (K, D)`` (dtype and device of ``embeddings``) and ``reference_classes (K,)`` int64,
        ``K <= NUM_CLASSES * per_class``; a class absent from ``classes`` gets no reference.

    Raises:
        ValueError: on mismatched shapes, non-finite embeddings, a class out of range or a bad knob.
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        got = _shape_of(embeddings)
        raise ValueError(f"embeddings must be (n, D), got {got}.")
    if not embeddings.is_floating_point() or not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings must be finite floats.")
    _check_positive_int(per_class=per_class, iterations=iterations)
    cls = _check_classes(classes, embeddings.shape[0], "classes").cpu()
    x = embeddings.detach().cpu().double()
    generator = torch.Generator().manual_seed(int(seed))
    refs, ref_cls = [], []
    for c in range(NUM_CLASSES):
        members = x[cls == c]
        if len(members) == 0:
            continue
        distinct = torch.unique(members, dim=0)
        if per_class == 1:
            centres = members.mean(0, keepdim=True)
            if normalize:
                centres = F.normalize(centres, dim=1)
        elif len(distinct) <= per_class:
            centres = distinct
        else:
            centres = _kmeans(members, per_class, iterations, generator, normalize)
        refs.append(centres)
        ref_cls.append(torch.full((len(centres),), c, dtype=torch.long))
    if not refs:
        return embeddings.new_zeros(0, embeddings.shape[1]), torch.zeros(0, dtype=torch.long, device=embeddings.device)
    return (
        torch.cat(refs).to(device=embeddings.device, dtype=embeddings.dtype),
        torch.cat(ref_cls).to(embeddings.device),
    )


def vote_offsets(radius_px: float = 2.0) -> torch.Tensor:
    """Integer pixel offsets ``(dx, dy)`` of the vote patches: every ``dx^2 + dy^2 <= radius_px^2``.

    Order: by squared distance from the centre, then row (``dy``), then column (``dx``), so the centre
    comes first and each ring is read in raster order. ``radius_px = 2`` gives 13 offsets. The paper
    says "less than 2 pixels", which read strictly would be the 9 offsets of ``radius_px = 1.5``; the
    design keeps the ring at exactly 2 px (4 more patches at ``(0, +-2)``, ``(+-2, 0)``).

    Args:
        radius_px: radius in pixels, finite and >= 0 (a tolerance of 1e-9 px^2 keeps e.g. ``sqrt(2)``
            inclusive despite rounding).

    Returns:
        ``(K, 2)`` int64, columns ``dx`` (along x, columns) and ``dy`` (along y, rows).

    Example:
        >>> vote_offsets(1.0).tolist()
        [[0, 0], [0, -1], [-1, 0], [1, 0], [0, 1]]
    """
    if isinstance(radius_px, bool) or not isinstance(radius_px, (int, float, np.integer, np.floating)):
        raise ValueError(f"radius_px must be a number >= 0, got {radius_px!r}.")
    if not math.isfinite(radius_px) or radius_px < 0:
        raise ValueError(f"radius_px must be finite and >= 0, got {radius_px!r}.")
    r = int(math.floor(radius_px + 1e-9))
    offsets = [
        (dx, dy)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if dx * dx + dy * dy <= radius_px * radius_px + 1e-9
    ]
    offsets.sort(key=lambda o: (o[0] * o[0] + o[1] * o[1], o[1], o[0]))
    return torch.tensor(offsets, dtype=torch.long).reshape(-1, 2)


def fpr_vote(c1: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's decision: keep a candidate when ``sum_j C_ij1 > sum_j C_ij0`` over its vote patches.

    Computed as ``d = sum_j (C_ij1 - C_ij0)``: ``keep = d > 0`` (strict, so a tie, e.g. a candidate
    whose patches resemble no reference at all, is rejected) and ``votes = d / K``, the mean margin
    of mitosis over not-mitosis similarity. Deriving both from ``d`` makes ``keep == (votes > 0)``
    exactly, with no rounding disagreement between a sum and a mean.

    Args:
        c1: ``(N, K)`` similarity to mitosis of each of the ``K`` patches of ``N`` candidates, in [0, 1].
        c0: ``(N, K)`` similarity to not-mitosis, same shape.

    Returns:
        ``keep (N,) bool`` and ``votes (N,)`` in ``[-1, 1]`` (dtype of ``c1``).

    Raises:
        ValueError: when the shapes differ, are not 2-D, or ``K = 0``.

    Example:
        >>> keep, votes = fpr_vote(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.0, 0.5], [0.5, 0.5]]))
        >>> keep.tolist(), votes.tolist()
        ([True, False], [0.25, 0.0])
    """
    if not torch.jit.is_scripting():
        _check_vote_inputs(c1, c0)
    if c1.ndim != 2 or c1.shape != c0.shape or c1.shape[1] == 0:
        raise ValueError(
            f"c1 and c0 must have the same shape (N, K) with K >= 1, got {list(c1.shape)} and {list(c0.shape)}."
        )
    diff = (c1 - c0).sum(dim=1)
    return diff > 0, diff / c1.shape[1]


@torch.jit.unused
def _check_vote_inputs(c1: Any, c0: Any) -> None:
    if not (isinstance(c1, torch.Tensor) and isinstance(c0, torch.Tensor)) or c1.ndim != 2 or c1.shape != c0.shape:
        raise ValueError(
            f"c1 and c0 must be tensors of the same shape (N, K), got {_shape_of(c1)} and {_shape_of(c0)}."
        )
    if c1.shape[1] == 0:
        raise ValueError(f"need at least one vote patch per candidate, got shape {tuple(c1.shape)}.")


def fit_calibration(
    votes: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    l2: float = 1e-4,
    max_iter: int = 100,
) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` minimising the logistic loss of ``sigmoid(a * votes + b)`` against ``labels``.

    Minimises ``mean(softplus(z) - y z) + l2 / 2 * (a^2 + b^2)`` with ``z = a v + b`` by damped Newton
    steps (exact gradient and Hessian in float64, step halving until the objective decreases), which
    is deterministic and converges in a few steps. The tiny ``l2`` prior makes the objective strictly
    convex, so ``a`` stays finite on separable data (where the unregularised optimum is at infinity)
    and when all labels are equal.

    Args:
        votes: ``(n,)`` votes of candidates (from :func:`fpr_vote`).
        labels: ``(n,)`` 1 when the candidate is a true mitosis, 0 when not (bool, int or 0./1. floats).
        l2: weight of the Gaussian prior on ``(a, b)``, > 0.
        max_iter: maximum Newton steps.

    Returns:
        ``(a, b)`` as Python floats, for :meth:`SiameseEmbedding.set_calibration`.

    Raises:
        ValueError: on empty or mismatched inputs, non-finite votes, labels not in ``{0, 1}`` or a bad knob.
    """
    v = torch.as_tensor(votes).detach().cpu().double().reshape(-1)
    y = torch.as_tensor(labels).detach().cpu().double().reshape(-1)
    if v.numel() == 0 or v.shape != y.shape:
        raise ValueError(
            f"votes and labels must be non-empty (n,) of equal length, got {tuple(v.shape)} and {tuple(y.shape)}."
        )
    if not bool(torch.isfinite(v).all()):
        raise ValueError("votes must be finite.")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"labels must be 0 or 1, got values {torch.unique(y).tolist()}.")
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2!r}.")
    _check_positive_int(max_iter=max_iter)
    x = torch.stack([v, torch.ones_like(v)], dim=1)  # (n, 2)
    theta = torch.zeros(2, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)

    def objective(t: torch.Tensor) -> torch.Tensor:
        z = x @ t
        return (F.softplus(z) - y * z).mean() + 0.5 * l2 * (t * t).sum()

    loss = objective(theta)
    for _ in range(max_iter):
        p = torch.sigmoid(x @ theta)
        grad = x.T @ (p - y) / len(v) + l2 * theta
        hess = (x.T * (p * (1 - p))) @ x / len(v) + l2 * eye
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while True:  # the prior makes the objective strictly convex: halving finds a decrease
            cand = theta - t * step
            new_loss = objective(cand)
            if new_loss <= loss or t < 1e-10:
                break
            t *= 0.5
        converged = float((theta - cand).abs().max()) < 1e-12
        theta, loss = cand, new_loss
        if converged:
            break
    return float(theta[0]), float(theta[1])

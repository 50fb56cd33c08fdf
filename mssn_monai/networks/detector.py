"""The whole MSSN detector as one ``torch.nn.Module``: FNR candidates, then the FPR vote.

:class:`MSSNDetector` is the bundle's ``network_def``. It holds the stage-1 :class:`MultiScaleFNR` and
the stage-2 :class:`SiameseEmbedding` (with its reference bank, calibration and operating threshold),
so ``models/model.pt`` is one state dict (keys ``fnr.*`` and ``fpr.*``) and ``models/model.ts`` one
TorchScript file (``torch.jit.script`` of this module, as ``python -m monai.bundle ckpt_export`` writes it).

Steps for one image (:meth:`MSSNDetector.detect`):

1. The FNR maps at stride 4, tile by tile (:meth:`MSSNDetector.stage1_maps`; weights trained at half
   resolution, ``MultiScaleFNR(input_downsample=2)``, read the image's ``2 x 2`` block means instead,
   a map at stride 8 of the field for a quarter of the convolutions): each tile of about
   ``tile_px`` x ``tile_px`` output pixels (equal tiles, :func:`balanced_step`) is read with its patch
   context (:meth:`MultiScaleFNR.forward_region`: the tiles overlap by the receptive field, mirrored
   only at the image's own borders), so the stitched map equals the map of the whole image (to float
   rounding) and memory is bounded by the tile size.
2. Candidates (:meth:`MSSNDetector.candidates`, stage 1 alone): thresholded local maxima of the
   stitched fused map at least ``min_distance_um`` apart
   (:func:`mssn_monai.ops.peaks_torch.find_peaks_torch`). Peaks are found once on the whole map, so a
   mitosis on a tile seam is reported exactly once.
3. The FPR vote: for each candidate the patches centred within ``vote_radius_px`` of it are embedded
   (``chunk_size`` patches per pass) and compared with the reference bank; the candidate is kept when
   its summed mitosis similarity beats its summed not-mitosis similarity (:func:`fpr_vote`) and its
   calibrated probability reaches the FPR's ``operating_threshold``.

Input
    ``(B, 3, H, W)`` RGB, float in ``[0, 1]`` or uint8, any ``H, W >= 1`` (the bundle's preprocessing
    loads the field and maps it onto the training stains first).

Output of :meth:`MSSNDetector.forward`
    ``(B, 1, H, W)`` float32 *detection map*: at the centre pixel of each detected mitosis its
    calibrated probability (in ``(0, 1]``), 0 everywhere else. Points are recovered exactly with
    :func:`detection_map_to_points` (``mssn_monai.transforms.DetectionMapToPointsd``); the image form
    is what MONAI Label and MONAI Deploy consume (a ``(1, H, W)`` prediction).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from mssn_monai.constants import (
    BLOCK_PX,
    CANDIDATE_THRESHOLD,
    DEFAULT_SPACING_UM,
    PEAK_SPACING_UM,
    TILE_PX,
    VOTE_RADIUS_PX,
)
from mssn_monai.networks.fnr import OUTPUT_STRIDE, MultiScaleFNR
from mssn_monai.networks.fpr import SiameseEmbedding, fpr_vote, vote_offsets
from mssn_monai.ops.intensity import hwc_to_chw_float, to_float01
from mssn_monai.ops.patches import gather_patches
from mssn_monai.ops.peaks_torch import find_peaks_torch
from mssn_monai.ops.resample import downsample_mean
from mssn_monai.ops.tissue import cell_boxes

__all__ = ["MSSNDetector", "FieldDetector", "balanced_step", "detection_map_to_points", "PLATEAU_MARGIN_CELLS"]

_MIN_SCORE = 1e-6  # a detection's value in the map is at least this, so 0 always means "nothing here"

PLATEAU_MARGIN_CELLS = 8
"""Map cells (32 px) of extra context around a block in :meth:`FieldDetector.detect_blocks`, beyond the peak
footprint, so plateaus of saturated probability across a block edge (a mitosis is 5-15 um, 5-15 cells at
0.25 um/px) are seen whole from both sides."""

WHOLE_FIELD_MAX_PX = 3072 * 3072
"""A field held in memory (a numpy array) of at most this many pixels is converted and stain-normalised
once, as a whole (float32: 113 MB at the limit), and its blocks and vote boxes are cut from that: the
overlaps between blocks' patch context and vote boxes are not normalised again. Normalisation is pixel
by pixel, so the crops are the same numbers either way. Larger fields, and lazily read ones, are
converted block by block as they are read (bounded memory)."""


def balanced_step(length: int, tile: int) -> int:
    """The side of ``round(length / tile)`` (at least one) equal parts covering ``length``: the step that tiles
    ``length`` cells into tiles of about ``tile``, each at most 1.5 ``tile`` (TorchScript-able).

    Example:
        >>> balanced_step(521, 256), balanced_step(512, 256), balanced_step(100, 256)
        (261, 256, 100)
    """
    parts = max(1, (2 * length + tile) // (2 * tile))  # round half up
    return (length + parts - 1) // parts


def _check_image(image: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``image`` is ``(3, H, W)`` with ``H, W >= 1``."""
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image must be (3, H, W) RGB with H, W >= 1, got {list(image.shape)}.")


class MSSNDetector(nn.Module):
    """Both MSSN stages in one module (TorchScript-able): image in, detections out.

    Args:
        fnr: the stage-1 network.
        fpr: the stage-2 embedding with its reference bank, calibration and operating threshold set.
        spacing_um: pixel spacing of the input in um/px, used by :meth:`forward` (converts
            ``min_distance_um``); :meth:`detect` takes it per call.
        candidate_threshold: minimum fused FNR probability of a candidate, in ``[0, 1]``.
        min_distance_um: minimum distance between two candidates, in micrometres.
        vote_radius_px: radius of the FPR vote's patch centres, in pixels (2 px: 13 patches).
        tile_px: FNR tile size in the pixels stage 1 reads (rounded down to a multiple of 4; at half
            resolution a tile spans twice as many pixels of the field); bounds memory.
        progress: show a progress bar over the FNR tiles of an image that needs more than one (eager
            mode only; TorchScript skips it).
        operating_threshold: minimum calibrated probability of a detection; ``None`` uses the one stored
            with the FPR weights (chosen on validation fields); 0 reports every candidate the vote keeps
            (the bundle's ``evaluate.json`` does, to draw the whole precision-recall curve).

    Raises:
        ValueError: on a non-positive spacing or tile, a threshold outside ``[0, 1]`` or a negative distance.

    Example:
        >>> det = MSSNDetector(MultiScaleFNR(), fpr_with_references).eval()
        >>> det(torch.rand(1, 3, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
    """

    def __init__(
        self,
        fnr: MultiScaleFNR,
        fpr: SiameseEmbedding,
        spacing_um: float = DEFAULT_SPACING_UM,
        candidate_threshold: float = CANDIDATE_THRESHOLD,
        min_distance_um: float = PEAK_SPACING_UM,
        vote_radius_px: float = VOTE_RADIUS_PX,
        tile_px: int = TILE_PX,
        operating_threshold: float | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if not (math.isfinite(spacing_um) and spacing_um > 0):
            raise ValueError(f"spacing_um must be > 0 um/px, got {spacing_um!r}.")
        if not 0.0 <= candidate_threshold <= 1.0:
            raise ValueError(f"candidate_threshold must be in [0, 1], got {candidate_threshold!r}.")
        if not (math.isfinite(min_distance_um) and min_distance_um >= 0):
            raise ValueError(f"min_distance_um must be >= 0, got {min_distance_um!r}.")
        if isinstance(tile_px, bool) or not isinstance(tile_px, int) or tile_px < OUTPUT_STRIDE:
            raise ValueError(f"tile_px must be an int >= {OUTPUT_STRIDE}, got {tile_px!r}.")
        if operating_threshold is not None and not 0.0 <= operating_threshold <= 1.0:
            raise ValueError(f"operating_threshold must be in [0, 1] or None, got {operating_threshold!r}.")
        self.fnr = fnr
        self.threshold_override = -1.0 if operating_threshold is None else float(operating_threshold)
        self.fpr = fpr
        self.spacing_um = float(spacing_um)
        self.candidate_threshold = float(candidate_threshold)
        self.min_distance_um = float(min_distance_um)
        self.vote_radius_px = float(vote_radius_px)
        self.tile_cells = int(tile_px) // OUTPUT_STRIDE
        self.min_score = _MIN_SCORE
        self.patch_size = int(fpr.patch_size)
        self.chunk_size = int(fpr.chunk_size)
        self.register_buffer("offsets", vote_offsets(vote_radius_px), persistent=False)
        self.progress = bool(progress)
        self._bar = None  # the tile progress bar while one is open (Python only)

    __jit_ignored_attributes__ = ["_bar"]

    @torch.jit.unused
    def _tile_done(self, total: int) -> None:
        """Advance the tile progress bar (opened at the first of ``total`` tiles, closed after the last)."""
        if not self.progress or total < 2:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="tiles", unit="tile", leave=False)
        self._bar.update(1)
        if self._bar.n >= total:
            self._bar.close()
            self._bar = None

    @torch.jit.unused
    def settings(self) -> dict[str, float]:
        """The detector's thresholds and distances in force (recorded in each image's JSON summary)."""
        return {
            "spacing_um": self.spacing_um,
            "candidate_threshold": self.candidate_threshold,
            "min_distance_um": self.min_distance_um,
            "vote_radius_px": self.vote_radius_px,
            "operating_threshold": self.operating_threshold(),
        }

    @property
    def stage1_downsample(self) -> int:
        """The reduction stage 1 runs at (1: full resolution), the one its weights were trained for
        (:class:`~mssn_monai.networks.fnr.MultiScaleFNR`'s ``input_downsample`` buffer)."""
        return int(self.fnr.input_downsample)

    @property
    def output_stride(self) -> int:
        """Input pixels between two cells of the stage-1 maps: 4 times :attr:`stage1_downsample`."""
        return self.fnr.output_stride * int(self.fnr.input_downsample)

    @property
    def stage1_half_extent(self) -> tuple[int, int]:
        """``(qy, qx)``: the patch context of a stage-1 cell in input pixels (the network's, times the reduction)."""
        f = int(self.fnr.input_downsample)
        return self.fnr.half_extent[0] * f, self.fnr.half_extent[1] * f

    def operating_threshold(self) -> float:
        """The minimum calibrated probability of a detection in force (the override, else the stored one)."""
        if self.threshold_override >= 0:
            return self.threshold_override
        return float(self.fpr.operating_threshold)

    @torch.jit.export
    def stage1_maps(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 1: every FNR probability map of one image (each sub-model's and the fused one), tile by tile.

        Args:
            image: ``(3, H, W)`` float RGB in ``[0, 1]`` or uint8.

        Returns:
            ``{name: (ceil(H / s), ceil(W / s)) float32}`` with ``s`` = :attr:`output_stride` (4, or 8 for
            weights trained at half resolution); cell ``[i, j]`` scores the patch centred at pixel
            ``(x, y) = (s j, s i)`` (at half resolution: the patch of the reduced image centred on the
            ``2 x 2`` block whose top-left pixel that is). ``"fused"`` is the per-cell maximum over the
            sub-models.
        """
        h, w = int(image.shape[-2]), int(image.shape[-1])
        n_rows = (h + self.output_stride - 1) // self.output_stride
        n_cols = (w + self.output_stride - 1) // self.output_stride
        return self.stage1_region(image, 0, n_rows, 0, n_cols)

    @torch.jit.export
    def stage1_region(self, image: torch.Tensor, row0: int, rows: int, col0: int, cols: int) -> dict[str, torch.Tensor]:
        """Cells ``[row0, row0 + rows) x [col0, col0 + cols)`` of :meth:`stage1_maps`, tile by tile.

        The region is split into equal tiles of about ``tile_px / 4`` cells on a side
        (:func:`balanced_step`: ``round(rows / tile)`` tiles per axis, each at most 1.5 tiles), so no
        thin strip is left at its edge to be computed with a whole tile's patch context. Each cell sees
        the same pixels whichever tile computes it: the stitched maps equal the whole-image maps to the
        float rounding of the convolutions.

        Args:
            image: ``(3, H, W)`` float RGB in ``[0, 1]`` or uint8.
            row0, rows, col0, cols: the cells wanted (map coordinates, stride :attr:`output_stride`),
                inside the image's map. At half resolution the image is reduced first
                (:meth:`stage1_input`), so a window must start on an even pixel to give the whole image's
                cells (:class:`FieldDetector`'s windows start on multiples of the stride).

        Returns:
            ``{name: (rows, cols) float32}``, the same names as :meth:`stage1_maps`.
        """
        source = self.stage1_input(image)
        maps: dict[str, torch.Tensor] = {}
        step_r, step_c = balanced_step(rows, self.tile_cells), balanced_step(cols, self.tile_cells)
        n_tiles = ((rows + step_r - 1) // step_r) * ((cols + step_c - 1) // step_c)
        for r0 in range(0, rows, step_r):
            for c0 in range(0, cols, step_c):
                nr, nc = min(step_r, rows - r0), min(step_c, cols - c0)
                for name, m in self.fnr.forward_region(source, row0 + r0, nr, col0 + c0, nc).items():
                    if name not in maps:
                        maps[name] = torch.zeros((rows, cols), dtype=torch.float32, device=image.device)
                    maps[name][r0 : r0 + nr, c0 : c0 + nc] = m[0, 0].float()
                if not torch.jit.is_scripting():
                    self._tile_done(n_tiles)
        return maps

    @torch.jit.export
    def stage1_input(self, image: torch.Tensor) -> torch.Tensor:
        """What stage 1 reads of ``image``: ``(1, 3, H, W)``, or the mean of each ``f x f`` block,
        ``(1, 3, ceil(H / f), ceil(W / f))`` float, for weights trained at a reduction ``f > 1``
        (:func:`~mssn_monai.ops.resample.downsample_mean`).

        Args:
            image: ``(3, H, W)`` float RGB in ``[0, 1]`` or uint8.
        """
        f = int(self.fnr.input_downsample)
        if f == 1:
            return image.unsqueeze(0)
        return downsample_mean(image.unsqueeze(0), f)

    @torch.jit.export
    def peaks(self, prob_map: torch.Tensor, spacing_um: float) -> torch.Tensor:
        """Candidates of one stage-1 map: local maxima at or above the candidate threshold, ``min_distance_um`` apart.

        Args:
            prob_map: ``(h, w)`` map at stride :attr:`output_stride` (one of :meth:`stage1_maps`).
            spacing_um: pixel spacing of the image in um/px.

        Returns:
            ``(N, 3)`` rows ``x, y, probability`` in input pixels (the map's float dtype), by descending
            probability.
        """
        if not spacing_um > 0:
            raise ValueError(f"spacing_um must be > 0 um/px, got {spacing_um}.")
        min_distance_px = self.min_distance_um / spacing_um
        return find_peaks_torch(prob_map, self.candidate_threshold, min_distance_px, self.output_stride)

    @torch.jit.export
    def candidates(self, image: torch.Tensor, spacing_um: float) -> torch.Tensor:
        """Stage 1 alone: the candidates of one image (peaks of the fused map).

        What the hard-negative miner, the ``candidates`` command and the reports use; :meth:`detect`
        starts from the same call.

        Args:
            image: ``(3, H, W)`` float RGB in ``[0, 1]`` or uint8, any ``H, W >= 1``.
            spacing_um: its pixel spacing in um/px.

        Returns:
            ``(N, 3)`` rows ``x, y, fused FNR probability`` (float32; :class:`FieldDetector` gives
            float64), by descending probability.
        """
        _check_image(image)
        return self.peaks(self.stage1_maps(image)[self.fnr.fused_key], spacing_um)

    @torch.jit.export
    def vote_centres(self, candidates: torch.Tensor) -> torch.Tensor:
        """Centres of the vote's patches: each candidate rounded to the nearest pixel, plus every offset
        within ``vote_radius_px`` (:func:`~mssn_monai.networks.fpr.vote_offsets`).

        Args:
            candidates: ``(N, 2+)`` rows starting ``x, y`` in pixels.

        Returns:
            ``(N * K, 2)`` int64 ``x, y``, the ``K`` patches of each candidate together.
        """
        centres = torch.floor(candidates[:, :2].double() + 0.5).long()
        return (centres.unsqueeze(1) + self.offsets.unsqueeze(0)).reshape(-1, 2)

    @torch.jit.export
    def vote(self, image: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 2: the FPR vote of every candidate, ``chunk_size`` patches per forward pass.

        Args:
            image: ``(3, H, W)`` float RGB in ``[0, 1]`` or uint8.
            candidates: ``(N, 2+)`` rows starting ``x, y`` in pixels (rounded to the nearest pixel).

        Returns:
            ``voted (N,) bool`` (the paper's vote), ``votes (N,)`` in ``[-1, 1]`` (mean ``C1 - C0``)
            and ``probability (N,)`` (``SiameseEmbedding.calibrated_score`` of the votes). An FPR
            without references (untrained) keeps nothing: votes 0, ``voted`` all false.
        """
        n, k = int(candidates.shape[0]), int(self.offsets.shape[0])
        if n == 0 or self.fpr.references.shape[0] == 0:  # nothing to vote on, or an untrained FPR: keep nothing
            votes = torch.zeros(n, dtype=self.fpr.calibration.dtype, device=image.device)
            return votes > 0, votes, self.fpr.calibrated_score(votes)
        centres = self.vote_centres(candidates)  # (N * K, 2)
        per_chunk = max(self.chunk_size // k, 1) * k  # whole candidates per chunk
        c1_parts: list[torch.Tensor] = []
        c0_parts: list[torch.Tensor] = []
        for start in range(0, n * k, per_chunk):
            patches = to_float01(gather_patches(image, centres[start : start + per_chunk], self.patch_size))
            c1, c0 = self.fpr.mitosis_similarity(self.fpr(patches))
            c1_parts.append(c1)
            c0_parts.append(c0)
        voted, votes = fpr_vote(torch.cat(c1_parts).reshape(n, k), torch.cat(c0_parts).reshape(n, k))
        return voted, votes, self.fpr.calibrated_score(votes)

    @torch.jit.export
    def detect(self, image: torch.Tensor, spacing_um: float) -> dict[str, torch.Tensor]:
        """Both stages on one image.

        Args:
            image: ``(3, H, W)`` float RGB in ``[0, 1]`` or uint8, any ``H, W >= 1``.
            spacing_um: its pixel spacing in um/px.

        Returns:
            ``{"candidates": (N, 3) x, y, fused FNR probability, "votes": (N,), "probability": (N,),
            "voted": (N,) bool, "keep": (N,) bool, "detections": (M, 3) x, y, probability}`` in input
            pixels, candidates by descending FNR probability; ``detections`` are the kept candidates.
        """
        candidates = self.candidates(image, spacing_um)
        voted, votes, probability = self.vote(image, candidates)
        return self.decide(candidates, voted, votes, probability)

    @torch.jit.export
    def decide(
        self, candidates: torch.Tensor, voted: torch.Tensor, votes: torch.Tensor, probability: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The last step of :meth:`detect`: keep the voted candidates whose probability reaches the operating threshold.

        Args:
            candidates: ``(N, 3)`` from :meth:`candidates`.
            voted, votes, probability: ``(N,)`` each, from :meth:`vote` on those candidates.

        Returns:
            :meth:`detect`'s dictionary.
        """
        keep = voted & (probability >= self.operating_threshold())
        detections = torch.cat([candidates[keep][:, :2], probability[keep].unsqueeze(1).to(candidates.dtype)], dim=1)
        # the DetectionKeys values, spelled out: TorchScript reads neither class attributes nor global strings
        return {
            "candidates": candidates,
            "votes": votes,
            "probability": probability,
            "voted": voted,
            "keep": keep,
            "detections": detections,
        }

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Detection maps of a batch of images (spacing :attr:`spacing_um`).

        Args:
            image: ``(B, 3, H, W)`` float RGB in ``[0, 1]`` or uint8.

        Returns:
            ``(B, 1, H, W)`` float32: each detected mitosis's calibrated probability (at least 1e-6) at
            its centre pixel, 0 elsewhere.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB, got {list(image.shape)}.")
        b, h, w = int(image.shape[0]), int(image.shape[2]), int(image.shape[3])
        out = torch.zeros((b, 1, h, w), dtype=torch.float32, device=image.device)
        for i in range(b):
            det = self.detect(image[i], self.spacing_um)["detections"]
            xs, ys = det[:, 0].long(), det[:, 1].long()
            out[i, 0, ys, xs] = det[:, 2].float().clamp(min=self.min_score)
        return out


def detection_map_to_points(detection_map: torch.Tensor) -> torch.Tensor:
    """Detections ``(N, 3)`` of ``x, y, probability`` from one ``(1, H, W)`` or ``(H, W)`` detection map.

    The inverse of :meth:`MSSNDetector.forward` for one image: every non-zero pixel is a detection.
    Rows are sorted by descending probability, ties in raster order (row, then column).

    Args:
        detection_map: ``(H, W)`` or ``(1, H, W)`` tensor.

    Returns:
        ``(N, 3)`` float64 ``x, y, probability`` in pixels, on the map's device.
    """
    m = (
        detection_map.reshape(detection_map.shape[-2], detection_map.shape[-1])
        if detection_map.ndim == 3
        else detection_map
    )
    if m.ndim != 2:
        raise ValueError(f"detection_map must be (H, W) or (1, H, W), got {list(detection_map.shape)}.")
    ys, xs = torch.nonzero(m, as_tuple=True)
    scores = m[ys, xs].double()
    order = torch.sort(-scores, stable=True).indices
    return torch.stack([xs[order].double(), ys[order].double(), scores[order]], dim=1)


class FieldDetector:
    """The numpy face of :class:`MSSNDetector`: ``(H, W, 3)`` uint8 fields in, numpy results out, memory bounded.

    Applies the same steps, in the same order, as the bundle's ``inference.json``: ``uint8 / 255``, the
    stain normaliser (when given), then the detector. The CLI (``detect``, ``candidates``, ``demo``),
    the hard-negative miner and :class:`~mssn_monai.handlers.FitOperatingPoint` all call this one
    object, so training measures the code users run.

    A field is streamed in blocks of about ``block_px`` x ``block_px`` pixels (equal blocks,
    :func:`balanced_step`; :meth:`detect_blocks` keeps a fixed grid of ``block_px`` for slides): the field
    stays uint8, and only one block, with its patch context, is ever converted to float and stain-normalised
    (a field in memory of at most :data:`WHOLE_FIELD_MAX_PX` is converted once). Stage 1 stitches the fused
    map block by block; candidates are found once on the whole map (a mitosis on a block seam is reported
    once); the vote reads each candidate's block again. A field of one block is processed exactly as
    :meth:`MSSNDetector.detect` on the whole field; on a larger one the maps and the votes differ only by
    float rounding. A :class:`~mssn_monai.transforms.NormalizeHEStain` normaliser is fitted once per field
    (on a regular subsample, :meth:`~mssn_monai.transforms.NormalizeHEStain.fit_field`) and applied
    block by block; any other normaliser is applied to the whole field first.

    Args:
        detector: the two-stage detector (its weights loaded); put in eval mode here.
        normalizer: stain normaliser ``(3, H, W) float [0, 1] -> (3, H, W)`` applied first, or ``None``.
        block_px: block side in pixels; a multiple of the detector's tile (``tile_px``); default
            :data:`~mssn_monai.constants.BLOCK_PX` rounded down to a multiple of the tile (at least one tile).
        stage1_bf16: run stage 1's convolutions in bfloat16 (``torch.autocast``): about twice as fast on
            CPUs with AVX512-BF16 or AMX and on recent GPUs, slower where bfloat16 is emulated. The map
            moves by about 1e-3 in probability on average (up to 0.05 at a cell); stage 2 stays float32.
            Off by default.
        int8: an int8 calibration of both stages (``{"stage1": ..., "stage2": ...}``, a bundle's
            ``models/int8_calibration.json``, :func:`~mssn_monai.networks.quantized.calibrate_fnr` and
            :func:`~mssn_monai.networks.quantized.calibrate_fpr`) to run both stages' convolutions in
            8-bit integers (:mod:`mssn_monai.networks.quantized`; CPU only, fastest with VNNI), or
            ``None`` (float32). The stage-1 map moves by about 1e-3 in probability on average (up to
            0.05 at a cell), the embeddings by about 1e-4 in cosine. Off by default; not with
            ``stage1_bf16``.

    Example:
        >>> fields = FieldDetector(detector, normalizer)
        >>> fields(image, spacing_um=0.25)["detections"]  # (M, 3) x, y, probability
    """

    def __init__(
        self,
        detector: MSSNDetector,
        normalizer: Any = None,
        block_px: int | None = None,
        stage1_bf16: bool = False,
        int8: Mapping[str, Any] | None = None,
    ) -> None:
        tile_px = detector.tile_cells * detector.output_stride
        block_px = max(BLOCK_PX // tile_px, 1) * tile_px if block_px is None else block_px
        if isinstance(block_px, bool) or not isinstance(block_px, int) or block_px < tile_px or block_px % tile_px:
            raise ValueError(f"block_px must be a multiple of the detector's tile ({tile_px} px), got {block_px!r}.")
        self.detector = detector
        self.normalizer = normalizer
        self.block_px = block_px
        self.stage1_bf16 = bool(stage1_bf16)
        self._int8: dict[str, nn.Module] = {}
        if int8 is not None:
            if self.stage1_bf16:
                raise ValueError("int8 and stage1_bf16 exclude each other; choose one.")
            if self._device.type != "cpu":
                raise ValueError(f"int8 runs on CPU only; the detector is on {self._device}.")
            from mssn_monai.networks.quantized import quantize_fnr, quantize_fpr

            missing = [key for key in ("stage1", "stage2") if not isinstance(int8.get(key), Mapping)]
            if missing:
                raise ValueError(f"the int8 calibration has no {' or '.join(missing)} entry; re-run `quantize`.")
            self._int8 = {
                "fnr": quantize_fnr(detector.fnr, int8["stage1"]),
                "fpr": quantize_fpr(detector.fpr, int8["stage2"]),
            }

    @property
    def int8(self) -> bool:
        """Whether both stages' convolutions run in 8-bit integers."""
        return bool(self._int8)

    def _runner(self) -> MSSNDetector:
        """The detector whose stages run: :attr:`detector`, or with ``int8`` a shallow copy of it sharing its
        settings and every module but ``fnr`` and ``fpr``, which are their int8 twins."""
        if not self._int8:
            return self.detector
        clone = copy.copy(self.detector)
        clone._modules = {**self.detector._modules, **self._int8}
        return clone

    @property
    def settings(self) -> dict[str, float | bool]:
        """The thresholds in force, as recorded in each image's JSON summary."""
        return {
            **self.detector.settings(),
            "stain_normalization": self.normalizer is not None,
            "stage1_bf16": self.stage1_bf16,
            "int8": self.int8,
        }

    @property
    def _device(self) -> torch.device:
        return next(self.detector.parameters()).device

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 -> the ``(3, H, W)`` float tensor the detector sees (normalised, on its device).

        The whole field at once: for small fields (adaptation, reports); detection streams blocks instead.
        """
        field = hwc_to_chw_float(image)
        if self.normalizer is not None:
            field = torch.as_tensor(self.normalizer(field))
        return field.to(self._device)

    def reader(
        self, image: np.ndarray, fit_on: np.ndarray | None = None
    ) -> Callable[[int, int, int, int], torch.Tensor]:
        """``crop(y0, y1, x0, x1)``: that window of ``image`` as the detector sees it, converted on demand.

        The stain statistics are fitted on ``fit_on`` (a sample of the field, e.g. tissue tiles of a
        slide) when given, else on the field's regular subsample. A field in memory of at most
        :data:`WHOLE_FIELD_MAX_PX` is converted once and cut; a larger or lazily read one window by window.
        """
        if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image must be (H, W, 3) RGB with H, W >= 1, got shape {tuple(image.shape)}.")
        norm, device = self.normalizer, self._device
        whole = isinstance(image, np.ndarray) and image.shape[0] * image.shape[1] <= WHOLE_FIELD_MAX_PX
        fitted = None
        if norm is not None and not (hasattr(norm, "fit_field") and hasattr(norm, "apply")):
            whole, convert = True, lambda x: torch.as_tensor(norm(x))  # an opaque normaliser: the whole field
        elif norm is None or (fitted := norm.fit_field(image if fit_on is None else fit_on)) is None:
            convert = None  # no normaliser, or its fallback: the field unchanged
        else:
            convert = lambda x: torch.as_tensor(norm.apply(x, fitted))  # noqa: E731 - pixel by pixel
        lookup = getattr(norm, "apply_uint8", None) if fitted is not None else None

        def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            pixels = np.asarray(image[y0:y1, x0:x1])
            if lookup is not None and pixels.dtype == np.uint8:  # the same numbers as convert, by lookup
                return lookup(pixels, fitted).to(device)
            x = hwc_to_chw_float(pixels)
            return (x if convert is None else convert(x)).to(device)

        if not whole:
            return read
        field = read(0, int(image.shape[0]), 0, int(image.shape[1]))
        return lambda y0, y1, x0, x1: field[:, y0:y1, x0:x1]

    def _blocks(self, n_rows: int, n_cols: int) -> list[tuple[int, int, int, int]]:
        """The blocks ``(row0, rows, col0, cols)`` in map cells, in raster order: equal parts of about
        :attr:`block_px` (:func:`balanced_step`; a field is not cut into a block and a thin strip)."""
        bc = self.block_px // self.detector.output_stride
        br, bk = balanced_step(n_rows, bc), balanced_step(n_cols, bc)
        return [
            (r0, min(br, n_rows - r0), c0, min(bk, n_cols - c0))
            for r0 in range(0, n_rows, br)
            for c0 in range(0, n_cols, bk)
        ]

    def _progress(self, total: int, desc: str) -> Any:
        if not self.detector.progress or total < 2:
            return contextlib.nullcontext(None)
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="block", leave=False)

    def _stage1_cells(self, crop: Callable, h: int, w: int, r0: int, rows: int, c0: int, cols: int) -> torch.Tensor:
        """The fused stage-1 map's cells ``[r0, r0 + rows) x [c0, c0 + cols)``, read with their patch context."""
        det, s = self.detector, self.detector.output_stride
        qy, qx = det.stage1_half_extent
        hy, hx = -(-qy // s) * s, -(-qx // s) * s  # patch context, rounded up to the stride grid
        y0, x0 = max(0, s * r0 - hy), max(0, s * c0 - hx)
        y1, x1 = min(h, s * (r0 + rows - 1) + qy + 1), min(w, s * (c0 + cols - 1) + qx + 1)
        window = crop(y0, y1, x0, x1)
        with torch.autocast(window.device.type, dtype=torch.bfloat16, enabled=self.stage1_bf16):
            maps = self._runner().stage1_region(window, r0 - y0 // s, rows, c0 - x0 // s, cols)
        return maps[det.fnr.fused_key]

    def _vote_box(
        self, crop: Callable, h: int, w: int, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`MSSNDetector.vote` of ``candidates`` (field pixels), reading only their bounding box and the
        vote's patch context around it (nothing when there are none): inside the window stage 1 read for
        them, so a cached window is cut, not read again."""
        det = self._runner()
        if candidates.shape[0] == 0:
            return det.vote(torch.zeros(3, 1, 1, device=candidates.device), candidates)
        halo = det.patch_size // 2 + int(math.ceil(det.vote_radius_px)) + 1
        centres = torch.floor(candidates[:, :2].double() + 0.5).long()  # rounded as the vote rounds them
        y0, x0 = max(0, int(centres[:, 1].min()) - halo), max(0, int(centres[:, 0].min()) - halo)
        y1, x1 = min(h, int(centres[:, 1].max()) + 1 + halo), min(w, int(centres[:, 0].max()) + 1 + halo)
        local = candidates.clone()
        local[:, 0] -= x0
        local[:, 1] -= y0
        return det.vote(crop(y0, y1, x0, x1), local)

    def _masked_cells(
        self, crop: Callable, h: int, w: int, area: tuple[int, int, int, int], cells: Callable
    ) -> torch.Tensor:
        """The fused map's cells ``area = (r0, r1, c0, c1)`` times ``cells``' mask of them, computing stage 1
        only over boxes around the groups of allowed cells (:func:`~mssn_monai.ops.tissue.cell_boxes`: the
        glass between tissue islands is skipped; nothing is read when no cell is allowed)."""
        r0, r1, c0, c1 = area
        allowed = np.array(cells(r0, r1, c0, c1), dtype=bool)  # a copy: the caller's may be read-only
        if allowed.shape != (r1 - r0, c1 - c0):
            raise ValueError(
                f"cells({r0}, {r1}, {c0}, {c1}) must be a ({r1 - r0}, {c1 - c0}) mask, got {tuple(allowed.shape)}"
            )
        s = self.detector.output_stride
        context = -(-max(self.detector.stage1_half_extent) // s)  # the patch context, in cells
        fused = torch.zeros(allowed.shape, dtype=torch.float32, device=self._device)
        for br0, br1, bc0, bc1 in cell_boxes(allowed, context=context):
            fused[br0:br1, bc0:bc1] = self._stage1_cells(crop, h, w, r0 + br0, br1 - br0, c0 + bc0, bc1 - bc0)
        return fused * torch.as_tensor(allowed, device=self._device)

    def _fused_map(self, crop: Callable, h: int, w: int) -> torch.Tensor:
        s = self.detector.output_stride
        n_rows, n_cols = -(-h // s), -(-w // s)
        fused = torch.zeros((n_rows, n_cols), dtype=torch.float32, device=self._device)
        blocks = self._blocks(n_rows, n_cols)
        with self._progress(len(blocks), "stage 1") as bar:
            for r0, rows, c0, cols in blocks:
                fused[r0 : r0 + rows, c0 : c0 + cols] = self._stage1_cells(crop, h, w, r0, rows, c0, cols)
                if bar is not None:
                    bar.update(1)
        return fused

    def _vote(self, crop: Callable, h: int, w: int, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        det, s = self._runner(), self.detector.output_stride
        n = int(candidates.shape[0])
        centres = torch.floor(candidates[:, :2].double() + 0.5).long()
        blocks = self._blocks(-(-h // s), -(-w // s))
        if len(blocks) == 1:  # the whole field: MSSNDetector.vote as detect calls it
            return det.vote(crop(0, h, 0, w), candidates)
        voted = torch.zeros(n, dtype=torch.bool, device=candidates.device)
        votes = torch.zeros(n, dtype=det.fpr.calibration.dtype, device=candidates.device)
        probability = det.fpr.calibrated_score(votes)
        for r0, rows, c0, cols in blocks:
            by0, bx0 = s * r0, s * c0
            by1, bx1 = by0 + s * rows, bx0 + s * cols
            inside = (centres[:, 1] >= by0) & (centres[:, 1] < by1) & (centres[:, 0] >= bx0) & (centres[:, 0] < bx1)
            idx = torch.nonzero(inside).flatten()
            if idx.numel() == 0:
                continue
            v, vs, p = self._vote_box(crop, h, w, candidates[idx])
            voted[idx], votes[idx], probability[idx] = v, vs.to(votes.dtype), p.to(probability.dtype)
        return voted, votes, probability

    def peak_margin_cells(self, spacing_um: float) -> int:
        """Map cells of context around a block for its peaks to be those of the whole map.

        A cell is a peak when it is the maximum over a disk of ``r = ceil(min_distance / s) - 1`` cells
        (``s`` the stride; :func:`~mssn_monai.ops.peaks_torch.find_peaks_torch`), so ``r`` cells of context
        decide every peak of the block; :data:`PLATEAU_MARGIN_CELLS` more let a plateau of equal values
        (saturated probabilities) that crosses the block's edge be seen whole from both sides.
        """
        min_distance_px = self.detector.min_distance_um / float(spacing_um)
        r = max(int(math.ceil(min_distance_px / self.detector.output_stride)) - 1, 0)
        return r + PLATEAU_MARGIN_CELLS

    def block_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of the block grid of an ``height x width`` field (blocks of :attr:`block_px`)."""
        return -(-int(height) // self.block_px), -(-int(width) // self.block_px)

    def detect_blocks(
        self,
        image: np.ndarray,
        spacing_um: float,
        blocks: Iterable[tuple[int, int]] | None = None,
        fit_on: np.ndarray | None = None,
        cells: Callable[[int, int, int, int], np.ndarray] | None = None,
    ) -> Iterator[tuple[tuple[int, int], dict[str, np.ndarray]]]:
        """Both stages, block by block, each block on its own: memory bounded by a block, whatever the field.

        For whole slides (:mod:`mssn_monai.slide`): only the ``blocks`` asked for are computed, in any
        order, and each block's answer depends on the field alone, not on which other blocks ran, so a
        run can stop and resume between blocks. Block ``(i, j)`` covers pixels
        ``[i * block_px, (i + 1) * block_px) x [j * block_px, (j + 1) * block_px)``. Its stage-1 map is
        computed with :meth:`peak_margin_cells` cells of map around it (and the patch context of those),
        its candidates are the peaks of that map that fall in the block, and the vote reads each
        candidate's patches with their own context: a mitosis on a block seam is found by exactly one
        block, and the detections equal :meth:`__call__`'s on the whole field (the maps to float
        rounding of the convolutions, the peaks apart from equal-score ties that reach farther than the
        margin across a seam).

        Args:
            image: ``(H, W, 3)`` uint8 field or a lazy reader of one (``image[y0:y1, x0:x1]``).
            spacing_um: its pixel spacing in um/px.
            blocks: ``(i, j)`` indices of the blocks to run (default: all, in raster order).
            fit_on: ``(h, w, 3)`` uint8 sample to fit the stain statistics on (default: the field's
                regular subsample, :meth:`~mssn_monai.transforms.NormalizeHEStain.fit_field`).
            cells: where stage 1 may propose candidates (e.g. tissue of a slide): ``cells(r0, r1, c0, c1)``
                is the ``(r1 - r0, c1 - c0)`` bool mask of map cells ``[r0, r1) x [c0, c1)`` (cell ``(r, c)``
                is the patch centred at pixel ``(s c, s r)``, ``s`` = :attr:`MSSNDetector.output_stride`). The fused map
                is then the map times this
                mask: each block computes stage 1 only over boxes around its groups of allowed cells
                (:func:`~mssn_monai.ops.tissue.cell_boxes`; a block with none is not read at all), and
                its candidates are the peaks of the masked map, the same whichever blocks ran.
                ``None``: every cell.

        Yields:
            ``((i, j), result)`` per block, ``result`` as :meth:`__call__`'s (field coordinates).
        """
        det, s = self.detector, self.detector.output_stride
        h, w = int(image.shape[0]), int(image.shape[1])
        n_rows, n_cols = -(-h // s), -(-w // s)
        bc = self.block_px // s
        grid_rows, grid_cols = self.block_grid(h, w)
        todo = (
            [(i, j) for i in range(grid_rows) for j in range(grid_cols)]
            if blocks is None
            else [(int(i), int(j)) for i, j in blocks]
        )
        for i, j in todo:
            if not (0 <= i < grid_rows and 0 <= j < grid_cols):
                raise ValueError(
                    f"block {(i, j)} is outside the {grid_rows}x{grid_cols} block grid of a {w}x{h} field."
                )
        m = self.peak_margin_cells(spacing_um)
        with torch.inference_mode(), _eval(det):
            read = self.reader(image, fit_on)
            last: list[Any] = [None]  # the window stage 1 read last: (y0, y1, x0, x1, pixels)

            def crop(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
                """``read``, but a window inside the one stage 1 read last is cut from it (the vote box of
                the same block: not read and normalised again; the same numbers)."""
                if last[0] is not None:
                    wy0, wy1, wx0, wx1, pixels = last[0]
                    if wy0 <= y0 and y1 <= wy1 and wx0 <= x0 and x1 <= wx1:
                        return pixels[:, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
                pixels = read(y0, y1, x0, x1)
                last[0] = (y0, y1, x0, x1, pixels)
                return pixels

            for i, j in todo:
                r0, c0 = i * bc, j * bc
                rows, cols = min(bc, n_rows - r0), min(bc, n_cols - c0)
                er0, ec0 = max(0, r0 - m), max(0, c0 - m)
                er1, ec1 = min(n_rows, r0 + rows + m), min(n_cols, c0 + cols + m)
                if cells is None:
                    fused = self._stage1_cells(crop, h, w, er0, er1 - er0, ec0, ec1 - ec0)
                else:
                    fused = self._masked_cells(crop, h, w, (er0, er1, ec0, ec1), cells)
                peaks = det.peaks(fused, float(spacing_um)).double()
                pr = torch.round(peaks[:, 1] / s).long() + er0
                pc = torch.round(peaks[:, 0] / s).long() + ec0
                inside = (pr >= r0) & (pr < r0 + rows) & (pc >= c0) & (pc < c0 + cols)
                candidates = peaks[inside]
                candidates[:, 0] += s * ec0
                candidates[:, 1] += s * er0
                voted, votes, probability = self._vote_box(crop, h, w, candidates)
                out = det.decide(candidates, voted, votes, probability)
                yield (
                    (i, j),
                    {k: v.cpu().numpy().astype(np.float64 if v.is_floating_point() else bool) for k, v in out.items()},
                )

    def fused_map(self, image: np.ndarray) -> torch.Tensor:
        """The fused stage-1 map of one field, ``(ceil(H / s), ceil(W / s))`` float32 on the detector's device
        (``s`` = :attr:`MSSNDetector.output_stride`)."""
        with torch.inference_mode(), _eval(self.detector):
            return self._fused_map(self.reader(image), image.shape[0], image.shape[1])

    def candidates(self, image: np.ndarray, spacing_um: float) -> np.ndarray:
        """Stage-1 candidates of one field: ``(N, 3)`` float64 rows ``x, y, fused probability``."""
        return self.detector.peaks(self.fused_map(image), float(spacing_um)).cpu().numpy().astype(np.float64)

    def __call__(self, image: np.ndarray, spacing_um: float) -> dict[str, np.ndarray]:
        """Both stages on one field: :meth:`MSSNDetector.detect`'s keys as numpy (float64 numbers, bool masks)."""
        h, w = image.shape[0], image.shape[1]
        with torch.inference_mode(), _eval(self.detector):
            crop = self.reader(image)
            candidates = self.detector.peaks(self._fused_map(crop, h, w), float(spacing_um))
            out = self.detector.decide(candidates, *self._vote(crop, h, w, candidates))
        return {k: v.cpu().numpy().astype(np.float64 if v.is_floating_point() else bool) for k, v in out.items()}


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode and give it back in the mode it had (training code calls in mid-epoch)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)

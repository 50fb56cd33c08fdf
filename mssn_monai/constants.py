"""The detector's defaults, each stated once: configs, CLI defaults and docs read them from here.

Distances that matter clinically are in micrometres and converted once with each image's spacing
(um/px); pixel distances are named ``_PX``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_SPACING_UM",
    "APERIO_SPACING_UM",
    "MATCH_RADIUS_UM",
    "PEAK_SPACING_UM",
    "CANDIDATE_THRESHOLD",
    "VOTE_RADIUS_PX",
    "TILE_PX",
    "BLOCK_PX",
    "MAX_FIT_PIXELS",
    "MODEL_FILE",
    "TORCHSCRIPT_FILE",
    "INT8_CALIBRATION_FILE",
    "INT8_CALIBRATION_FIELDS",
]

DEFAULT_SPACING_UM: Final[float] = 0.2456
"""Pixel spacing in um/px assumed when an image gives none (40x Aperio, ICPR 2012)."""

APERIO_SPACING_UM: Final[float] = 0.2455
"""Spacing of MITOS-ATYPIA-14's Aperio x40 frames, which the synthetic generator renders at."""

MATCH_RADIUS_UM: Final[float] = 8.0
"""A detection within this distance of a mitosis matches it (the challenges' 8 um rule)."""

PEAK_SPACING_UM: Final[float] = 4.0
"""No two stage-1 candidates are closer than this (local-maximum suppression)."""

CANDIDATE_THRESHOLD: Final[float] = 0.5
"""Minimum fused stage-1 probability of a candidate."""

VOTE_RADIUS_PX: Final[float] = 2.0
"""Stage 2 votes over the patches centred within this many pixels of a candidate (the paper's 2 px)."""

TILE_PX: Final[int] = 1024
"""Stage-1 tile side in output pixels: bounds the detector's memory on large regions. 1024 since 0.10.0
(was 2048): the same maps, and a 2084x2084 field's stage 1 took 0.61-0.63 s against 0.82-0.85 s on the
2-core development machine (its activations fit the CPU's caches better)."""

BLOCK_PX: Final[int] = 2048
"""Side of the blocks ``detect`` streams a large field in and ``slide`` runs a slide in (a multiple of
:data:`TILE_PX`): a slide's stain sample is drawn from its tissue blocks' centres, so this fixes it."""

MAX_FIT_PIXELS: Final[int] = 1024 * 1024
"""Stain statistics of a larger field come from a regular subsample of at most this many pixels (bounds
memory and time). 2048 x 2048 before 0.18.0: a 2084x2084 field is now fitted on every 3rd row and column
instead of every 2nd, and a slide's 2048x2048 stain mosaic on every 2nd instead of all of it (the fit is
4x cheaper there); a 1024x1024 field, what the shipped weights trained on, is fitted on all of it as before."""

MODEL_FILE: Final[str] = "model.pt"
"""The bundle's one weight file (``models/model.pt``: both stages, the reference bank, the calibration)."""

TORCHSCRIPT_FILE: Final[str] = "model.ts"
"""``ckpt_export``'s TorchScript export of :data:`MODEL_FILE`."""

INT8_CALIBRATION_FILE: Final[str] = "int8_calibration.json"
"""A bundle's int8 calibration of both stages, beside :data:`MODEL_FILE` (``python -m mssn_monai quantize``)."""

INT8_CALIBRATION_FIELDS: Final[int] = 8
"""Fields an int8 calibration runs on: generated 1024x1024 fields of the whole family by default (``quantize``),
the new fields then the own look's in ``adapt`` (8 against 4: one false positive less on the validation fields)."""

"""``python -m mssn_monai quantize``: a bundle's int8 calibration, ``models/int8_calibration.json``.

The calibration (:func:`mssn_monai.networks.quantized.calibrate_fnr` and
:func:`~mssn_monai.networks.quantized.calibrate_fpr`) records the scale of every quantized activation
of both stages as they run on fields prepared the way detection prepares them (the bundle's stain
normalisation included): stage 1 on the whole fields, stage 2 on the vote patches of stage 1's
candidates. ``detect --int8``, ``candidates --int8``, ``slide --int8`` and the benchmark then run both
stages' convolutions in 8-bit integers at those scales. Calibrate on fields like the ones
the bundle will see: a datalist section of your lab's fields, or, by default, generated fields drawn
from the whole synthetic family (``synth --style random``). ``adapt`` writes one for the adapted
bundle on the fields it was given.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mssn_monai.constants import APERIO_SPACING_UM, INT8_CALIBRATION_FIELDS, INT8_CALIBRATION_FILE, MODEL_FILE
from mssn_monai.networks.quantized import calibrate_fnr, calibrate_fpr
from mssn_monai.ops.intensity import to_float01
from mssn_monai.ops.patches import gather_patches

__all__ = [
    "CALIBRATION_FORMAT",
    "calibration_fields",
    "write_calibration",
    "quantize_bundle",
]

logger = logging.getLogger(__name__)

CALIBRATION_FORMAT: int = 1
"""Version of ``models/int8_calibration.json``'s layout."""


def calibration_fields(n: int = INT8_CALIBRATION_FIELDS, seed: int = 0, size: int = 1024) -> Iterator[np.ndarray]:
    """``n`` generated ``(size, size, 3)`` uint8 fields, each a fresh look of the synthetic family
    (seeds ``seed + i``)."""
    from mssn_monai.data.synthetic import generate_field

    for i in range(int(n)):
        yield generate_field((size, size), seed=int(seed) + i, style="random").image


def _vote_patches(fields: Any, image: torch.Tensor, spacing_um: float) -> Iterator[torch.Tensor]:
    """The vote patches of ``image``'s float stage-1 candidates (as :meth:`MSSNDetector.vote` cuts them), in
    chunks of ``chunk_size``."""
    det = fields.detector
    candidates = det.candidates(image, spacing_um)
    if candidates.shape[0] == 0:
        return
    centres = det.vote_centres(candidates)
    for start in range(0, int(centres.shape[0]), det.chunk_size):
        yield to_float01(gather_patches(image, centres[start : start + det.chunk_size], det.patch_size))


def write_calibration(fields: Any, images: Iterable[np.ndarray], models_dir: str | os.PathLike) -> dict[str, Any]:
    """Calibrate both stages of ``fields`` (a :class:`~mssn_monai.networks.detector.FieldDetector`) on
    ``images`` (``(H, W, 3)`` uint8 fields at :data:`APERIO_SPACING_UM`-like spacing, prepared as detection
    prepares them) and write ``models_dir/int8_calibration.json`` (atomically), tied to
    ``models_dir/model.pt`` by its sha256.

    Returns:
        the calibration written: ``{"format", "stage1", "stage2", "weights_sha256"}``.
    """
    from mssn_monai.checkpoints import file_sha256
    from mssn_monai.io import write_json

    with torch.no_grad():
        prepared = [fields.prepare(image).cpu() for image in images]
        det = fields.detector.cpu().eval()
        calibration = {
            "format": CALIBRATION_FORMAT,
            "stage1": calibrate_fnr(det.fnr, (det.stage1_input(p) for p in prepared)),
            "stage2": calibrate_fpr(
                det.fpr, (p for image in prepared for p in _vote_patches(fields, image, APERIO_SPACING_UM))
            ),
        }
    calibration["weights_sha256"] = file_sha256(Path(models_dir) / MODEL_FILE)
    write_json(Path(models_dir) / INT8_CALIBRATION_FILE, calibration, indent=4)  # as the model zoo formats JSON
    return calibration


def quantize_bundle(
    bundle: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    section: str = "training",
    n_fields: int = INT8_CALIBRATION_FIELDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``BUNDLE/models/int8_calibration.json``: both stages' int8 calibration for the bundle's weights.

    Args:
        bundle: the bundle folder (default: ``checkpoints.DEFAULT_BUNDLE``).
        datalist: calibrate on the images of this datalist's ``section`` (at most ``n_fields``, spread over
            it); default: ``n_fields`` generated fields of the synthetic family.
        section: the datalist section.
        n_fields: number of fields to calibrate on (>= 1).
        seed: seed of the generated fields.

    Returns:
        ``{"path", "fields", "engine", "seconds"}``.

    Raises:
        ValueError: ``n_fields`` < 1, or an empty datalist section.
        FileNotFoundError: a missing bundle, datalist or image (nothing is written).
    """
    from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_detector
    from mssn_monai.data.datalist import load_datalist, spread
    from mssn_monai.io import read_image_rgb
    from mssn_monai.keys import DatalistKeys

    if isinstance(n_fields, bool) or int(n_fields) < 1:
        raise ValueError(f"--n-fields must be >= 1, got {n_fields!r}")
    root = Path(bundle) if bundle is not None else DEFAULT_BUNDLE
    start = time.perf_counter()
    fields = load_detector(root, "cpu")
    if datalist is not None:
        records = load_datalist(datalist, section)
        if not records:
            raise ValueError(f"{datalist}: section {section!r} has no fields")
        # all read before calibrating: a missing image writes nothing
        images = [read_image_rgb(r[DatalistKeys.IMAGE]) for r in spread(records, int(n_fields))]
    else:
        images = list(calibration_fields(int(n_fields), seed))
    calibration = write_calibration(fields, images, root / "models")
    seconds = time.perf_counter() - start
    path = root / "models" / INT8_CALIBRATION_FILE
    logger.info("int8 calibration on %d fields written to %s (%.1f s)", len(images), path, seconds)
    return {"path": str(path), "fields": len(images), "engine": calibration["stage1"]["engine"], "seconds": seconds}

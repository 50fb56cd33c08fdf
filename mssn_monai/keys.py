"""Names shared across the package: datalist record keys, patch sample keys and classes, detector result keys.

Plain strings (records stay plain JSON dictionaries); one home, so no file spells a key by hand.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["DatalistKeys", "PatchClass", "PatchKeys", "DetectionKeys", "path_key", "error_key"]


class DatalistKeys:
    """Keys of a datalist record."""

    IMAGE = "image"
    """Image file; absolute in memory, relative to the datalist's folder on disk."""
    MITOSES = "mitoses"
    """``[[x, y], ...]`` mitotic figures, (column, row) in level-0 pixels."""
    MIMICS = "mimics"
    """``[[x, y], ...]`` annotated non-mitoses (hard negatives), same convention."""
    SPACING = "spacing"
    """Pixel spacing in um/px."""
    GROUP = "group"
    """Slide or case id; the unit of the train/validation/test split."""
    DOMAIN = "domain"
    """Optional: the scanner, lab or look a field comes from; on validation fields the operating threshold
    is chosen with every domain weighing the same (:func:`mssn_monai.handlers.best_operating_threshold`)."""
    MITOSIS_CONFIDENCE = "mitosis_confidence"
    """Optional, one value per mitosis: annotators' agreement (MITOS-ATYPIA-14, 1.0 = all agreed)."""
    MIMIC_CONFIDENCE = "mimic_confidence"
    """Optional, one value per mimic, as above."""


class PatchClass(IntEnum):
    """Class of a training patch (``"class"`` of a sample; the stage-2 reference bank's classes)."""

    BACKGROUND = 0
    """Background and ordinary tissue (nuclei included), away from every mitosis."""
    MITOSIS = 1
    """A mitotic figure (``"label"`` 1)."""
    MIMIC = 2
    """A hard mimic: annotated non-mitosis or mined false positive (``"label"`` 0)."""


class PatchKeys:
    """Keys of a patch sample (``mssn_monai.data.patches.PatchSampleDataset``)."""

    IMAGE = "image"
    """``(3, S, S)`` float32 RGB in [0, 1]."""
    LABEL = "label"
    """``(1,)`` float32: 1 for a mitosis, else 0."""
    CLASS = "class"
    """``()`` int64: a :class:`PatchClass`."""
    POINT = "point"
    """``(2,)`` float32 ``(x, y)`` px: the patch's centre pixel in the image."""
    IMAGE_INDEX = "image_index"
    """``int``: index of the record the patch comes from."""
    DOMAIN = "domain"
    """``()`` int64: index of the record's ``domain`` in the dataset's ``domains`` (domain-adversarial training)."""


class DetectionKeys:
    """Keys of one image's detector result (``MSSNDetector.detect`` and its numpy wrapper)."""

    CANDIDATES = "candidates"
    """``(N, 3)`` stage-1 candidates ``x, y, fused probability``, by descending probability."""
    VOTES = "votes"
    """``(N,)`` stage-2 vote of each candidate, in ``[-1, 1]``."""
    PROBABILITY = "probability"
    """``(N,)`` calibrated probability of each candidate."""
    VOTED = "voted"
    """``(N,)`` bool: the paper's vote keeps the candidate."""
    KEEP = "keep"
    """``(N,)`` bool: voted and at or above the operating threshold."""
    DETECTIONS = "detections"
    """``(M, 3)`` kept candidates ``x, y, calibrated probability``."""
    PRED = "pred"
    """The bundle's ``(1, H, W)`` detection map (the engines' prediction key)."""
    POINTS = "points"
    """``(M, 3)`` detections recovered from the detection map."""


def path_key(key: str) -> str:
    """Where a loader keeps the file path of ``key`` (``"image"`` -> ``"image_path"``)."""
    return f"{key}_path"


def error_key(key: str) -> str:
    """Where a loader that skips unreadable files keeps why ``key`` was not read (``"image"`` -> ``"image_error"``)."""
    return f"{key}_error"

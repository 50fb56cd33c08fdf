"""MONAI-style transforms: stain and HSV jitter, JPEG artefacts, stain normalisation; loading; detection outputs.

Array transforms (:mod:`~mssn_monai.transforms.array`) do the work; dictionary transforms
(:mod:`~mssn_monai.transforms.dictionary`, suffix ``d``) wrap them for ``Compose`` chains in the bundle.
"""

from mssn_monai.transforms.array import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAINS,
    MIN_INTENSITY,
    RUIFROK_HED_FROM_RGB,
    RUIFROK_RGB_FROM_HED,
    NormalizeHEStain,
    RandHEStainJitter,
    RandHSVJitter,
    RandJPEGCompression,
    estimate_he_stains,
    od_to_rgb,
    rgb_to_od,
)
from mssn_monai.transforms.detections import (
    DetectionMapToPoints,
    DetectionMapToPointsd,
    PointsToDisks,
    PointsToDisksd,
    SaveDetectionsd,
)
from mssn_monai.transforms.dictionary import (
    NormalizeHEStaind,
    RandHEStainJitterd,
    RandHSVJitterd,
    RandJPEGCompressiond,
)
from mssn_monai.transforms.io import LoadRGB, LoadRGBd

__all__ = [
    "MACENKO_REFERENCE_MAX_CONCENTRATIONS",
    "MACENKO_REFERENCE_STAINS",
    "MIN_INTENSITY",
    "RUIFROK_HED_FROM_RGB",
    "RUIFROK_RGB_FROM_HED",
    "NormalizeHEStain",
    "NormalizeHEStaind",
    "RandHEStainJitter",
    "RandHEStainJitterd",
    "RandHSVJitter",
    "RandHSVJitterd",
    "RandJPEGCompression",
    "RandJPEGCompressiond",
    "LoadRGB",
    "LoadRGBd",
    "DetectionMapToPoints",
    "DetectionMapToPointsd",
    "PointsToDisks",
    "PointsToDisksd",
    "SaveDetectionsd",
    "estimate_he_stains",
    "od_to_rgb",
    "rgb_to_od",
]

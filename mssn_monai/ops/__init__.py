"""Pure array operations: point matching within a radius, peak finding on dense maps (numpy/scipy; torch port
of the peak finder for TorchScript), block-mean reduction."""

from mssn_monai.ops.matching import MatchingMethod, PointMatch, match_points, pairwise_distances
from mssn_monai.ops.peaks import find_peaks
from mssn_monai.ops.peaks_torch import find_peaks_torch
from mssn_monai.ops.resample import downsample_mean, from_reduced_points, to_reduced_points

__all__ = [
    "MatchingMethod",
    "PointMatch",
    "match_points",
    "pairwise_distances",
    "find_peaks",
    "find_peaks_torch",
    "downsample_mean",
    "to_reduced_points",
    "from_reduced_points",
]

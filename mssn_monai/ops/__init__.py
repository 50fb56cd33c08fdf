"""Pure array operations: point matching within a radius, peak finding on dense maps (numpy/scipy; torch port
of the peak finder for TorchScript)."""

from mssn_monai.ops.matching import MatchingMethod, PointMatch, match_points, pairwise_distances
from mssn_monai.ops.peaks import find_peaks
from mssn_monai.ops.peaks_torch import find_peaks_torch

__all__ = ["MatchingMethod", "PointMatch", "match_points", "pairwise_distances", "find_peaks", "find_peaks_torch"]

"""Pure array operations (numpy/scipy only): point matching within a radius, peak finding on dense maps."""

from mssn_monai.ops.matching import MatchingMethod, PointMatch, match_points, pairwise_distances
from mssn_monai.ops.peaks import find_peaks

__all__ = ["MatchingMethod", "PointMatch", "match_points", "pairwise_distances", "find_peaks"]

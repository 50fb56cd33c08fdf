"""Pure array operations (numpy/scipy only): point matching within a radius."""

from mssn_monai.ops.matching import MatchingMethod, PointMatch, match_points, pairwise_distances

__all__ = ["MatchingMethod", "PointMatch", "match_points", "pairwise_distances"]

"""mssn_monai: MSSN two-stage mitotic figure detection in H&E histology, as a MONAI Bundle.

Coordinates everywhere are ``(x, y)`` = (column, row) in level-0 pixels; distances that matter
clinically are in micrometres and converted once with each image's ``spacing`` (um/px).
"""

__version__ = "0.18.0"

from mssn_monai.constants import DEFAULT_SPACING_UM

__all__ = ["__version__", "DEFAULT_SPACING_UM"]

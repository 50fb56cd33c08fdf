"""Readers of the public mitosis data sets, each in its published layout, into datalist records.

Every reader has the signature ``read_<name>(root, annotations=None, spacing=None) -> list[dict]`` and
returns records ``{"image": absolute path, "mitoses": [[x, y], ...], "mimics": [[x, y], ...],
"spacing": um/px, "group": slide or case id}`` with points as ``(x, y)`` = (column, row) in level-0
pixels; each converts its data set's own convention (ICPR pixel lists, TUPAC ``row,col``, MIDOG
``[x1, y1, x2, y2]`` boxes) here. Errors name the file (and line) at fault.
"""

from __future__ import annotations

from mssn_monai.data.formats.icpr2012 import read_icpr2012
from mssn_monai.data.formats.midog import read_midog
from mssn_monai.data.formats.mitos_atypia14 import read_mitos_atypia14
from mssn_monai.data.formats.tupac16 import read_tupac16

__all__ = ["READERS", "read_icpr2012", "read_mitos_atypia14", "read_tupac16", "read_midog"]

READERS = {
    "icpr2012": read_icpr2012,
    "mitos-atypia-14": read_mitos_atypia14,
    "tupac16": read_tupac16,
    "midog": read_midog,
}
"""Format name (as given to ``prepare --format``) -> reader."""

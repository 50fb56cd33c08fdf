"""Data: dataset readers (:mod:`mssn_monai.data.formats`), the datalist and its preparation."""

from __future__ import annotations

from mssn_monai.data.datalist import load_datalist, split_by_group, write_datalist
from mssn_monai.data.formats import read_icpr2012, read_midog, read_mitos_atypia14, read_tupac16
from mssn_monai.data.prepare import FORMATS, prepare_datalist

__all__ = [
    "FORMATS",
    "load_datalist",
    "prepare_datalist",
    "read_icpr2012",
    "read_midog",
    "read_mitos_atypia14",
    "read_tupac16",
    "split_by_group",
    "write_datalist",
]

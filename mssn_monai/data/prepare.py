"""Dataset on disk -> one datalist JSON: read a published layout, split by slide/case, write atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mssn_monai.data.datalist import split_by_group, write_datalist
from mssn_monai.data.formats import READERS

__all__ = ["FORMATS", "prepare_datalist"]

logger = logging.getLogger(__name__)

FORMATS = ("icpr2012", "mitos-atypia-14", "tupac16", "midog")
"""Data set formats that :func:`prepare_datalist` reads (see :mod:`mssn_monai.data.formats`)."""


def _look_up_format(fmt: str) -> str:
    if isinstance(fmt, str) and fmt.strip().lower() in FORMATS:
        return fmt.strip().lower()
    # monai (and with it torch) is imported only to word the error, so a valid call stays light
    from monai.utils import look_up_option

    try:
        return look_up_option(fmt, FORMATS)
    except ValueError as e:
        # look_up_option's message spans lines; the CLI prints one line
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ValueError(f"unknown dataset format {fmt!r}: {detail}") from e


def prepare_datalist(
    fmt: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    spacing: float | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Read a public mitosis data set, split it by slide/case and write one datalist JSON.

    Everything is read and checked before anything is written, and the write is atomic, so on any
    error ``out`` is left as it was (absent or the previous version).

    Typical usage::

        prepare_datalist("mitos-atypia-14", "data/synth", "data/synth/datalist.json", val_fraction=0.2)

    Args:
        fmt: one of :data:`FORMATS` (case-insensitive).
        root: the data set's root folder.
        out: the datalist JSON to write; image paths in it are relative to its folder.
        annotations: MIDOG: the JSON database (default ``MIDOG++.json`` / ``MIDOG.json`` in ``root``);
            TUPAC16: folder holding ``mitoses_ground_truth`` (default ``root``); other formats: must be ``None``.
        val_fraction: fraction of slides/cases for ``validation``, in [0, 1].
        test_fraction: fraction of slides/cases for ``testing``, in [0, 1]; with ``val_fraction`` at most 1.
        seed: seed of the split.
        spacing: pixel spacing in um/px for every image (default: the data set's documented spacing).

    Returns:
        The datalist written, ``{"training": [...], "validation": [...], "testing": [...]}``, with absolute
        image paths.

    Raises:
        ValueError: unknown format (with a suggestion), bad fractions or spacing, or any reader error.
        FileNotFoundError: missing ``root`` or annotation files.
    """
    name = _look_up_format(fmt)
    # split an empty list first: bad fractions fail before a possibly long read of the data set
    split_by_group([], val_fraction, test_fraction, seed)
    records = READERS[name](root, annotations=annotations, spacing=spacing)
    datalist = split_by_group(records, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    write_datalist(datalist, out)
    logger.info(
        "%s: %d images in %d groups from %s (%s)",
        Path(out),
        len(records),
        len({r["group"] for r in records}),
        root,
        ", ".join(f"{k} {len(v)}" for k, v in datalist.items()),
    )
    return datalist

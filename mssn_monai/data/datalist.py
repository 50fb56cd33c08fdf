"""The datalist: one JSON file that every training, evaluation and inference command reads.

Layout (MONAI style, readable by :func:`monai.data.load_decathlon_datalist` too)::

    {
      "training":   [{"image": "Training Aperio/A03/frames/x40/A03_00Aa.tiff",
                      "mitoses": [[x, y], ...], "mimics": [[x, y], ...],
                      "spacing": 0.2455, "group": "Training Aperio/A03"}, ...],
      "validation": [...],
      "testing":    [...]
    }

Points are ``(x, y)`` = (column, row) in level-0 pixels (floats), ``spacing`` is in um/px, ``group`` is the
slide or case an image comes from. Image paths are written relative to the datalist's folder and read
back as absolute paths. Splits are made per group, so fields of one slide never land in two sections:
neighbouring fields share stain, scanner and patient, and splitting them would leak into the scores.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mssn_monai.io import read_json, write_json
from mssn_monai.keys import DatalistKeys

__all__ = [
    "SECTIONS",
    "check_sections",
    "split_by_group",
    "write_datalist",
    "load_datalist",
    "inference_records",
    "spread",
]

logger = logging.getLogger(__name__)


SECTIONS = ("training", "validation", "testing")
"""Datalist sections, in the order they are written."""

_RECORD_ORDER = (
    DatalistKeys.IMAGE,
    DatalistKeys.MITOSES,
    DatalistKeys.MIMICS,
    DatalistKeys.SPACING,
    DatalistKeys.GROUP,
    DatalistKeys.MITOSIS_CONFIDENCE,
    DatalistKeys.MIMIC_CONFIDENCE,
)


def _check_fraction(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from e
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return value


def _group_counts(n_groups: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Groups per section: largest-remainder rounding, then at least one group per requested section."""
    exact = {k: f * n_groups for k, f in fractions.items()}
    counts = {k: int(math.floor(v + 1e-9)) for k, v in exact.items()}
    leftover = n_groups - sum(counts.values())
    # ties go to the section listed first (training, validation, testing): stable sort
    by_remainder = sorted(fractions, key=lambda k: -(exact[k] - counts[k]))
    for k in by_remainder[:leftover]:
        counts[k] += 1
    requested = [k for k, f in fractions.items() if f > 1e-12]
    for k in requested:
        if counts[k] > 0:
            continue
        donor = max(requested, key=lambda d: counts[d])
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    starved = [k for k in requested if counts[k] == 0]
    if starved and n_groups > 0:
        logger.warning(
            "only %d group(s) to split: section(s) %s get no image although their fraction is > 0",
            n_groups,
            ", ".join(starved),
        )
    return counts


def split_by_group(
    records: Sequence[Mapping[str, Any]],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Split records into ``training`` / ``validation`` / ``testing`` so that each group stays whole.

    The fractions count groups (slides or cases), not images. The groups are sorted, shuffled with
    ``numpy.random.default_rng(seed)`` and cut: the first ones go to ``testing``, the next ones to
    ``validation``, the rest to ``training``. Group counts are rounded by largest remainder; when there are
    at least as many groups as sections with a fraction > 0, each of those sections gets one group or more.
    A record without ``group`` is its own group (its image path). Records keep their input order within a
    section and are copied, not modified.

    Args:
        records: datalist records, e.g. from a ``read_*`` function of :mod:`mssn_monai.data.formats`.
        val_fraction: fraction of groups for ``validation``, in [0, 1].
        test_fraction: fraction of groups for ``testing``, in [0, 1].
        seed: seed of the shuffle; the same records and seed give the same split.

    Returns:
        ``{"training": [...], "validation": [...], "testing": [...]}`` (all three keys, possibly empty).

    Raises:
        ValueError: a fraction outside [0, 1], or ``val_fraction + test_fraction > 1``.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction > 1.0 + 1e-9:
        raise ValueError(
            f"val_fraction + test_fraction must be <= 1, got {val_fraction:g} + {test_fraction:g} "
            f"= {val_fraction + test_fraction:g}"
        )
    train_fraction = max(0.0, 1.0 - val_fraction - test_fraction)

    def group_of(record: Mapping[str, Any]) -> str:
        return str(record.get(DatalistKeys.GROUP, record.get(DatalistKeys.IMAGE)))

    groups = sorted({group_of(r) for r in records})
    counts = _group_counts(
        len(groups), {"training": train_fraction, "validation": val_fraction, "testing": test_fraction}
    )
    order = np.random.default_rng(seed).permutation(len(groups))
    shuffled = [groups[i] for i in order]
    n_test, n_val = counts["testing"], counts["validation"]
    section_of = {g: "testing" for g in shuffled[:n_test]}
    section_of.update({g: "validation" for g in shuffled[n_test : n_test + n_val]})
    section_of.update({g: "training" for g in shuffled[n_test + n_val :]})

    split: dict[str, list[dict[str, Any]]] = {k: [] for k in SECTIONS}
    for record in records:
        split[section_of[group_of(record)]].append(dict(record))
    return split


def _portable_record(record: Mapping[str, Any], base: Path, where: str) -> dict[str, Any]:
    if DatalistKeys.IMAGE not in record:
        raise ValueError(f"{where}: record has no {DatalistKeys.IMAGE!r} key: {dict(record)!r}")
    image = Path(os.fspath(record[DatalistKeys.IMAGE]))
    if image.is_absolute():
        try:
            image = Path(os.path.relpath(image, base))
        except ValueError:  # another drive on Windows: keep the absolute path
            pass
    out: dict[str, Any] = {DatalistKeys.IMAGE: image.as_posix()}
    for key in _RECORD_ORDER[1:]:
        if key in record:
            out[key] = record[key]
    for key, value in record.items():
        if key not in out:
            out[key] = value
    return out


def write_datalist(datalist: Mapping[str, Iterable[Mapping[str, Any]]], out: str | os.PathLike) -> Path:
    """Write a datalist as JSON, with image paths relative to the file's folder, atomically.

    Records are written with their keys in the order ``image, mitoses, mimics, spacing, group`` (then any
    optional keys such as ``mitosis_confidence``); the caller's records are not modified. Relative image
    paths in the input are taken as already relative to ``out``'s folder.

    Args:
        datalist: ``{section: [record, ...]}``, e.g. from :func:`split_by_group`.
        out: the JSON file to write; its folder is created when missing.

    Returns:
        The path written.

    Raises:
        ValueError: ``datalist`` is not a mapping of lists of records with an ``image`` each
            (checked before anything is written).
    """
    out = Path(out)
    if not isinstance(datalist, Mapping):
        raise ValueError(f"{out}: a datalist must map section names to lists of records, got {type(datalist)}")
    # resolved on both sides (here and in load_datalist) so that ".." in a relative path means the same
    # folder to the OS as it does lexically, even when the datalist's folder is reached through a symlink
    base = out.expanduser().resolve().parent
    portable: dict[str, list[dict[str, Any]]] = {}
    for section, records in datalist.items():
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
            raise ValueError(f"{out}: section {section!r} must be a list of records, got {type(records)}")
        portable[str(section)] = [_portable_record(r, base, f"{out}: {section}[{i}]") for i, r in enumerate(records)]
    write_json(out, portable)
    return out


def _check_record(record: Mapping[str, Any], where: str) -> None:
    """Check the types of a record's keys; errors name ``where`` (the datalist file and record), the key,
    what was expected and what was found."""
    image = record[DatalistKeys.IMAGE]
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{where}: {DatalistKeys.IMAGE!r} must be a file path (text), got {image!r}")
    where = f"{where} ({image})"
    for key in (DatalistKeys.MITOSES, DatalistKeys.MIMICS):
        if key not in record or record[key] is None:
            continue
        points = record[key]
        if not (isinstance(points, list) and all(_is_point(p) for p in points)):
            bad = points if not isinstance(points, list) else next(p for p in points if not _is_point(p))
            raise ValueError(
                f"{where}: {key!r} must be a list of [x, y] points (finite numbers), got {_short(bad)}"
                + ("" if bad is points else f" among {len(points)} points")
            )
    if DatalistKeys.SPACING in record and record[DatalistKeys.SPACING] is not None:
        spacing = record[DatalistKeys.SPACING]
        if (
            isinstance(spacing, bool)
            or not isinstance(spacing, (int, float))
            or not (math.isfinite(spacing) and spacing > 0)
        ):
            raise ValueError(
                f"{where}: {DatalistKeys.SPACING!r} must be a positive number of um/px, got {_short(spacing)}"
            )


def _is_point(p: Any) -> bool:
    return (
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_datalist(
    path: str | os.PathLike, section: str | None = None
) -> dict[str, list[dict[str, Any]]] | list[dict[str, Any]]:
    """Read a datalist written by :func:`write_datalist` (or by hand), with absolute image paths.

    Relative ``image`` paths are resolved against the datalist's folder; absolute ones are kept.

    Args:
        path: the datalist JSON file.
        section: ``None`` for the whole ``{section: [records]}`` mapping; a section name (e.g.
            ``"testing"``) for that section's records; ``"all"`` for every section's records concatenated
            in file order.

    Returns:
        The mapping (``section=None``) or a list of records.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not valid JSON, not a mapping of lists of records with an ``image`` each, no such
            section, or a record whose ``mitoses`` / ``mimics`` are not lists of finite ``[x, y]`` or whose
            ``spacing`` is not a positive number; the message names the file, the record and the key.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a datalist must be a JSON object {{section: [records]}}, got {type(data).__name__}")
    base = path.expanduser().resolve().parent
    sections = {k: v for k, v in data.items() if isinstance(v, list)}
    if section is not None and section != "all" and section not in sections:
        available = ", ".join(repr(k) for k in sections) or "none"
        raise ValueError(f"{path}: no section {section!r} in this datalist (sections: {available}, or 'all')")
    wanted = list(sections) if section in (None, "all") else [section]
    loaded: dict[str, list[dict[str, Any]]] = {}
    for name in wanted:
        records = []
        for i, record in enumerate(sections[name]):
            if not isinstance(record, dict) or DatalistKeys.IMAGE not in record:
                raise ValueError(f"{path}: {name}[{i}] is not a record with an {DatalistKeys.IMAGE!r} key")
            _check_record(record, f"{path}: {name}[{i}]")
            record = dict(record)
            image = Path(os.fspath(record[DatalistKeys.IMAGE])).expanduser()
            record[DatalistKeys.IMAGE] = str(image) if image.is_absolute() else os.path.normpath(base / image)
            records.append(record)
        loaded[name] = records
    if section is None:
        return loaded
    if section == "all":
        return [r for name in wanted for r in loaded[name]]
    return loaded[section]


def check_sections(datalist: str | os.PathLike, sections: Sequence[str] = ("training", "validation")) -> None:
    """Fail before any work when a section a workflow needs is empty, or the training one has no mitosis.

    ``train.json`` calls it first in ``initialize``, so a datalist without validation fields stops at
    once instead of after the whole of stage 1.

    Raises:
        ValueError: naming the datalist and the section.
    """
    for section in sections:
        records = load_datalist(datalist, section)
        if not records:
            raise ValueError(f"{datalist}: section {section!r} is empty; this workflow needs {list(sections)}")
        if section == "training" and not any(len(r.get(DatalistKeys.MITOSES, [])) for r in records):
            raise ValueError(f"{datalist}: section 'training' has no mitosis to learn from")


def inference_records(source: str | os.PathLike, section: str = "testing") -> list[dict[str, Any]]:
    """Records ``{"image": path}`` to run a detector on: an image file, a folder of images, or a datalist.

    Images whose header cannot be read are left out with one warning line each (the others are still
    processed); a datalist keeps its records' other keys (``spacing``, ``mitoses``, ...). Two images
    whose outputs would share a name are refused (:func:`mssn_monai.io.output_stems`, the CLI's rule).

    Args:
        source: an image file, a folder (searched recursively for ``mssn_monai.io.IMAGE_SUFFIXES``), or a
            datalist ``.json``.
        section: the datalist section to read (``"all"`` for every section).

    Returns:
        the records, in file order.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no image at all, no readable image, or an invalid datalist (the message names it).
    """
    from mssn_monai.io import image_size, list_images, output_stems

    source = Path(source)
    if source.suffix.lower() == ".json":
        records = list(load_datalist(source, section))
    else:
        records = [{DatalistKeys.IMAGE: str(p)} for p in list_images(source)]
    output_stems([r[DatalistKeys.IMAGE] for r in records], ".")
    readable = []
    for record in records:
        try:
            image_size(record[DatalistKeys.IMAGE])
        except (OSError, ValueError) as e:
            logger.warning("skipping %s", e)
            continue
        readable.append(record)
    if not readable:
        raise ValueError(f"{source}: none of its {len(records)} image(s) could be read")
    return readable


def spread(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items``, evenly spaced over the list (first and last included), in order."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return items
    return [items[i] for i in np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))]

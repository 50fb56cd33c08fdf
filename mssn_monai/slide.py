"""Whole slides: tissue, streamed blocks through the one detector, a resumable record, the report.

:func:`detect_slide` runs the bundle's :class:`~mssn_monai.networks.detector.FieldDetector` over a
pyramidal TIFF, or with the ``openslide`` extra any slide OpenSlide reads
(:func:`mssn_monai.data.slides.open_slide`):

1. **Tissue** on a thumbnail (a low pyramid level): :func:`mssn_monai.ops.tissue.tissue_mask` (Otsu on
   saturation, small holes filled). Blocks of the detector's grid (2048 px at the detection level) that
   hold tissue, or lie within :func:`tissue_margin_px` of it, are processed; the others are not read.
   Inside a block, stage 1 runs only over the bounding boxes of the groups of map cells within that
   margin of tissue (:func:`mssn_monai.ops.tissue.mask_cells`, :func:`mssn_monai.ops.tissue.cell_boxes`),
   and candidates are proposed only on those cells: the glass around and between tissue islands is not
   computed.
2. **Stain statistics** once per slide, on a mosaic of up to 16 tissue tiles of 512x512 px spread over
   the slide (:func:`stain_sample`), the way a field's come from its regular subsample.
3. **Blocks** through :meth:`FieldDetector.detect_blocks`: each block with its map and patch context,
   so a block's detections do not depend on the block grid or on which blocks ran, a mitosis on a seam
   is found once, and memory is bounded by a block. A progress bar (tqdm) shows blocks and the ETA.
4. **Record**: after each block, ``<stem>.progress.json`` (written atomically) holds the finished
   blocks and their detections; ``--resume`` continues from it (a record made with other settings is
   refused), so a killed run loses at most one block and ends with the same result.

Detections are in level-0 pixels whatever ``level`` ran. The outputs are written by
:func:`mssn_monai.report.write_slide_report`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mssn_monai.data.slides import Slide, open_slide
from mssn_monai.io import read_json, write_json
from mssn_monai.ops.tissue import mask_blocks, mask_cells, tissue_mask

__all__ = [
    "TISSUE_MARGIN_UM",
    "RECORD_VERSION",
    "detect_slide",
    "stain_sample",
    "tissue_blocks",
    "tissue_margin_px",
    "SlideRun",
]

logger = logging.getLogger(__name__)

TISSUE_MARGIN_UM = 10.0
"""Map cells (and blocks) within this distance of the tissue mask, plus one mask pixel (the mask's own
resolution, :func:`tissue_margin_px`), are processed: a mitosis centred on tissue the thumbnail's
threshold cut at its edge is still proposed. 50 um until 0.12.0, which on small islands computed 2.3x
the tissue's area."""

RECORD_VERSION = 3
"""3 since 0.13.0: the tissue margin is :func:`tissue_margin_px` (records of an older version are
refused on ``--resume``); 2 since 0.10.0: stage 1 runs on tissue cells only."""


class SlideRun(dict):
    """What :func:`detect_slide` found: ``detections`` (level 0), ``slide``, ``thumbnail``, ``mask``, ... (a dict)."""


def tissue_margin_px(spacing_um: float, scale: float) -> float:
    """The tissue margin in level-0 pixels: :data:`TISSUE_MARGIN_UM` plus one mask pixel (``scale`` level-0
    pixels: a thumbnail pixel only partly on tissue may fall below the threshold).

    Args:
        spacing_um: level-0 spacing in um/px.
        scale: level-0 pixels per thumbnail (mask) pixel.
    """
    return TISSUE_MARGIN_UM / float(spacing_um) + float(scale)


def tissue_blocks(
    slide: Slide, level: int, block_px: int, thumb_side: int = 1024
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """The thumbnail, its tissue mask, its level-0 px per pixel, and the ``(rows, cols)`` bool grid of
    blocks (``block_px`` at ``level``) to process."""
    thumb, scale = slide.thumbnail(thumb_side)
    mask = tissue_mask(thumb)
    ds = slide.downsample(level)
    margin = int(math.ceil(tissue_margin_px(slide.spacing_um, scale) / ds))
    grid = mask_blocks(mask, scale / ds, block_px, slide.sizes[level], margin_px=margin)
    return thumb, mask, scale, grid


def stain_sample(
    image: Any, grid: np.ndarray, block_px: int, tile: int = 512, max_tiles: int = 16
) -> np.ndarray | None:
    """A mosaic of up to ``max_tiles`` central ``tile x tile`` crops of tissue blocks, evenly spread: the
    pixels the slide's stain statistics are fitted on. ``None`` when there is no tissue block."""
    blocks = np.argwhere(grid)
    if len(blocks) == 0:
        return None
    pick = blocks[np.unique(np.linspace(0, len(blocks) - 1, min(max_tiles, len(blocks))).round().astype(int))]
    h, w = int(image.shape[0]), int(image.shape[1])
    crops = []
    for i, j in pick:
        cy, cx = min(i * block_px + block_px // 2, h - 1), min(j * block_px + block_px // 2, w - 1)
        y0, x0 = max(0, min(cy - tile // 2, h - tile)), max(0, min(cx - tile // 2, w - tile))
        crop = np.asarray(image[y0 : y0 + tile, x0 : x0 + tile])
        if crop.shape[:2] != (tile, tile):
            crop = np.pad(crop, ((0, tile - crop.shape[0]), (0, tile - crop.shape[1]), (0, 0)), mode="edge")
        crops.append(crop)
    side = math.ceil(math.sqrt(len(crops)))
    while len(crops) < side * side:
        crops.append(crops[len(crops) % len(pick)])
    rows = [np.concatenate(crops[r * side : (r + 1) * side], axis=1) for r in range(side)]
    return np.concatenate(rows, axis=0)


def _record_key(slide: Slide, level: int, block_px: int, settings: Mapping[str, Any]) -> dict:
    return {
        "version": RECORD_VERSION,
        "slide": slide.path.name,
        "size": list(slide.size),
        "level": int(level),
        "spacing_um": slide.spacing_um,
        "reader": slide.reader,
        "block_px": int(block_px),
        "settings": {k: v for k, v in settings.items()},
    }


def _load_record(path: Path, key: dict) -> dict[str, list]:
    """The finished blocks of a record made with the same ``key``; raises ``ValueError`` on another key."""
    record = read_json(path)
    old = {k: record.get(k, "tifffile" if k == "reader" else None) for k in key}  # older records: tifffile
    if old != key:
        diff = sorted(k for k in key if old.get(k) != key[k])
        raise ValueError(
            f"{path}: this record was made with other settings ({', '.join(diff)} differ); "
            "run without --resume to start afresh"
        )
    return dict(record.get("blocks", {}))


def detect_slide(
    input: str,  # noqa: A002
    out: str,
    fields: Any,
    spacing: float | None = None,
    level: int = 0,
    resume: bool = False,
    progress: bool = True,
    max_blocks: int | None = None,
    reader: str = "auto",
) -> SlideRun:
    """Detect mitoses over the tissue of one slide; returns the run (see :class:`SlideRun`).

    Args:
        input: the slide file.
        out: output folder (the record ``<stem>.progress.json`` is kept there).
        fields: the detector (:func:`mssn_monai.checkpoints.load_detector`).
        spacing: level-0 um/px, overriding the file's.
        level: the pyramid level to detect at (its spacing is level 0's times its downsample).
        resume: continue from the record of an earlier run with the same settings.
        progress: show a progress bar.
        max_blocks: stop after this many new blocks (a stand-in for a killed run, for tests).
        reader: ``auto``, ``tifffile`` or ``openslide`` (:func:`~mssn_monai.data.slides.open_slide`).

    Returns:
        a :class:`SlideRun` with ``detections`` ``(N, 3)`` level-0 ``x, y, probability``, ``complete``
        (all tissue blocks done), ``slide``, ``level``, ``spacing_um`` (at ``level``), ``thumbnail``,
        ``thumb_scale``, ``mask``, ``blocks`` (tissue blocks), ``tissue_mm2``, ``seconds``.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    slide = open_slide(input, spacing, reader)
    slide._check_level(level)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = slide.path.stem
    ds = slide.downsample(level)
    spacing_l = slide.spacing_um * ds
    block_px = fields.block_px
    thumb, mask, scale, grid = tissue_blocks(slide, level, block_px)
    todo = [tuple(int(v) for v in ij) for ij in np.argwhere(grid)]
    record_path = out_dir / f"{stem}.progress.json"
    key = _record_key(slide, level, block_px, fields.settings)
    done: dict[str, list] = _load_record(record_path, key) if resume and record_path.exists() else {}
    remaining = [ij for ij in todo if f"{ij[0]},{ij[1]}" not in done]
    if done:
        logger.info("%s: resuming, %d of %d tissue blocks already done", slide.path.name, len(done), len(todo))
    if max_blocks is not None:
        remaining = remaining[: int(max_blocks)]
    image = slide.level_image(level)
    cells = mask_cells(mask, scale, fields.detector.output_stride * ds, tissue_margin_px(slide.spacing_um, scale))
    inner_bar, fields.detector.progress = fields.detector.progress, False  # one bar: blocks, with the ETA
    try:
        fit_on = stain_sample(image, grid, block_px)
        with tqdm(total=len(todo), initial=len(done), desc=stem, unit="block", disable=not progress) as bar:
            for (i, j), result in fields.detect_blocks(image, spacing_l, remaining, fit_on, cells):
                det = np.asarray(result["detections"], dtype=np.float64).reshape(-1, 3)
                done[f"{i},{j}"] = [[float(x) * ds, float(y) * ds, float(p)] for x, y, p in det]
                write_json(record_path, {**key, "blocks": done}, indent=None)  # atomic: temporary file, rename
                bar.update(1)
    finally:
        image.close()
        fields.detector.progress = inner_bar
    rows = [done[f"{i},{j}"] for i, j in todo if f"{i},{j}" in done]
    detections = np.asarray([r for block in rows for r in block], dtype=np.float64).reshape(-1, 3)
    tissue_mm2 = float(mask.sum()) * (scale * slide.spacing_um) ** 2 / 1e6
    return SlideRun(
        detections=detections,
        complete=len(rows) == len(todo),
        slide=slide,
        level=int(level),
        spacing_um=spacing_l,
        thumbnail=thumb,
        thumb_scale=scale,
        mask=mask,
        blocks=len(todo),
        blocks_done=len(rows),
        tissue_mm2=tissue_mm2,
        seconds=time.perf_counter() - t_start,
        record=record_path,
        settings=dict(fields.settings),
    )

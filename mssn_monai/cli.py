"""Command line: ``python -m mssn_monai <command> --help``.

Each command parses nothing itself (python-fire does) and calls one library function; errors in the
input (a missing file, a row that does not parse, an unknown format) end the run with one line on
stderr naming the file and the problem, and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mssn_monai.constants import APERIO_SPACING_UM, DEFAULT_SPACING_UM, INT8_CALIBRATION_FIELDS, MATCH_RADIUS_UM

__all__ = [
    "synth",
    "prepare",
    "baseline",
    "candidates",
    "detect",
    "slide",
    "benchmark",
    "evaluate",
    "adapt",
    "demo",
    "main",
]

logger = logging.getLogger("mssn_monai")


def synth(
    out: str,
    n_images: int = 8,
    size: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    spacing: float = APERIO_SPACING_UM,
    frames_per_slide: int = 4,
    style: str = "default",
    exclude: str | tuple[str, ...] = (),
) -> None:
    """Generate synthetic H&E fields with mitoses and hard mimics, in the MITOS-ATYPIA-14 layout.

    Typical usage::

        python -m mssn_monai synth --out data/synth --n-images 20 --size 1024,1024 --seed 1

    Args:
        out: output root; ``<out>/Training Aperio/<slide>/frames/x40/<frame>.tiff`` plus
            ``<slide>/mitosis/<frame>_mitosis.csv`` and ``_not_mitosis.csv``.
        n_images: number of fields.
        size: field width and height in pixels.
        seed: random seed; the same seed gives the same files.
        spacing: pixel spacing in um/px (0.2455 = the Aperio x40 frames of MITOS-ATYPIA-14, which
            ``prepare --format mitos-atypia-14`` assumes by default).
        frames_per_slide: fields per synthetic slide (a slide shares its stain and tissue look).
        style: the look of every slide, one of ``default``, ``shifted``, ``pale``, ``dark``, ``magenta``,
            ``faded``, ``random`` or ``blend`` (``mssn_monai.data.synthetic.STYLES``). ``default`` is the classic
            look; ``shifted`` another lab's and scanner's (stain hues and amounts outside the default
            range, tone curve, blur, noise, JPEG); ``pale`` (weak hematoxylin, bluish eosin, sharp
            scanner, sparse small cells and figures), ``dark`` (strong purple stain, heavy blur and JPEG,
            dense large nuclei, large figures), ``magenta`` (warm red-magenta lab, fibrous stroma, many
            atypical figures) and ``faded`` (greyish archival stain, low contrast, noise) differ in
            stain, scanner and morphology, for leave-one-style-out tests; ``random`` draws each slide
            afresh from the whole family (each parameter one look's); ``blend`` too, each parameter
            between two looks' values (and a quarter past them). The ranges are listed in
            ``mssn_monai/data/synthetic.py``.
        exclude: with ``--style random`` or ``blend``, named styles whose parameters are never drawn, e.g.
            ``--exclude pale`` or ``--exclude pale,dark``: the family without a look held out for testing.
    """
    from mssn_monai.data.synthetic import generate_dataset

    size = _parse_size(size)
    files = generate_dataset(
        out,
        n_images=n_images,
        size=size,
        seed=seed,
        spacing=spacing,
        frames_per_slide=frames_per_slide,
        style=style,
        exclude=tuple(exclude.split(",")) if isinstance(exclude, str) else tuple(str(e) for e in exclude),
    )
    print(f"wrote {len(files)} synthetic fields of {size[0]}x{size[1]} px under {out}")


def prepare(
    format: str,  # noqa: A002 - the public flag is --format
    root: str,
    out: str = "datalist.json",
    annotations: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    spacing: float | None = None,
) -> None:
    """Read a public mitosis dataset in its published layout and write one MONAI-style datalist.

    Typical usage::

        python -m mssn_monai prepare --format mitos-atypia-14 --root data/synth --out data/synth/datalist.json

    Args:
        format: one of ``icpr2012``, ``mitos-atypia-14``, ``tupac16``, ``midog``.
        root: the dataset's root folder.
        out: datalist JSON to write (paths inside are relative to it).
        annotations: the MIDOG JSON database (default: ``MIDOG++.json`` or ``MIDOG.json`` under ``root``).
        val_fraction: fraction of slides/cases for ``validation``.
        test_fraction: fraction of slides/cases for ``testing``.
        seed: seed of the split.
        spacing: pixel spacing in um/px for every image (default: the dataset's documented spacing).
    """
    from mssn_monai.data.prepare import prepare_datalist

    datalist = prepare_datalist(
        format,
        root,
        out,
        annotations=annotations,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        spacing=spacing,
    )
    counts = ", ".join(
        f"{k}: {len(v)} images / {sum(len(r['mitoses']) for r in v)} mitoses" for k, v in datalist.items()
    )
    print(f"wrote {out} ({counts})")


def baseline(input: str, out: str, spacing: float | None = None) -> None:  # noqa: A002
    """Classical, non-learned detector: colour deconvolution + Laplacian-of-Gaussian blobs + darkness.

    Typical usage::

        python -m mssn_monai baseline --input data/synth --out runs/baseline

    Args:
        input: an image file or a folder of images (searched recursively).
        out: folder for ``<image stem>.csv`` rows ``x,y,score``.
        spacing: pixel spacing in um/px (default ``DEFAULT_SPACING_UM``, 0.2456).
    """
    from mssn_monai.baseline import detect_baseline

    spacing = _spacing(spacing)
    n = _write_point_csvs(input, out, "baseline", lambda image: detect_baseline(image, spacing))
    print(f"wrote detections for {n} images to {out}")


def candidates(
    input: str,  # noqa: A002
    out: str,
    bundle: str | None = None,
    spacing: float | None = None,
    threshold: float | None = None,
    device: str | None = None,
    bf16: bool = False,
    int8: bool = False,
) -> None:
    """Stage 1 alone: write the FNR candidates of every image as ``OUT/<image stem>.csv`` (``x,y,score``).

    The same detector, weights and stain normalisation as ``detect`` (and as hard-negative mining at
    training time): ``MSSNDetector.candidates`` of the bundle's ``models/model.pt``.

    Typical usage::

        python -m mssn_monai candidates --input data/synth --out runs/candidates

    Args:
        input: an image file or a folder of images (searched recursively).
        out: output folder.
        bundle: the bundle folder (default: ``checkpoints.DEFAULT_BUNDLE``).
        spacing: pixel spacing in um/px (default ``DEFAULT_SPACING_UM``, 0.2456).
        threshold: candidate probability threshold (default: the bundle's ``candidate_threshold``, 0.5).
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        bf16: stage 1 in bfloat16 (about twice as fast where the CPU or GPU has bfloat16 arithmetic).
        int8: both stages' convolutions in 8-bit integers on CPU (fastest where the CPU has VNNI), at the
            scales of the bundle's ``models/int8_calibration.json`` (``quantize`` writes it); not with ``--bf16``.
    """

    spacing = _spacing(spacing)
    fields = _load_fields(bundle, device, bf16, int8)
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {threshold!r}")
        fields.detector.candidate_threshold = float(threshold)
    n = _write_point_csvs(input, out, "candidates", lambda image: fields.candidates(image, spacing), lazy=True)
    print(f"wrote stage-1 candidates (threshold {fields.detector.candidate_threshold}) for {n} images to {out}")


def detect(
    input: str,  # noqa: A002
    out: str,
    bundle: str | None = None,
    spacing: float | None = None,
    overlay: bool = False,
    device: str | None = None,
    bf16: bool = False,
    int8: bool = False,
) -> None:
    """Two-stage MSSN detection: per image ``OUT/<stem>.csv`` (``x,y,score``), ``.geojson`` (QuPath) and ``.json``.

    Typical usage::

        python -m mssn_monai detect --input fields/ --out detections/ --spacing 0.25 --overlay

    The shipped weights are trained on synthetic data only: retrain on real data before real use.

    Args:
        input: an image file or a folder of images (TIFF, PNG, JPEG, BMP; searched recursively).
        out: output folder.
        bundle: the bundle folder holding ``configs/inference.json`` and ``models/model.pt``
            (default: ``checkpoints.DEFAULT_BUNDLE``); the same detector as the bundle's inference workflow.
        spacing: pixel spacing in um/px (default ``DEFAULT_SPACING_UM``, 0.2456).
        overlay: also write ``<stem>_overlay.png`` with the detections drawn.
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        bf16: stage 1 in bfloat16 (about twice as fast where the CPU or GPU has bfloat16 arithmetic).
        int8: both stages' convolutions in 8-bit integers on CPU (fastest where the CPU has VNNI), at the
            scales of the bundle's ``models/int8_calibration.json`` (``quantize`` writes it); not with ``--bf16``.
    """
    from mssn_monai.outputs import write_detection_outputs

    spacing = _spacing(spacing)
    fields = _load_fields(bundle, device, bf16, int8)
    counts: list[tuple[str, int, float]] = []
    for stem, image in _each_image(input, out, "detect", lazy=not overlay):
        summary = write_detection_outputs(stem, image, fields(image, spacing), spacing, fields.settings, overlay)
        counts.append((stem.name, summary["count"], summary["mitoses_per_mm2"]))
    for name, count, density in counts:
        print(f"{name}: {count} mitoses ({density:.1f} per mm^2)")
    print(f"wrote CSV, GeoJSON and JSON for {len(counts)} images to {out}")


def slide(
    input: str,  # noqa: A002
    out: str,
    spacing: float | None = None,
    level: int = 0,
    resume: bool = False,
    bundle: str | None = None,
    hotspot: str = "circle",
    area_mm2: float = 2.0,
    hpf_diameter_mm: float = 0.5,
    hpf_count: int = 10,
    device: str | None = None,
    progress: bool = True,
    reader: str = "auto",
    bf16: bool = False,
    int8: bool = False,
) -> None:
    """Whole slide: mitoses over the tissue, the hotspot, the mitotic score, and one report per slide.

    Reads a pyramidal TIFF (MONAI ``WSIReader``, tifffile backend; tiles decoded on demand) or, with the
    ``openslide`` extra (``pip install "mssn-monai[openslide]"``), NDPI, MRXS, SCN, BIF and the other
    formats OpenSlide reads (regions read on demand), finds the
    tissue on a low level, streams the tissue blocks through the bundle's detector, and writes
    ``OUT/<stem>.csv``, ``.geojson`` (QuPath: points and the hotspot), ``.xml`` (ASAP),
    ``_heatmap.png`` / ``.npy`` (mitoses per mm²), ``.json`` and ``.html`` (self-contained report).
    Detections are in level-0 pixels. A killed run continues with ``--resume``.

    Typical usage::

        python -m mssn_monai slide --input slide.tif --out reports/
        python -m mssn_monai slide --input slide.tif --out reports/ --hotspot hpf --hpf-diameter-mm 0.55

    The shipped weights are trained on synthetic data only: retrain on real data before real use.

    Args:
        input: the slide (pyramidal, tiled TIFF: ``.tif``, ``.tiff``, ``.svs``, OME-TIFF; with the
            ``openslide`` extra also ``.ndpi``, ``.mrxs``, ``.scn``, ``.bif``, ``.vms``, ...).
        out: output folder.
        spacing: level-0 um/px, overriding the file's (needed when the file has none).
        level: pyramid level to detect at (0: full resolution).
        resume: continue from ``OUT/<stem>.progress.json`` of a killed run with the same settings.
        bundle: the bundle folder (default: this checkout's ``bundle``).
        hotspot: ``circle`` or ``square`` of ``--area-mm2``, or ``hpf`` (``--hpf-count`` fields of
            ``--hpf-diameter-mm``, as one circle of their total area).
        area_mm2: hotspot area in mm² (circle, square).
        hpf_diameter_mm: field diameter in mm (hpf).
        hpf_count: number of fields (hpf).
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        progress: show the progress bar.
        reader: ``auto`` (OpenSlide for its own formats and for TIFFs tifffile cannot decode tile by
            tile, tifffile for the others), ``tifffile`` or ``openslide``.
        bf16: stage 1 in bfloat16 (about twice as fast where the CPU or GPU has bfloat16 arithmetic).
        int8: both stages' convolutions in 8-bit integers on CPU (fastest where the CPU has VNNI), at the
            scales of the bundle's ``models/int8_calibration.json`` (``quantize`` writes it); not with ``--bf16``.
    """
    from mssn_monai.io import remove_stale_temporaries
    from mssn_monai.report import find_hotspot, write_slide_report
    from mssn_monai.slide import detect_slide

    if spacing is not None:
        spacing = _spacing(spacing)
    fields = _load_fields(bundle, device, bf16, int8)
    remove_stale_temporaries(out) if Path(out).is_dir() else None
    run = detect_slide(
        input, out, fields, spacing=spacing, level=level, resume=resume, progress=progress, reader=reader
    )
    hot = find_hotspot(run["detections"], run["slide"].spacing_um, hotspot, area_mm2, hpf_diameter_mm, hpf_count)
    summary = write_slide_report(Path(out) / run["slide"].path.stem, run, hot, bundle)
    print(
        f"{summary['slide']}: {summary['count']} mitoses on {summary['tissue_mm2']:.2f} mm² of tissue "
        f"({summary['tissue_blocks']} blocks, {summary['seconds']:.1f} s); hotspot {hot['count']} in "
        f"{hot['area_mm2']:.2f} mm² ({hot['per_mm2']:.2f} per mm²), mitotic score {hot['score']}"
    )
    print(f"wrote CSV, GeoJSON, ASAP XML, heat map, JSON and HTML report to {out}")


def benchmark(
    suite: str = "headline",
    json: str | None = None,  # noqa: A002 - the public flag is --json
    device: str | None = None,
    repeats: int | None = None,
    threads: int | None = None,
    bundle: str | None = None,
    region: bool | None = None,
    sizes: str | tuple | None = None,
    tiles: str | tuple | None = None,
    formats: str | tuple | None = None,
    scripted: bool | None = None,
    out: str | None = None,
) -> None:
    """Speed numbers in one place: a suite's table and, with ``--json``, its numbers as a JSON file.

    Suites (``mssn_monai/benchmark/``; after one warm-up, medians of ``--repeats``):

    - ``headline`` (default): ``field_seconds`` (both stages, one 2084x2084 field), ``naive_ratio``
      (patch-by-patch FNR, extrapolated, over the dense FNR), ``floor_ratio`` (time over FLOPs / measured
      matmul throughput), ``region_seconds`` and ``peak_rss_mb`` (6000x5000, tiled path, own process),
      ``slide_mm2_per_s`` (a generated pyramidal slide through ``slide``), ``device``.
    - ``fnr``: GFLOPs and parameters per FNR part, seconds per field (``--sizes``, default 2084).
    - ``detector``: the whole detector per region, tile and mode, each in its own process with its peak
      memory (``--sizes``, default 1024x1024,2084x2084,6000x5000; ``--tiles``, default 1024,2048;
      ``--scripted`` adds TorchScript).
    - ``memory``: peak memory of ``detect`` end to end per size and format (``--sizes``, default
      2048,4096,8192; ``--formats``, default png,tif; images kept under ``--out`` when given).
    - ``data``: the synthetic generator and the classical baseline (``--sizes``, default 512,1024,2084;
      ``--repeats`` default 5).

    An option a suite does not take is refused (exit 2) before anything runs.

    Typical usage::

        python -m mssn_monai benchmark --device cpu --json runs/benchmark.json
        python -m mssn_monai benchmark --suite detector --sizes 6000x5000 --tiles 1024 --threads 2
        python -m mssn_monai benchmark --suite memory --sizes 16384,40000x30000 --formats tif --out runs/memory

    Args:
        suite: ``headline``, ``fnr``, ``detector``, ``memory`` or ``data``.
        json: write the numbers here as JSON.
        device: ``cpu`` (default) or ``cuda`` (every suite but ``data``).
        repeats: timed runs per measurement, the median is reported (default 3; 5 for ``data``).
        threads: torch CPU threads; ``OMP_NUM_THREADS`` of child processes (default: torch's).
        bundle: the bundle folder (default: this checkout's ``bundle``; headline, detector, memory).
        region: headline: also run the 6000x5000 region in its own process (default true; about a
            minute on 2 cores).
        sizes: comma-separated field sizes, ``2048`` (square) or ``WIDTHxHEIGHT``, at least 64 px.
        tiles: detector: comma-separated FNR tile sizes in pixels.
        formats: memory: ``png``, ``tif`` or ``png,tif``.
        scripted: detector: also time the TorchScript detector.
        out: memory: keep the generated images here and reuse them (default: a temporary folder).
    """
    from mssn_monai.benchmark import format_suite, resolve_options, run_suite

    options = resolve_options(
        suite,
        device=device,
        repeats=repeats,
        threads=threads,
        bundle=bundle,
        region=region,
        sizes=sizes,
        tiles=tiles,
        formats=formats,
        scripted=scripted,
        out=out,
    )
    if "device" in options:
        options["device"] = str(_device(options["device"]))
    results = run_suite(suite, options)
    print(format_suite(suite, results))
    if json is not None:
        from mssn_monai.io import write_json

        write_json(json, results)
        print(f"wrote {json}")


def quantize(
    bundle: str | None = None,
    datalist: str | None = None,
    section: str = "training",
    n_fields: int = INT8_CALIBRATION_FIELDS,
    seed: int = 0,
) -> None:
    """Write the bundle's int8 calibration, ``BUNDLE/models/int8_calibration.json``, for ``--int8``.

    Runs both stages in float32 over fields prepared as detection prepares them (stain normalisation
    included; stage 2 on the vote patches of stage 1's candidates) and records the scale of every
    quantized activation; ``detect``, ``candidates`` and ``slide`` with ``--int8`` then run the
    convolutions of both stages in 8-bit integers at those scales. Calibrate
    on fields like the ones the bundle will see: ``--datalist`` (your lab's fields), else generated
    fields of the whole synthetic family. Re-run it after retraining (``adapt`` writes its own).

    Typical usage::

        python -m mssn_monai quantize --bundle bundle
        python -m mssn_monai quantize --bundle mylab_bundle --datalist mylab/datalist.json --section training

    Args:
        bundle: the bundle folder (default: ``checkpoints.DEFAULT_BUNDLE``).
        datalist: calibrate on this datalist's fields (default: generated fields).
        section: the datalist section.
        n_fields: fields to calibrate on (spread over the section; generated: 1024x1024 each).
        seed: seed of the generated fields.
    """
    from mssn_monai.quantize import quantize_bundle

    report = quantize_bundle(bundle, datalist, section, n_fields, seed)
    print(
        f"wrote {report['path']}: int8 calibration on {report['fields']} fields "
        f"({report['engine']} engine, {report['seconds']:.0f} s)"
    )


def adapt(
    datalist: str,
    out: str,
    bundle: str | None = None,
    section: str = "training",
    epochs: int = 2,
    replay: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
    seed: int = 0,
    align: bool = True,
    unlabelled: bool = False,
    joint_threshold: bool = False,
    int8: bool = True,
) -> None:
    """Teach the detector a new lab's look from a few labelled fields; writes an adapted bundle at OUT.

    First shifts stage 1's BatchNorm statistics from the bundle's own look (``--replay``, else the bundle's
    ``samples/``) to the new fields' (no label used; ``--unlabelled`` stops there, so unannotated fields suffice).
    Then fine-tunes both stages briefly (with up to 8 fields of ``--replay`` mixed in against forgetting), adds the
    new fields' mitoses, mimics and stage-1 false positives to the reference bank, and refits the candidate
    threshold, the calibration and the operating threshold on the new fields (leave-one-field-out). ``detect
    --bundle OUT`` and ``python -m monai.bundle run ... --bundle_root OUT`` then use it as they use ``bundle/``.

    Typical usage::

        python -m mssn_monai adapt --datalist newlab/datalist.json --out newlab_bundle

    Args:
        datalist: datalist of the labelled fields of the new look (``prepare`` writes one).
        out: folder of the adapted bundle (absent or empty, unless ``--overwrite``).
        bundle: the bundle to adapt (default: ``checkpoints.DEFAULT_BUNDLE``).
        section: the datalist section holding the labelled fields.
        epochs: fine-tuning epochs per stage (0: reference bank and calibration only, no gradient step).
        replay: a datalist of the original look (its ``training`` section) to mix into fine-tuning and
            to align stage 1 from.
        overwrite: replace a non-empty ``out``.
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        seed: seed of patch sampling and the reference k-means.
        align: the stage-1 alignment first (``--noalign`` skips it).
        unlabelled: the stage-1 alignment alone, from fields without annotations.
        joint_threshold: fit the operating threshold on the new fields and the labelled fields of the
            bundle's own look (``--replay``, else ``samples/``), each look weighing the same: less
            forgetting of the old look, a little less F1 on the new one.
        int8: write the adapted bundle's int8 calibration for ``--int8`` (``--noint8`` skips it: 10-20 s less).
    """
    from mssn_monai.adapt import adapt_bundle

    report = adapt_bundle(
        datalist,
        out,
        bundle=bundle,
        section=section,
        epochs=epochs,
        replay=replay,
        overwrite=overwrite,
        device=_device(device),
        seed=seed,
        align=align,
        unlabelled=unlabelled,
        joint_threshold=joint_threshold,
        int8=int8,
    )
    if unlabelled:
        print(f"adapted bundle in {out}: stage 1 aligned to {report['fields']} fields, {report['seconds']:.0f} s")
        return
    held_out = report.get("held_out_f1")
    print(
        f"adapted bundle in {out}: {report['fields']} fields, {report['mitoses']} mitoses, "
        f"candidate threshold {report['candidate_threshold']}, operating threshold "
        f"{report['operating_threshold']:.3f}, leave-one-field-out F1 "
        f"{'n/a' if held_out is None else f'{held_out:.3f}'}, {report['seconds']:.0f} s"
    )


def evaluate(
    datalist: str,
    pred: str,
    section: str = "testing",
    radius_um: float = MATCH_RADIUS_UM,
    matching: str = "optimal",
    threshold: float | None = None,
    sweep: bool = False,
    out: str | None = None,
) -> None:
    """Score detections against a datalist section: precision, recall, F1, counts per mm^2.

    Typical usage::

        python -m mssn_monai evaluate --datalist data/synth/datalist.json --pred runs/baseline --sweep

    Args:
        datalist: datalist JSON (``prepare`` writes it).
        pred: folder of ``<image stem>.csv`` (``x,y,score``) or a JSON ``{image: [[x, y, score], ...]}``.
        section: datalist section to score, or ``all``.
        radius_um: match radius in micrometres (converted with each image's spacing).
        matching: ``optimal`` (maximum one-to-one matching) or ``greedy`` (challenge scorers' rule).
        threshold: keep detections with ``score >= threshold`` (default: keep all).
        sweep: also report precision/recall/F1 over thresholds and the best threshold.
        out: write the report as JSON here.
    """
    from mssn_monai.evaluation import evaluate_predictions, format_report

    report = evaluate_predictions(
        datalist,
        pred,
        section=section,
        radius_um=radius_um,
        matching=matching,
        threshold=threshold,
        sweep=sweep,
    )
    print(format_report(report))
    if out is not None:
        from mssn_monai.io import write_json

        write_json(out, report)
        print(f"wrote {out}")


def demo(out: str = "demo_out", samples: str | None = None, section: str = "testing") -> None:
    """The main job: two-stage detection with the shipped weights on the shipped sample fields, then metrics.

    Runs the bundle's detector (``bundle/configs/inference.json`` + ``bundle/models/model.pt``, weights
    trained on synthetic data only) on every field of the sample datalist, writes each field's CSV,
    GeoJSON and JSON under ``OUT/mssn``, prints per-field counts (detected vs annotated) and the
    precision / recall / F1 against the annotations; the classical baseline runs beside it for comparison.

    Typical usage::

        python -m mssn_monai demo

    Args:
        out: output folder.
        samples: a labelled datalist (default: ``bundle/samples/datalist.json`` of a source checkout, 8
            synthetic fields that were not used for training; a wheel carries no samples: pass one).
        section: the datalist section to run on.
    """
    from mssn_monai.baseline import detect_baseline
    from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_detector
    from mssn_monai.data.datalist import load_datalist
    from mssn_monai.evaluation import evaluate_predictions, format_report
    from mssn_monai.io import read_image_rgb, write_detections_csv, write_json
    from mssn_monai.keys import DatalistKeys
    from mssn_monai.outputs import write_detection_outputs

    root = Path(out)
    datalist = Path(samples) if samples is not None else DEFAULT_BUNDLE / "samples" / "datalist.json"
    records = load_datalist(datalist, section)
    fields = load_detector()
    print(f"MSSN two-stage detector (weights trained on synthetic data only) on {len(records)} fields of {datalist}:")
    for rec in records:
        stem = Path(rec[DatalistKeys.IMAGE]).stem
        spacing = float(rec.get(DatalistKeys.SPACING, DEFAULT_SPACING_UM))
        image = read_image_rgb(rec[DatalistKeys.IMAGE])
        summary = write_detection_outputs(root / "mssn" / stem, image, fields(image, spacing), spacing, fields.settings)
        write_detections_csv(root / "baseline" / f"{stem}.csv", detect_baseline(image, spacing))
        print(f"  {stem}: {summary['count']} detected, {len(rec.get(DatalistKeys.MITOSES, []))} annotated")
    report = evaluate_predictions(datalist, root / "mssn", section=section)
    print(format_report(report))
    base = evaluate_predictions(datalist, root / "baseline", section=section)["overall"]
    print(
        f"classical baseline for comparison: precision {base['precision']:.3f} recall {base['recall']:.3f} "
        f"F1 {base['f1']:.3f}"
    )
    write_json(root / "metrics.json", {"mssn": report, "baseline": base})
    print(f"wrote {root / 'metrics.json'}")


def _spacing(spacing: float | None) -> float:
    """``--spacing`` (default :data:`DEFAULT_SPACING_UM`), checked: finite and > 0 um/px."""
    import math

    value = DEFAULT_SPACING_UM if spacing is None else float(spacing)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--spacing must be a finite number > 0 um/px, got {spacing!r}")
    return value


def _device(device: str | None) -> Any:
    """``--device`` (default: cuda when available, else cpu), checked against what this torch can use."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device: {device!r} is not a device (use cpu or cuda)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch build or machine has no CUDA device; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: {device!r} is not supported (use cpu or cuda)")
    return dev


def _load_fields(bundle: str | None, device: str | None, bf16: bool, int8: bool) -> Any:
    """The bundle's ``FieldDetector`` for ``--device``, ``--bf16`` and ``--int8`` (checked: int8 runs on CPU,
    and not together with bf16)."""
    from mssn_monai.checkpoints import load_detector

    if bf16 and int8:
        raise ValueError("--int8 and --bf16 exclude each other; choose one")
    dev = _device("cpu" if int8 and device is None else device)
    if int8 and dev.type != "cpu":
        raise ValueError(f"--int8 runs on CPU only (got --device {device}); drop --device or use --bf16 on a GPU")
    return load_detector(bundle, dev, stage1_bf16=bool(bf16), int8=bool(int8))


def _each_image(input: str, out: str, desc: str, lazy: bool = False) -> Iterator[tuple[Path, Any]]:  # noqa: A002
    """``(out / <stem>, (H, W, 3) uint8)`` for every readable image under ``input`` (large tiled TIFFs read
    by tiles on demand with ``lazy``, for the detector's block streaming).

    Refuses, before anything is written, inputs whose outputs would collide; skips (naming it) an image
    that cannot be read; raises ``ValueError`` when none could be.
    """
    from mssn_monai.io import iter_images, list_images, output_stems, remove_stale_temporaries

    files = list_images(input)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory")
    remove_stale_temporaries(out_dir)
    stems = dict(zip(files, output_stems(files, out_dir), strict=True))
    n = 0
    for path, image in iter_images(files, desc=desc, lazy=lazy):
        yield stems[path], image
        n += 1
    if n == 0:
        raise ValueError(f"{input}: none of {len(files)} image(s) could be read")


def _write_point_csvs(input: str, out: str, desc: str, points_of: Any, lazy: bool = False) -> int:  # noqa: A002
    """Write ``out/<stem>.csv`` rows ``x,y,score`` = ``points_of(image)`` for every image; returns how many."""
    from mssn_monai.io import write_detections_csv

    n = 0
    for stem, image in _each_image(input, out, desc, lazy):
        write_detections_csv(stem.parent / f"{stem.name}.csv", points_of(image))
        n += 1
    return n


def _parse_size(size: tuple[int, int] | list[int] | str | int) -> tuple[int, int]:
    if isinstance(size, str):
        size = tuple(int(s) for s in size.replace("x", ",").split(","))
    elif isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"--size must be two positive integers W H, got {size!r}")
    return size  # type: ignore[return-value]


COMMANDS = {
    "synth": synth,
    "prepare": prepare,
    "baseline": baseline,
    "candidates": candidates,
    "detect": detect,
    "slide": slide,
    "benchmark": benchmark,
    "evaluate": evaluate,
    "adapt": adapt,
    "quantize": quantize,
    "demo": demo,
}


ARG_LIMITS = {
    "synth": {
        "n_images": "[1, inf)",
        "seed": "[0, inf)",
        "spacing": "(0, inf)",
        "frames_per_slide": "[1, inf)",
        "style": ("default", "shifted", "pale", "dark", "magenta", "faded", "random", "blend"),
    },
    "prepare": {
        "format": ("icpr2012", "mitos-atypia-14", "tupac16", "midog"),
        "val_fraction": "[0, 1]",
        "test_fraction": "[0, 1]",
        "seed": "[0, inf)",
        "spacing": "(0, inf)",
    },
    "baseline": {"spacing": "(0, inf)"},
    "candidates": {"spacing": "(0, inf)", "threshold": "[0, 1]"},
    "detect": {"spacing": "(0, inf)"},
    "benchmark": {
        "suite": ("headline", "fnr", "detector", "memory", "data"),
        "repeats": "[1, inf)",
        "threads": "[1, inf)",
    },
    "slide": {
        "spacing": "(0, inf)",
        "level": "[0, inf)",
        "hotspot": ("circle", "square", "hpf"),
        "area_mm2": "(0, inf)",
        "hpf_diameter_mm": "(0, inf)",
        "hpf_count": "[1, inf)",
        "reader": ("auto", "tifffile", "openslide"),
    },
    "evaluate": {"radius_um": "(0, inf)", "matching": ("optimal", "greedy")},
    "adapt": {"epochs": "[0, inf)", "seed": "[0, inf)"},
    "quantize": {"n_fields": "[1, inf)", "seed": "[0, inf)"},
}
"""Accepted numbers (intervals) and texts (choices) of the commands' arguments, checked before a command runs
(:func:`mssn_monai.cli_args.check_command_args`); every number must also be finite. ``evaluate --threshold``
has no interval: scores are not always probabilities (the baseline's are darkness ratios)."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: check the arguments against the command's signature and :data:`ARG_LIMITS`, then run
    the command with python-fire; input errors (bad flags included, before anything is written, and a slide
    that needs the ``openslide`` extra when it is not installed) end in one line on stderr and exit status 2."""
    import fire

    from mssn_monai.cli_args import ArgumentError, check_command_args

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        check_command_args(args, COMMANDS, ARG_LIMITS)
    except ArgumentError as e:
        print(f"error: {e} (see: python -m mssn_monai {args[0]} --help)", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(COMMANDS, command=args, name="mssn_monai")
    except (ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except ImportError as e:  # only the optional extra a file needs (a missing core package is a bug)
        from mssn_monai.data.openslide_image import OpenSlideMissingError

        if not isinstance(e, OpenSlideMissingError):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

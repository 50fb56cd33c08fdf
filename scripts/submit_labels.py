"""Submit a QuPath GeoJSON export (mitoses marked as points or shapes) as an image's final label.

The MONAI Label QuPath extension's "Submit Label" skips point annotations, so a pathologist who marks
each mitosis with QuPath's Points tool would send nothing. This script sends QuPath's own export
instead: in QuPath, *File > Export objects as GeoJSON* (all objects, or the selected ones; a
FeatureCollection or a plain list of features), then::

    python scripts/submit_labels.py slide1.geojson --server http://127.0.0.1:8000
    python scripts/submit_labels.py exports/ --server http://127.0.0.1:8000       # every *.geojson / *.json
    python scripts/submit_labels.py slide1.geojson --image field_07 --dry_run    # check only

The file is checked here first with the reader the server uses
(:func:`mssn_monai.data.annotations.read_point_labels`: points, multipoints and polygons; the class in
``classification.name``, mapped by one rule: "Mitotic figure", "mitosis" -> mitosis; "Non-mitotic figure",
"mimic", "not_mitosis" -> mimic; other classes are ignored). A file that does not parse, holds no shape
of either class, or names an image the server does not have is refused with one line and exit status 2;
nothing is sent. Otherwise it is uploaded unchanged with ``PUT /datastore/label?image=ID&tag=final``,
which checks it again and stores it under the datastore's ``labels/final/``.

The image id defaults to the export's file name without its extensions (``field_07.geojson`` and
``field_07.png.geojson`` -> ``field_07``): the datastore's id is the image's file name without extension.
"""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_client import datastore_images, put_label  # noqa: E402

from mssn_monai.cli_args import as_flag  # noqa: E402
from mssn_monai.data.annotations import PointLabels, read_point_labels  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".bmp"}
LABEL_SUFFIXES = (".geojson", ".json")


class SubmitError(ValueError):
    """A label file or a server answer that stops the submission (one line)."""


def image_id_of(path: str | Path) -> str:
    """``field_07.geojson`` / ``field_07.png.geojson`` -> ``field_07``."""
    stem = Path(Path(path).name)
    stem = Path(stem.stem)
    while stem.suffix.lower() in IMAGE_SUFFIXES:
        stem = Path(stem.stem)
    return str(stem)


def check_labels(path: str | Path) -> PointLabels:
    """Read a label file as the server will; at least one mitosis or mimic, else :class:`SubmitError`."""
    try:
        labels = read_point_labels(path)
    except (ValueError, FileNotFoundError) as e:
        raise SubmitError(f"bad label file {e}") from e
    if len(labels.mitoses) + len(labels.mimics) == 0:
        found = ", ".join(f"{name or '(no class)'}: {n}" for name, n in sorted(labels.ignored.items())) or "no shapes"
        raise SubmitError(
            f"{path}: no shape classified as a mitosis or a mimic ({found}); set the class of each mitosis to "
            '"Mitotic figure" (or "mitosis") and of each look-alike to "Non-mitotic figure" (or "mimic")'
        )
    return labels


def _summary(labels: PointLabels) -> str:
    text = f"{len(labels.mitoses)} mitoses, {len(labels.mimics)} mimics"
    if labels.ignored:
        text += " (ignored: " + ", ".join(f"{k or '(no class)'} {v}" for k, v in sorted(labels.ignored.items())) + ")"
    return text


def submit(path: str | Path, server: str, image: str | None = None, tag: str = "final", dry_run: bool = False) -> str:
    """Check one file and (unless ``dry_run``) upload it as ``image``'s label; return a one-line report.

    Raises:
        SubmitError: a bad file, an image the server does not have, or the server refused the label.
    """
    path = Path(path)
    labels = check_labels(path)
    image = image or image_id_of(path)
    if dry_run:
        return f"{path}: {_summary(labels)} for image {image!r} (dry run, nothing sent)"
    try:
        known = datastore_images(server)
    except (urllib.error.URLError, ConnectionError, OSError) as e:
        raise SubmitError(f"no MONAI Label server at {server}: {getattr(e, 'reason', e)}") from e
    if image not in known:
        some = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
        raise SubmitError(
            f"{path}: image {image!r} is not in the server's datastore ({len(known)} images: {some}); "
            "give --image ID (the image's file name without extension)"
        )
    status, body = put_label(server, image, path.name, path.read_bytes(), tag=tag)
    if status != 200:
        detail = body.get("detail") if isinstance(body, dict) else body
        raise SubmitError(f"{path}: the server refused the label (HTTP {status}): {detail}")
    return f"{path}: {_summary(labels)} submitted as the {tag} label of image {image!r}"


def main(
    labels: str, server: str = "http://127.0.0.1:8000", image: str | None = None, tag: str = "final", dry_run=False
) -> None:
    """Submit a QuPath GeoJSON export (or every ``*.geojson``/``*.json`` in a folder); see the module docstring.

    Args:
        labels: the export file, or a folder of exports (one per image, named by the image).
        server: the MONAI Label server's base URL.
        image: the datastore's image id (one file only; default: from the file name).
        tag: the label tag (``final`` is what training reads).
        dry_run: check the files and print what would be sent; send nothing.
    """
    src = Path(labels)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in LABEL_SUFFIXES) if src.is_dir() else [src]
    if src.is_dir() and not files:
        sys.exit(f"error: {src}: no *.geojson or *.json file")
    if image and len(files) > 1:
        sys.exit("error: --image names one image; give one file, not a folder")
    dry = as_flag(dry_run, "dry_run")
    try:
        for f in files:  # every file first: a bad one stops the run before any upload
            check_labels(f)
        for f in files:
            print(submit(f, server, image=image, tag=tag, dry_run=dry), flush=True)
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    fire.Fire(main)

"""File input and output shared by every command: images, detection CSVs, JSON, atomic writes.

Coordinate convention (the whole package): a point is ``(x, y)`` = (column, row) in level-0 pixels,
as floats; a detection is ``(x, y, score)``. Nothing here knows about networks or datasets.

Every writer goes through :func:`atomic_write`, so a crash or a bad input never leaves a half-written
file behind: the content goes to a temporary file in the same folder, which is renamed over the
target only when complete.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_write",
    "write_json",
    "read_json",
    "read_image_rgb",
    "image_size",
    "write_image",
    "list_images",
    "write_detections_csv",
    "read_detections_csv",
    "read_predictions",
    "iter_images",
    "detections_to_geojson",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    Args:
        path: the final file. Its folder is created when missing.
        mode: ``"w"`` for text or ``"wb"`` for bytes.
        kwargs: passed to ``open`` (e.g. ``newline=""`` for csv).

    Raises:
        IsADirectoryError: when ``path`` is an existing directory.
        NotADirectoryError: when the parent of ``path`` exists and is a file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a file path to write")
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"{path.parent}: exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)  # reopen by name: some writers (tifffile) need a file object with a real name
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file ordinary permissions
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (numpy scalars and arrays are converted)."""

    def _default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, default=_default)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from e


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 RGB array.

    TIFF goes through tifffile (first page, level 0), everything else through Pillow. Grayscale is
    repeated to three channels, an alpha channel is dropped, 16-bit data are scaled to 8 bits
    (``value >> 8``), float data in [0, 1] are scaled by 255 (NaN becomes 0).

    Args:
        path: an image file with one of :data:`IMAGE_SUFFIXES`.

    Raises:
        FileNotFoundError: missing file.
        ValueError: the file cannot be decoded or has an unsupported layout; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path, key=0)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im)
                elif im.mode not in ("RGB", "RGBA", "L", "LA"):
                    arr = np.asarray(im.convert("RGB"))
                else:
                    arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError, RuntimeError) as e:  # decoders raise a zoo of types
        raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    return _to_rgb_uint8(np.asarray(arr), path)


_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".qptiff")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image in pixels, read from its header without decoding pixels.

    TIFF-based files (``.tif``, ``.tiff``, ``.svs``, ...) go through tifffile (first page = level 0),
    other formats through Pillow's lazy ``Image.open``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: the header cannot be read or the image has no pixels; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                width, height = int(page.imagewidth), int(page.imagelength)
        else:
            from PIL import Image

            with Image.open(path) as im:
                width, height = (int(v) for v in im.size)
    except Exception as e:  # corrupt files raise many types (TiffFileError, struct.error, OSError, ...)
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"{path}: cannot read the image size ({reason})") from e
    if width < 1 or height < 1:
        raise ValueError(f"{path}: image has no pixels ({width}x{height})")
    return width, height


def _to_rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) TIFF
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{path}: unsupported image shape {arr.shape}, expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{path}: image has no pixels (shape {arr.shape})")
    if arr.shape[-1] in (1, 2):  # gray or gray+alpha
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ValueError(f"{path}: unsupported pixel type {arr.dtype}")


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 image atomically: TIFF via tifffile, other suffixes via Pillow."""
    path = Path(path)
    image = np.ascontiguousarray(image)
    suffix = path.suffix.lower()
    with atomic_write(path, "wb") as f:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(f, image, photometric="rgb" if image.ndim == 3 else "minisblack")
        else:
            from PIL import Image

            fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}.get(suffix)
            if fmt is None:
                raise ValueError(f"{path}: unsupported image suffix {suffix!r}, use one of {IMAGE_SUFFIXES}")
            Image.fromarray(image).save(f, format=fmt)


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image files at ``path``: the file itself, or every image below a folder (sorted, recursive).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a folder holds no image with one of :data:`IMAGE_SUFFIXES`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    return files


def write_detections_csv(path: str | os.PathLike, detections: np.ndarray | Sequence[Sequence[float]]) -> None:
    """Write detections as CSV rows ``x,y,score`` (no header, MITOS-ATYPIA-14 submission order).

    Args:
        path: output file.
        detections: ``(N, 3)`` array of ``x, y, score`` (x = column, y = row, in pixels).
    """
    det = np.asarray(detections, dtype=np.float64).reshape(-1, 3)
    with atomic_write(path, "w", newline="") as f:
        w = csv.writer(f)
        for x, y, s in det:
            w.writerow([f"{x:.2f}", f"{y:.2f}", f"{s:.6g}"])


def read_detections_csv(path: str | os.PathLike, default_score: float = 1.0) -> np.ndarray:
    """Read rows ``x,y[,score]`` into an ``(N, 3)`` float array; a missing score is ``default_score``.

    A first line that does not parse as numbers is taken as a header and skipped; blank lines are
    skipped. Any other row that does not parse raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows: list[list[float]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            try:
                vals = [float(c) for c in cells[:3]]
                if len(vals) < 2:
                    raise ValueError("need at least x,y")
                if not all(np.isfinite(vals)):
                    raise ValueError("non-finite value")
            except ValueError as e:
                if lineno == 1 and not rows and any(c.isalpha() for c in "".join(cells)):
                    continue  # header
                raise ValueError(f"{path}:{lineno}: cannot parse row {row!r} as x,y[,score] ({e})") from e
            rows.append(vals if len(vals) == 3 else vals + [default_score])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read detections for many images, keyed by image stem.

    Args:
        path: a directory of ``<image stem>.csv`` files (rows ``x,y,score``), or one JSON file mapping
            an image name (stem or file name, with or without folders) to a list of ``[x, y, score]``.

    Returns:
        ``{stem: (N, 3) float array}``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prediction file or directory")
    if path.is_dir():
        return {p.stem: read_detections_csv(p) for p in sorted(path.glob("*.csv"))}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image -> [[x, y, score], ...]")
    out: dict[str, np.ndarray] = {}
    for name, dets in data.items():
        try:
            arr = np.asarray(dets, dtype=np.float64)
            if arr.size == 0:
                arr = arr.reshape(0, 3)
            if arr.ndim != 2 or arr.shape[1] not in (2, 3):
                raise ValueError(f"shape {arr.shape}")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: entry {name!r} is not a list of [x, y, score] ({e})") from e
        if arr.shape[1] == 2:
            arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
        out[Path(name).stem] = arr
    return out


def iter_images(files: Sequence[str | os.PathLike], desc: str = "images") -> Iterator[tuple[Path, np.ndarray]]:
    """Yield ``(path, (H, W, 3) uint8 image)`` for each readable file, with a progress bar.

    A file that cannot be read is reported (one line naming it) and skipped; the others are still read.
    """
    from tqdm import tqdm

    for path in tqdm([Path(f) for f in files], desc=desc, unit="image", disable=len(files) < 2):
        try:
            image = read_image_rgb(path)
        except (OSError, ValueError) as e:
            logger.error("%s", e)
            continue
        yield path, image


def detections_to_geojson(
    detections: np.ndarray | Sequence[Sequence[float]],
    image_name: str = "",
    classification: str = "Mitotic figure",
    colour: tuple[int, int, int] = (220, 30, 30),
) -> dict:
    """QuPath-importable GeoJSON: one ``Point`` detection per row ``x, y, score``.

    Each feature has ``objectType: "detection"``, ``classification`` ``{"name": "Mitotic figure"}`` and
    ``measurements`` ``{"score": ...}`` (QuPath 0.4+ reads both), and a deterministic id (UUID5 of the
    image name and row), so the same detections give the same file.
    """
    import uuid

    det = np.asarray(detections, dtype=np.float64).reshape(-1, 3)
    features = []
    for i, (x, y, score) in enumerate(det):
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mssn-monai/{image_name}/{i}")),
                "geometry": {"type": "Point", "coordinates": [round(float(x), 2), round(float(y), 2)]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": classification, "color": list(colour)},
                    "measurements": {"score": float(score)},
                    "isLocked": False,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}

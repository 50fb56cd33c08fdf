"""File input and output shared by every command: images, detection CSVs, JSON, atomic writes.

Coordinate convention (the whole package): a point is ``(x, y)`` = (column, row) in level-0 pixels,
as floats; a detection is ``(x, y, score)``. Nothing here knows about networks or datasets.

Every writer goes through :func:`atomic_write`, so a crash or a bad input never leaves a half-written
file behind: the content goes to a temporary file in the same folder, which is renamed over the
target only when complete.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_DECODED_IMAGE_PIXELS",
    "atomic_write",
    "write_json",
    "remove_stale_temporaries",
    "read_json",
    "read_image_rgb",
    "open_image",
    "TiledTiffImage",
    "gather_by_tiles",
    "decode_workers",
    "take_window",
    "LAZY_TIFF_PIXELS",
    "MAX_TILED_PIXELS",
    "MAX_CHUNK_PIXELS",
    "image_size",
    "write_image",
    "list_images",
    "write_detections_csv",
    "CSV_COLUMN_NAMES",
    "read_detections_csv",
    "read_predictions",
    "iter_images",
    "output_stems",
    "detections_to_geojson",
    "asap_xml",
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


def _non_finite_path(obj: Any, where: str = "") -> tuple[str, Any] | None:
    """The key path (``report.per_image[3].f1``) and value of the first NaN or infinity in ``obj``."""
    if isinstance(obj, (float, np.floating)):
        return None if np.isfinite(obj) else (where or "(top level)", obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc" and not np.isfinite(obj).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(obj))[0])
            return f"{where}[{']['.join(map(str, index))}]", obj[index]
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite_path(v, f"{where}.{k}" if where else str(k))
            if found is not None:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite_path(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def remove_stale_temporaries(folder: str | os.PathLike, older_than_s: float = 600.0) -> int:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` when a run was killed mid-write.

    Only names of its own pattern (``.<target>.<random>.tmp``) untouched for ``older_than_s`` seconds are
    removed, so a run writing into the same folder right now keeps its files. Each removal is logged.

    Returns:
        the number of files removed.
    """
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for p in folder.glob(".*.tmp"):
        try:
            if p.is_file() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                removed += 1
                logger.info("removed %s, left by an interrupted run", p)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
    return removed


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically (numpy scalars and arrays are converted).

    JSON has no NaN or infinity: a non-finite float is refused before anything is written (write
    ``None``, i.e. ``null``, for a value that is undefined).

    Args:
        path: the JSON file.
        obj: dicts, lists, numbers, strings, ``None``, numpy scalars and arrays, paths.
        indent: indentation of the file (``None``: one line).

    Raises:
        ValueError: ``obj`` holds NaN or infinity; the message names the file and the key path of the value.
        TypeError: ``obj`` holds a value JSON cannot represent.
    """

    def _default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{path}: {type(o).__name__} is not JSON serialisable")

    try:
        text = json.dumps(obj, indent=indent, default=_default, allow_nan=False)
    except ValueError as e:
        found = _non_finite_path(obj)
        where = f"{found[0]} = {float(found[1])!r}" if found is not None else str(e)
        raise ValueError(
            f"{path}: cannot write {where}: JSON has no NaN or infinity (an undefined value must be None/null)"
        ) from e
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
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

    TIFF goes through tifffile (first page, level 0), everything else through Pillow. The size in the
    header is checked before any pixel is decoded: at most :data:`MAX_IMAGE_PIXELS` for TIFF and
    :data:`MAX_DECODED_IMAGE_PIXELS` for the other formats (which cannot be read by tiles). Grayscale is
    repeated to three channels, an alpha channel is dropped, 16-bit data are scaled to 8 bits
    (``value >> 8``), signed 16-bit data are mapped as described in :func:`_to_rgb_uint8` (with a
    warning), float data in [0, 1] are scaled by 255 (NaN becomes 0).

    Args:
        path: an image file with one of :data:`IMAGE_SUFFIXES`.

    Raises:
        FileNotFoundError: missing file.
        ValueError: the file cannot be decoded, is larger than the limit (a possible decompression bomb)
            or has an unsupported layout; the message is one line that names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    is_tiff = path.suffix.lower() in _TIFF_SUFFIXES
    width, height = image_size(path)
    limit = MAX_IMAGE_PIXELS if is_tiff else MAX_DECODED_IMAGE_PIXELS
    if width * height > limit:
        which = "MAX_IMAGE_PIXELS" if is_tiff else "MAX_DECODED_IMAGE_PIXELS"
        raise ValueError(
            f"{path}: the header claims {width}x{height} = {width * height} pixels, more than the limit of "
            f"{limit} (mssn_monai.io.{which}); refused without decoding (a corrupt file, a decompression bomb, "
            "or an image too large to decode whole: write it as a tiled TIFF, which is read by tiles)"
        )
    try:
        if is_tiff:
            import tifffile

            arr = tifffile.imread(path, key=0)
        else:
            with _open_pillow(path, limit) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im)
                elif im.mode not in ("RGB", "RGBA", "L", "LA"):
                    arr = np.asarray(im.convert("RGB"))
                else:
                    arr = np.asarray(im)
    except Exception as e:  # decoders raise a zoo of types (OSError, SyntaxError, struct.error, MemoryError, ...)
        raise ValueError(f"{path}: cannot read image ({_one_line(e)})") from e
    return _to_rgb_uint8(np.asarray(arr), path)


_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".qptiff")

MAX_IMAGE_PIXELS = 30000 * 30000
"""Largest TIFF (level 0, width x height) :func:`read_image_rgb` decodes; larger ones are refused from the
header. Set ``mssn_monai.io.MAX_IMAGE_PIXELS`` to change it."""

MAX_DECODED_IMAGE_PIXELS = 12000 * 12000
"""Largest PNG, JPEG or BMP :func:`read_image_rgb` decodes (these are decoded whole, never by tiles, and
Pillow holds 4 bytes a pixel while decoding: 12000x12000 keeps ``detect`` under 2 GB); larger ones are
refused from the header (write them as tiled TIFF). Set ``mssn_monai.io.MAX_DECODED_IMAGE_PIXELS`` to
change it."""

_PILLOW_LOCK = threading.Lock()


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


@contextlib.contextmanager
def _open_pillow(path: Path, max_pixels: int | None) -> Iterator[Any]:
    """``PIL.Image.open`` with Pillow's decompression bomb limit set to ``max_pixels`` for this call.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` and refuses twice that; this package checks the size
    itself (:data:`MAX_DECODED_IMAGE_PIXELS`), so the warning is silenced and the refusal becomes a
    ``ValueError`` naming the file.
    """
    from PIL import Image

    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:
            raise ValueError(f"{path}: image too large, refused without decoding ({_one_line(e)})") from e
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image in pixels, read from its header without decoding pixels.

    TIFF-based files (``.tif``, ``.tiff``, ``.svs``, ...) go through tifffile (first page = level 0),
    other formats through Pillow's lazy ``Image.open`` (without Pillow's size limit: only the header is read).

    Args:
        path: an image file.

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
            with _open_pillow(path, None) as im:
                width, height = (int(v) for v in im.size)
    except Exception as e:  # corrupt files raise many types (TiffFileError, struct.error, OSError, ...)
        raise ValueError(f"{path}: cannot read the image size ({_one_line(e)})") from e
    if width < 1 or height < 1:
        raise ValueError(f"{path}: image has no pixels ({width}x{height})")
    return width, height


LAZY_TIFF_PIXELS = 4096 * 4096
"""A TIFF larger than this is opened as a :class:`TiledTiffImage` by :func:`open_image` (read by chunks)."""

MAX_CHUNK_PIXELS = 4096 * 4096
"""Largest tile or strip :class:`TiledTiffImage` decodes at a time (a page in bigger chunks is read whole)."""

MAX_TILED_PIXELS = 50000 * 50000
"""Largest tiled TIFF page :func:`open_image` opens (read tile by tile, so memory is not the limit: time is)."""

MAX_DECODE_WORKERS = 8
"""Most threads :class:`TiledTiffImage` decodes the chunks of one window with."""


def decode_workers() -> int:
    """Threads for decoding a window's chunks: ``OMP_NUM_THREADS`` when set (the thread budget a user gives
    every library), else the CPUs this process may run on; at most :data:`MAX_DECODE_WORKERS`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.strip().isdigit() and int(value) >= 1:
        return min(int(value), MAX_DECODE_WORKERS)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_DECODE_WORKERS))


_DECODE_POOLS: dict[tuple[int, int], Any] = {}
_DECODE_POOLS_LOCK = threading.Lock()


def _decode_pool(workers: int) -> Any:
    """A thread pool of ``workers`` threads, one per process (created once; zlib, JPEG and the other codecs
    release the GIL while they decode). Keyed by the process id too: a forked child (a DataLoader worker)
    inherits the parent's pool object but not its threads, so it makes its own."""
    from concurrent.futures import ThreadPoolExecutor

    key = (os.getpid(), workers)
    with _DECODE_POOLS_LOCK:
        if key not in _DECODE_POOLS:
            _DECODE_POOLS[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tiff-decode")
        return _DECODE_POOLS[key]


def gather_by_tiles(
    image: Any,
    key: Any,
    pixels: Callable[[int, int, np.ndarray, np.ndarray], np.ndarray],
    channels: int = 3,
    dtype: Any = np.uint8,
) -> np.ndarray:
    """``image[rows, cols]`` of a tiled array face, read one tile of its grid at a time.

    The shared slicing of :class:`TiledTiffImage` and
    :class:`~mssn_monai.data.openslide_image.OpenSlideImage`: ``key`` must be two slices (steps allowed);
    the selected rows and columns are grouped by the tile they fall in (``image.tile`` = ``(th, tw)``),
    and each group is filled by one call of ``pixels``.

    Args:
        image: has ``shape`` ``(H, W, ...)`` and ``tile`` ``(th, tw)`` in pixels.
        key: ``(slice, slice)``: rows, then columns.
        pixels: ``pixels(ty, tx, rows, cols)`` -> ``(len(rows), len(cols), channels)``: the pixels at those
            absolute rows and columns, all inside tile ``(ty, tx)``.
        channels: channels of the result.
        dtype: its dtype.

    Returns:
        ``(len(rows), len(cols), channels)`` array (``(0, w, 3)`` / ``(h, 0, 3)`` uint8 when empty).

    Raises:
        TypeError: ``key`` is not two slices.
    """
    if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)):
        raise TypeError(f"{type(image).__name__} takes two slices (rows, columns), got {key!r}")
    rows = np.arange(image.shape[0])[key[0]]
    cols = np.arange(image.shape[1])[key[1]]
    if not (len(rows) and len(cols)):
        return np.zeros((len(rows), len(cols), 3), dtype=np.uint8)
    out = np.zeros((len(rows), len(cols), channels), dtype=dtype)
    th, tw = image.tile
    for ty in np.unique(rows // th):
        r_sel = np.nonzero(rows // th == ty)[0]
        for tx in np.unique(cols // tw):
            c_sel = np.nonzero(cols // tw == tx)[0]
            # rows and cols are monotonic, so one tile's positions in the output are a run: a window
            out[r_sel[0] : r_sel[-1] + 1, c_sel[0] : c_sel[-1] + 1] = pixels(int(ty), int(tx), rows[r_sel], cols[c_sel])
    return out


def _is_run(index: np.ndarray) -> bool:
    """Whether ``index`` is ``first, first + 1, ..., last`` (a slice of step 1)."""
    return len(index) > 0 and int(index[-1]) - int(index[0]) + 1 == len(index)


def take_window(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``array[np.ix_(rows, cols)]``, by basic slicing (a view) when both are runs of step 1."""
    if _is_run(rows) and _is_run(cols):
        return array[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]
    return array[np.ix_(rows, cols)]


class TiledTiffImage:
    """A TIFF's first page (level 0), read chunk by chunk on demand: an ``(H, W, 3)`` uint8 array face.

    The chunks are the page's tiles, or its strips when it is not tiled. Indexing with two slices
    (``image[y0:y1, x0:x1]``, steps allowed: ``image[::8, ::8]``) decodes only the chunks the window
    touches and returns an ``(h, w, 3)`` uint8 array converted as :func:`read_image_rgb` converts (grey
    repeated, alpha dropped, 16-bit shifted to 8). Decoded chunks are kept in a small cache
    (``cache_mb``), so neighbouring windows do not decode them again. Memory is bounded by the window
    and the cache, whatever the image size: :class:`~mssn_monai.networks.detector.FieldDetector` reads
    one block at a time from it. ``np.asarray(image)`` reads the whole page.

    Args:
        path: a TIFF whose first page is chunky (``planarconfig`` contiguous), uint8 or uint16 with 1 to 4
            samples per pixel, in chunks of at most :data:`MAX_CHUNK_PIXELS` pixels (:func:`open_image`
            checks this and falls back to a whole read).
        cache_mb: decoded chunks kept, in MB.
        level: pyramid level of the first series to read (tifffile's ``series[0].levels``: SubIFD and
            SVS-style pyramids alike); 0 is the first page.
        workers: threads that decode the chunks a window needs and the cache lacks, all at once (the file
            is read by one thread, the decoding shared); default :func:`decode_workers`. 1 decodes one
            chunk after the other as the window is cut. The pixels are the same either way.

    Raises:
        ValueError: a page that does not qualify, or a missing level (the message names the file).
    """

    def __init__(
        self, path: str | os.PathLike, cache_mb: float = 256.0, level: int = 0, workers: int | None = None
    ) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        if level == 0:
            page = self._tif.pages[0]
        else:
            levels = self._tif.series[0].levels if self._tif.series else []
            if not 0 <= level < len(levels):
                self._tif.close()
                raise ValueError(f"{self.path}: no pyramid level {level} (levels 0-{max(len(levels) - 1, 0)})")
            page = levels[level].keyframe
        chunk = (int(page.chunks[0]), int(page.chunks[1])) if len(page.chunks) >= 2 else (0, 0)
        ok = (
            page.imagedepth == 1
            and page.planarconfig == 1
            and page.samplesperpixel <= 4
            and np.dtype(page.dtype) in (np.uint8, np.uint16)
            and 0 < chunk[0] * chunk[1] <= MAX_CHUNK_PIXELS
            and len(page.dataoffsets) == -(-int(page.imagelength) // chunk[0]) * -(-int(page.imagewidth) // chunk[1])
        )
        if not ok:
            self._tif.close()
            raise ValueError(f"{self.path}: not a chunky uint8/uint16 TIFF page in small tiles or strips")
        self._page = page
        self.tile = chunk
        self.shape = (int(page.imagelength), int(page.imagewidth), 3)
        self.ndim, self.dtype = 3, np.dtype(np.uint8)
        self._grid = (-(-self.shape[0] // chunk[0]), -(-self.shape[1] // chunk[1]))
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)
        self.workers = decode_workers() if workers is None else max(1, int(workers))

    def close(self) -> None:
        """Close the file (also done when the object is collected)."""
        self._tif.close()
        self._cache.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._tif.close()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        """Chunk ``(ty, tx)`` of the grid as ``(tile_h, tile_w, samples)`` raw pixels (zero beyond the image)."""
        index = ty * self._grid[1] + tx
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        return self._store(index, self._decode(index, self._read_raw(index)))

    def _read_raw(self, index: int) -> bytes | None:
        """The encoded bytes of chunk ``index`` (``None`` for a sparse, empty chunk)."""
        offset, count = self._page.dataoffsets[index], self._page.databytecounts[index]
        if not count:
            return None
        fh = self._tif.filehandle
        fh.seek(offset)
        return fh.read(count)

    def _decode(self, index: int, raw: bytes | None) -> np.ndarray:
        """Chunk ``index`` decoded from ``raw`` into a whole ``(tile_h, tile_w, samples)`` array (thread-safe)."""
        page = self._page
        tile = np.zeros((*self.tile, page.samplesperpixel), dtype=page.dtype)
        if raw is not None:
            segment, _, _ = page.decode(raw, index, jpegtables=page.jpegtables)
            seg = np.asarray(segment)
            seg = seg.reshape(seg.shape[-3], seg.shape[-2], -1)
            tile[: seg.shape[0], : seg.shape[1]] = seg[: self.tile[0], : self.tile[1]]
        return tile

    def _store(self, index: int, tile: np.ndarray) -> np.ndarray:
        self._cache[index] = tile
        self._cache_bytes += tile.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return tile

    def _prefetch(self, key: Any) -> None:
        """Decode the chunks window ``key`` needs and the cache lacks, in :attr:`workers` threads at once
        (not when they would not all fit the cache: they are then decoded one by one as they are cut)."""
        two_slices = isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)
        if self.workers < 2 or not two_slices:
            return
        rows = np.arange(self.shape[0])[key[0]] // self.tile[0]
        cols = np.arange(self.shape[1])[key[1]] // self.tile[1]
        wanted = [int(ty) * self._grid[1] + int(tx) for ty in np.unique(rows) for tx in np.unique(cols)]
        missing = [i for i in wanted if i not in self._cache]
        chunk_bytes = self.tile[0] * self.tile[1] * self._page.samplesperpixel * np.dtype(self._page.dtype).itemsize
        if len(missing) < 2 or len(wanted) * chunk_bytes > self._cache_limit:
            return
        raws = [self._read_raw(i) for i in missing]  # one thread reads the file, in chunk order
        for index, tile in zip(missing, _decode_pool(self.workers).map(self._decode, missing, raws), strict=True):
            self._store(index, tile)

    def __getitem__(self, key: Any) -> np.ndarray:
        th, tw = self.tile
        self._prefetch(key)

        def pixels(ty: int, tx: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return take_window(self._tile(ty, tx), rows - ty * th, cols - tx * tw)

        out = gather_by_tiles(self, key, pixels, self._page.samplesperpixel, self._page.dtype)
        return out if out.size == 0 else _to_rgb_uint8(out, self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, shape={self.shape}, tile={self.tile})"


def open_image(path: str | os.PathLike) -> np.ndarray | TiledTiffImage:
    """:func:`read_image_rgb`, except that a large tiled TIFF is opened lazily as a :class:`TiledTiffImage`.

    Large means more than :data:`LAZY_TIFF_PIXELS` pixels; the page must qualify (small tiles or strips,
    chunky, uint8/uint16), else the file is read whole as by :func:`read_image_rgb` (and its size limits
    apply). A page is refused above :data:`MAX_TILED_PIXELS` (a corrupt file or a decompression bomb).

    Raises:
        FileNotFoundError, ValueError: as :func:`read_image_rgb`.
    """
    path = Path(path)
    if path.suffix.lower() in _TIFF_SUFFIXES and path.is_file():
        width, height = image_size(path)
        if width * height > MAX_TILED_PIXELS:
            raise ValueError(
                f"{path}: the header claims {width}x{height} pixels, more than the limit of {MAX_TILED_PIXELS} "
                "(mssn_monai.io.MAX_TILED_PIXELS); refused without decoding (a corrupt file or a decompression bomb)"
            )
        if width * height > LAZY_TIFF_PIXELS:
            try:
                return TiledTiffImage(path)
            except ValueError:
                pass  # another layout (planar, float, one huge strip): the whole-image reader, with its limits
            except Exception as e:  # a corrupt header or tile table
                raise ValueError(f"{path}: cannot read image ({_one_line(e)})") from e
    return read_image_rgb(path)


def _to_rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Convert decoded pixels to ``(H, W, 3)`` uint8.

    uint8 is kept; uint16 is shifted by 8 bits; int16 (signed) has its negative values set to 0 and is
    then kept when it fits 8 bits (every value <= 255) or else shifted by 7 bits (32767 -> 255), with a
    warning naming the file; other integers are clipped to [0, 255]; floats in [0, 1] are scaled by 255,
    others clipped, NaN becomes 0.

    Raises:
        ValueError: an unsupported shape or pixel type; the message names the file.
    """
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
    if arr.dtype == np.int16:
        lo, hi = int(arr.min()), int(arr.max())
        a = np.maximum(arr, 0)
        fits = hi <= 255
        logger.warning(
            "%s: signed 16-bit pixels (range %d..%d): negative values set to 0, %s",
            path,
            lo,
            hi,
            "values kept as 8-bit (all <= 255)" if fits else "then scaled to 8 bits (value >> 7, 32767 -> 255)",
        )
        return (a if fits else a >> 7).astype(np.uint8)
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
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    files = [p for p in found if p.is_file()]
    for p in found:
        if not p.is_file() and not p.is_dir():  # a broken link or a special file: say so, never skip silently
            logger.warning("%s: not a readable file (broken link?), skipped", p)
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


CSV_COLUMN_NAMES = {
    "x": ("x", "col", "column", "cx", "x_px", "centroid_x", "x_coord", "xcoord"),
    "y": ("y", "row", "cy", "y_px", "centroid_y", "y_coord", "ycoord"),
    "score": ("score", "prob", "probability", "confidence", "conf", "p", "likelihood"),
}
"""Header cells :func:`read_detections_csv` recognises (case-insensitive) for each column."""

_CSV_COLUMN_OF = {name: column for column, names in CSV_COLUMN_NAMES.items() for name in names}


def _csv_header(cells: Sequence[str]) -> dict[str, int] | None:
    """``{"x": index, "y": index[, "score": index]}`` when every cell is a known column name, else ``None``."""
    columns = [_CSV_COLUMN_OF.get(c.strip().lower().replace(" ", "_")) for c in cells]
    if not cells or None in columns or "x" not in columns or "y" not in columns:
        return None
    if len(set(columns)) != len(columns):
        return None
    return {column: i for i, column in enumerate(columns)}


def read_detections_csv(path: str | os.PathLike, default_score: float = 1.0) -> np.ndarray:
    """Read rows ``x,y[,score]`` into an ``(N, 3)`` float array; a missing score is ``default_score``.

    The first non-blank line is a header only when every cell is a known column name (see
    :data:`CSV_COLUMN_NAMES`, e.g. ``x,y,score`` or ``y,x,probability``); its columns are then read by name,
    so their order does not matter. Without a header the rows are ``x,y`` or ``x,y,score``. Blank lines are
    skipped. Every other cell must be a finite number.

    Args:
        path: the CSV file (UTF-8, with or without a byte order mark).
        default_score: the score of rows without one.

    Returns:
        ``(N, 3)`` float64 array of ``x, y, score``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not a UTF-8 text file, or a line that is not a header nor finite numbers in the
            expected columns; the message names the file and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows: list[list[float]] = []
    header: dict[str, int] | None = None
    seen_content = False
    lineno = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                lineno = reader.line_num
                cells = [c.strip() for c in row]
                if not any(cells):
                    continue
                if seen_content:
                    rows.append(_csv_row(cells, header, default_score, f"{path}:{lineno}"))
                    continue
                seen_content = True
                header = _csv_header(cells)
                if header is None:
                    try:
                        rows.append(_csv_row(cells, None, default_score, f"{path}:{lineno}"))
                    except ValueError as e:
                        names = ", ".join(f"{k} ({'/'.join(v[1:4])}...)" for k, v in CSV_COLUMN_NAMES.items())
                        raise ValueError(f"{e}; a header must name each column: {names}") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not a UTF-8 text CSV file (byte {e.start}: {e.reason}); expected rows x,y,score"
        ) from e
    except csv.Error as e:
        raise ValueError(f"{path}:{lineno + 1}: not a readable CSV line ({e}); expected rows x,y,score") from e
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _csv_row(cells: Sequence[str], header: Mapping[str, int] | None, default_score: float, where: str) -> list[float]:
    if header is None:
        if len(cells) not in (2, 3):
            raise ValueError(
                f"{where}: expected 2 or 3 cells x,y[,score] (or a header such as x,y,score), got {len(cells)}: "
                f"{','.join(cells)[:200]!r}"
            )
        index = {"x": 0, "y": 1, "score": 2} if len(cells) == 3 else {"x": 0, "y": 1}
    else:
        index = {k: i for k, i in header.items() if i < len(cells)}  # a row may leave out a last score column
        if len(cells) > len(header) or not {"x", "y"} <= index.keys():
            raise ValueError(f"{where}: expected {len(header)} cells like the header, got {len(cells)}")
    values = []
    for column in ("x", "y", "score"):
        if column not in index:
            values.append(float(default_score))
            continue
        cell = cells[index[column]]
        try:
            value = float(cell)
        except ValueError:
            value = None
        if value is None or not np.isfinite(value):
            raise ValueError(f"{where}: {column} must be a finite number, got {cell[:100]!r}")
        values.append(value)
    return values


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read detections for many images, keyed by image stem.

    Args:
        path: a directory of ``<image stem>.csv`` files (read by :func:`read_detections_csv`), or one JSON
            file mapping an image name (stem or file name, with or without folders) to a list of
            ``[x, y, score]`` (or ``[x, y]``, score 1).

    Returns:
        ``{stem: (N, 3) float array}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a CSV or JSON entry that is not a list of finite ``[x, y, score]``; the message names
            the file (and the entry or line).
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
            if isinstance(dets, (str, bytes, dict)) or any(isinstance(v, (str, bool)) for v in _flat(dets)):
                raise ValueError("holds text or true/false")
            arr = np.asarray(dets, dtype=np.float64)
            if arr.size == 0:
                arr = arr.reshape(0, 3)
            if arr.ndim != 2 or arr.shape[1] not in (2, 3):
                raise ValueError(f"shape {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError("NaN or infinity")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: entry {name!r} is not a list of finite [x, y, score] ({e})") from e
        if arr.shape[1] == 2:
            arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
        out[Path(name).stem] = arr
    return out


def _flat(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat(v)
    else:
        yield value


def output_stems(files: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """``out / <image stem>`` for each image file, refusing before anything is written when two collide.

    The one output-naming rule of the CLI, the bundle's inference workflow and the apps: outputs are
    named by image stem, so two inputs with one stem (``a/01.tif`` and ``b/01.tif``, or ``field.png``
    and ``field.tif``) would overwrite each other's results; this names them all in one error instead.

    Raises:
        ValueError: two or more files share a stem.
    """
    seen: dict[str, list[str]] = {}
    for f in files:
        seen.setdefault(Path(f).stem, []).append(str(f))
    clashes = {stem: paths for stem, paths in seen.items() if len(paths) > 1}
    if clashes:
        listed = "; ".join(f"{stem}: {', '.join(paths)}" for stem, paths in list(clashes.items())[:3])
        raise ValueError(
            f"{len(clashes)} output name(s) would be shared by several inputs ({listed}); outputs are named "
            "by image stem, so run each folder separately or rename the files"
        )
    return [Path(out) / Path(f).stem for f in files]


def iter_images(
    files: Sequence[str | os.PathLike], desc: str = "images", lazy: bool = False
) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield ``(path, (H, W, 3) uint8 image)`` for each readable file, with a progress bar.

    A file that cannot be read is reported (one line naming it) and skipped; the others are still read.
    With ``lazy``, a large tiled TIFF comes as a :class:`TiledTiffImage` (:func:`open_image`).
    """
    from tqdm import tqdm

    for path in tqdm([Path(f) for f in files], desc=desc, unit="image", disable=len(files) < 2):
        try:
            image = open_image(path) if lazy else read_image_rgb(path)
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


def asap_xml(
    annotations: Sequence[Mapping[str, Any]],
    groups: Mapping[str, str],
    attributes: Mapping[str, Any] | None = None,
) -> str:
    """An ASAP XML document (``ASAP_Annotations``), built with :mod:`xml.etree.ElementTree` so every
    attribute is escaped and any XML parser reads it.

    Args:
        annotations: each ``{"name", "type" ("Dot", "Polygon", ...), "group", "color" ("#rrggbb"),
            "coordinates": [(x, y), ...]}`` in level-0 pixels.
        groups: ``{group name: "#rrggbb"}`` for ``AnnotationGroups``.
        attributes: extra attributes of the ``Annotations`` element (e.g. ``Name``, ``Model``).

    Returns:
        the document, with an XML declaration.
    """
    import xml.etree.ElementTree as ET

    root = ET.Element("ASAP_Annotations")
    parent = ET.SubElement(root, "Annotations", {k: str(v) for k, v in (attributes or {}).items()})
    for a in annotations:
        el = ET.SubElement(
            parent,
            "Annotation",
            {"Name": str(a["name"]), "Type": str(a["type"]), "PartOfGroup": str(a["group"]), "Color": str(a["color"])},
        )
        coords = ET.SubElement(el, "Coordinates")
        for i, point in enumerate(a["coordinates"]):
            ET.SubElement(coords, "Coordinate", {"Order": str(i), "X": str(point[0]), "Y": str(point[1])})
    group_el = ET.SubElement(root, "AnnotationGroups")
    for name, color in groups.items():
        g = ET.SubElement(group_el, "Group", {"Name": str(name), "PartOfGroup": "None", "Color": str(color)})
        ET.SubElement(g, "Attributes")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

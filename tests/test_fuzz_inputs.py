"""Property tests of the readers: any image or CSV either reads into a valid array or fails with one
``ValueError`` / ``FileNotFoundError`` that names the file, never another exception type."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mssn_monai.io import read_detections_csv, read_image_rgb

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

PIL_MODES = ("L", "LA", "RGB", "RGBA", "P")
TIFF_DTYPES = ("uint8", "uint16", "int16", "float32")


def _pixels(data, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        arr = rng.uniform(-0.5, 2.0, size=shape).astype(np.float32)
        arr[rng.random(shape) < 0.1] = np.nan
        return arr
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def _encoded_image(data) -> tuple[str, bytes]:
    fmt = data.draw(st.sampled_from(("png", "tif", "jpg")), label="format")
    height, width = data.draw(st.integers(1, 40), label="height"), data.draw(st.integers(1, 40), label="width")
    buf = io.BytesIO()
    if fmt == "tif":
        dtype = data.draw(st.sampled_from(TIFF_DTYPES), label="dtype")
        channels = data.draw(st.sampled_from((0, 3, 4)), label="channels")
        shape = (height, width) if channels == 0 else (height, width, channels)
        photometric = "minisblack" if channels == 0 else "rgb"
        extras = {"extrasamples": [2]} if channels == 4 else {}
        tifffile.imwrite(buf, _pixels(data, dtype, shape), photometric=photometric, **extras)
    else:
        mode = data.draw(st.sampled_from(PIL_MODES if fmt == "png" else ("L", "RGB")), label="mode")
        if fmt == "png" and data.draw(st.booleans(), label="sixteen_bit"):
            image = Image.fromarray(_pixels(data, "uint16", (height, width)))
        else:
            base = _pixels(data, "uint8", (height, width, 4))
            image = Image.fromarray(base, mode="RGBA").convert(mode)
        image.save(buf, format="PNG" if fmt == "png" else "JPEG")
    encoded = buf.getvalue()
    if data.draw(st.booleans(), label="truncate"):
        encoded = encoded[: data.draw(st.integers(0, max(0, len(encoded) - 1)), label="cut")]
    return fmt, encoded


@FUZZ
@given(st.data())
def test_read_image_rgb_returns_rgb_uint8_or_names_the_file(data):
    fmt, encoded = _encoded_image(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzzed_image.{fmt}"
        path.write_bytes(encoded)
        try:
            out = read_image_rgb(path)
        except (ValueError, FileNotFoundError) as e:
            assert "fuzzed_image" in str(e) and "\n" not in str(e), str(e)
            return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] >= 1 and out.shape[1] >= 1


_CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(("x", "y", "score", "X", "row", "col", "prob", "", " ", "nan", "inf", "-", "1e400", "abc")),
    st.text(max_size=6),
)
_ANY_ROWS = st.lists(st.lists(_CELLS, min_size=0, max_size=5).map(",".join), max_size=8).map("\n".join)
_NUMBER = st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr)
_HEADER = st.sampled_from(("", "x,y,score\n", "y,x,score\n", "X,Y\n", "row,col,prob\n", "x,y,label\n"))
_NUMBER_ROWS = st.tuples(_HEADER, st.lists(st.lists(_NUMBER, min_size=2, max_size=3).map(",".join), max_size=8)).map(
    lambda t: t[0] + "\n".join(t[1])
)
_ROWS = st.one_of(_ANY_ROWS, _NUMBER_ROWS)


@FUZZ
@given(text=_ROWS, raw=st.binary(max_size=40), binary=st.booleans())
def test_read_detections_csv_returns_finite_rows_or_names_the_file(text, raw, binary):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed_rows.csv"
        path.write_bytes(raw if binary else text.encode("utf-8", "surrogatepass"))
        try:
            out = read_detections_csv(path)
        except (ValueError, FileNotFoundError) as e:
            assert "fuzzed_rows.csv" in str(e), str(e)
            return
    assert out.dtype == np.float64 and out.ndim == 2 and out.shape[1] == 3 and np.isfinite(out).all()


@FUZZ
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    tile=st.sampled_from([16, 32, 48]),
    strips=st.booleans(),
    window=st.tuples(st.integers(-100, 100), st.integers(-100, 100), st.integers(1, 9)),
    seed=st.integers(0, 2**16),
)
def test_tiff_windows_read_by_chunks_equal_the_whole_image(h, w, tile, strips, window, seed):
    """Any slice of a TIFF read chunk by chunk (tiles or strips, edge chunks, steps) equals the whole read."""
    from mssn_monai.io import TiledTiffImage

    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.tif"
        layout = {"rowsperstrip": tile} if strips else {"tile": (tile, tile)}
        tifffile.imwrite(path, pixels, photometric="rgb", **layout)
        lazy = TiledTiffImage(path, cache_mb=0.005)
        start, stop, step = window
        rows, cols = slice(start, stop, step), slice(stop, None, step)
        np.testing.assert_array_equal(lazy[rows, cols], pixels[rows, cols])
        np.testing.assert_array_equal(lazy[::step, ::step], pixels[::step, ::step])
        lazy.close()

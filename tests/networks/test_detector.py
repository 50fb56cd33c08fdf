"""MSSNDetector: shape contract, TorchScript, tiles and seams, agreement with the stage-level pieces,
and its numpy face FieldDetector."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mssn_monai.checkpoints import DEFAULT_BUNDLE, load_network
from mssn_monai.data.datalist import load_datalist
from mssn_monai.io import read_image_rgb
from mssn_monai.keys import DetectionKeys
from mssn_monai.networks.detector import FieldDetector, MSSNDetector, detection_map_to_points
from mssn_monai.networks.fnr import MultiScaleFNR
from mssn_monai.networks.fpr import SiameseEmbedding
from mssn_monai.ops.peaks import find_peaks

CONFIG = DEFAULT_BUNDLE / "configs" / "inference.json"
SAMPLES = DEFAULT_BUNDLE / "samples" / "datalist.json"


@pytest.fixture(scope="module")
def shipped() -> MSSNDetector:
    return load_network(DEFAULT_BUNDLE / "models" / "model.pt", CONFIG, "network_def")


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """The first shipped sample field with at least one mitosis, and its mitoses ``(N, 2)``."""
    rec = next(r for r in load_datalist(SAMPLES, "testing") if len(r["mitoses"]))
    return read_image_rgb(rec["image"]), np.asarray(rec["mitoses"], dtype=np.float64)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255.0)


def _untrained() -> MSSNDetector:
    torch.manual_seed(0)
    return MSSNDetector(MultiScaleFNR(), SiameseEmbedding(), candidate_threshold=0.0).eval()


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (64, 97)])
def test_forward_shape_contract_any_size(shape):
    det = _untrained()
    with torch.no_grad():
        out = det(torch.rand(2, 3, *shape))
    assert out.shape == (2, 1, *shape) and out.dtype == torch.float32
    assert not out.any()  # an FPR without references keeps nothing


def test_untrained_fpr_votes_nothing_but_candidates_exist():
    with torch.no_grad():
        res = _untrained().detect(torch.rand(3, 64, 64), 0.25)
    assert len(res["candidates"]) > 0 and not res["voted"].any() and res["detections"].shape == (0, 3)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="spacing_um"):
        MSSNDetector(MultiScaleFNR(), SiameseEmbedding(), spacing_um=0.0)
    with pytest.raises(ValueError, match="tile_px"):
        MSSNDetector(MultiScaleFNR(), SiameseEmbedding(), tile_px=2)
    with pytest.raises(ValueError, match="operating_threshold"):
        MSSNDetector(MultiScaleFNR(), SiameseEmbedding(), operating_threshold=1.5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _untrained()(torch.rand(3, 8, 8))


def test_detection_map_round_trip():
    m = torch.zeros(1, 6, 7)
    m[0, 2, 5], m[0, 4, 1], m[0, 0, 0] = 0.5, 0.9, 0.5
    pts = detection_map_to_points(m)
    assert pts.tolist() == [[1.0, 4.0, 0.8999999761581421], [0.0, 0.0, 0.5], [5.0, 2.0, 0.5]]


def test_candidates_equal_stage_one_numpy_path(shipped, sample):
    """detect's candidates = candidates() = the numpy peak finder on the whole-image fused map."""
    image, _ = sample
    x = _chw(image)
    with torch.no_grad():
        res = shipped.detect(x, 0.2455)
        alone = shipped.candidates(x, 0.2455)
        whole = shipped.fnr(x.unsqueeze(0))["fused"][0, 0].numpy()  # untiled
    ref = find_peaks(whole, shipped.candidate_threshold, shipped.min_distance_um / 0.2455, stride=4)
    assert torch.equal(res["candidates"], alone)
    np.testing.assert_allclose(res["candidates"].double().numpy(), ref, atol=1e-6)
    assert len(ref) > 0


def test_stage1_maps_shapes_and_fused_is_max(shipped):
    x = torch.rand(3, 37, 130, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = shipped.stage1_maps(x)
        whole = shipped.fnr(x.unsqueeze(0))
    assert set(maps) == set(whole) and "fused" in maps
    for name, m in maps.items():
        assert m.shape == (10, 33) and m.dtype == torch.float32, name
        torch.testing.assert_close(m, whole[name][0, 0], atol=1e-5, rtol=0)
    subs = torch.stack([m for name, m in maps.items() if name != "fused"])
    assert torch.equal(maps["fused"], subs.amax(0))


def test_peaks_of_a_map_follow_threshold_distance_and_spacing():
    det = MSSNDetector(MultiScaleFNR(), SiameseEmbedding(), candidate_threshold=0.5, min_distance_um=4.0)
    m = torch.zeros(10, 12)
    m[2, 3], m[2, 6], m[7, 9], m[5, 1] = 0.9, 0.8, 0.7, 0.4  # (2, 6) is 12 px from (2, 3); 0.4 < threshold
    far = det.peaks(m, 0.25)  # 4 um = 16 px: the 0.8 peak is too close to the 0.9 one
    assert far.dtype == m.dtype  # find_peaks_torch keeps a float map's dtype
    np.testing.assert_allclose(far.numpy(), [[12.0, 8.0, 0.9], [36.0, 28.0, 0.7]], rtol=1e-6)
    near = det.peaks(m, 1.0)  # 4 um = 4 px: both kept, by descending probability
    np.testing.assert_allclose(near.numpy(), [[12.0, 8.0, 0.9], [24.0, 8.0, 0.8], [36.0, 28.0, 0.7]], rtol=1e-6)
    for spacing in (0.25, 1.0):
        np.testing.assert_array_equal(
            det.peaks(m, spacing).numpy(), find_peaks(m.numpy(), 0.5, 4.0 / spacing, stride=4)
        )
    with pytest.raises(ValueError, match="spacing_um"):
        det.peaks(m, 0.0)


def test_forward_map_holds_the_detections(shipped, sample):
    image, _ = sample
    x = _chw(image)
    every_vote = MSSNDetector(shipped.fnr, shipped.fpr, operating_threshold=0.0).eval()
    with torch.no_grad():
        res = every_vote.detect(x, every_vote.spacing_um)
        pts = detection_map_to_points(every_vote(x.unsqueeze(0))[0])
    det = res["detections"].double()
    order = np.lexsort((det[:, 0].numpy(), det[:, 1].numpy(), -det[:, 2].numpy()))
    np.testing.assert_allclose(pts.numpy(), det.numpy()[order], atol=1e-7)
    assert len(det) > 0


def test_uint8_input_gives_the_same_detections(shipped, sample):
    image, _ = sample
    u8 = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    with torch.no_grad():
        a = shipped.detect(u8, 0.2455)
        b = shipped.detect(_chw(image), 0.2455)
    assert torch.equal(a["candidates"], b["candidates"]) and torch.allclose(a["votes"], b["votes"], atol=1e-6)


def test_torchscript_equals_eager(shipped, sample):
    image, _ = sample
    x = _chw(image)[:, :384, :384]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(shipped)
    with torch.no_grad():
        a, b = shipped.detect(x, 0.2455), scripted.detect(x, 0.2455)
        map_a, map_b = shipped(x.unsqueeze(0)), scripted(x.unsqueeze(0))
    assert torch.equal(map_a > 0, map_b > 0)
    torch.testing.assert_close(map_a, map_b, rtol=0, atol=1e-5)  # float rounding: the JIT reorders ops
    for key in ("candidates", "voted", "keep"):
        assert torch.equal(a[key], b[key]), key
    for key in ("votes", "probability", "detections"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_mitoses_on_tile_seams_are_reported_once(shipped, sample):
    """Crop the field so that each mitosis in turn lies on a vertical and a horizontal tile seam."""
    image, mitoses = sample
    tile = 128
    for mx, my in mitoses:
        x0, y0 = max(int(mx) - tile, 0) // 4 * 4, max(int(my) - tile, 0) // 4 * 4
        crop = _chw(image)[:, y0 : y0 + 2 * tile + 64, x0 : x0 + 2 * tile + 64]
        whole = MSSNDetector(shipped.fnr, shipped.fpr, tile_px=4096).eval()
        tiled = MSSNDetector(shipped.fnr, shipped.fpr, tile_px=tile).eval()
        with torch.no_grad():
            a, b = whole.detect(crop, 0.2455), tiled.detect(crop, 0.2455)
        np.testing.assert_allclose(a["candidates"].numpy(), b["candidates"].numpy(), atol=1e-6)
        assert torch.equal(a["keep"], b["keep"])
        near = np.hypot(b["candidates"][:, 0].numpy() + x0 - mx, b["candidates"][:, 1].numpy() + y0 - my) < 8 / 0.2455
        assert near.sum() == 1, (mx, my, near.sum())  # found, and exactly once


# ---------------------------------------------------------------- FieldDetector, the numpy face


def test_field_detector_equals_detect_on_the_tensor(shipped, sample):
    """uint8 HWC field -> the detector's detect on uint8 / 255, as numpy (float64, bool masks)."""
    image, _ = sample
    fields = FieldDetector(shipped)
    got = fields(image, 0.2455)
    with torch.no_grad():
        ref = shipped.detect(_chw(image), 0.2455)
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key].dtype == (np.float64 if value.is_floating_point() else bool), key
        np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)
    np.testing.assert_array_equal(fields.candidates(image, 0.2455), got[DetectionKeys.CANDIDATES])
    assert fields.settings == {
        **shipped.settings(),
        "stain_normalization": False,
        "stage1_bf16": False,
        "int8": False,
    }


def test_field_detector_applies_the_normaliser_first_and_restores_the_mode(shipped, sample):
    image, _ = sample
    image = image[:200, :200]
    seen = []

    def darker(field: torch.Tensor) -> torch.Tensor:
        seen.append(field.clone())
        return field * 0.9

    fields = FieldDetector(shipped, darker)
    prepared = fields.prepare(image)
    torch.testing.assert_close(seen[0], _chw(image), atol=0, rtol=0)
    torch.testing.assert_close(prepared, _chw(image) * 0.9, atol=0, rtol=0)
    shipped.train()
    try:
        got = fields.candidates(image, 0.2455)
        assert shipped.training  # given back in the mode it had
    finally:
        shipped.eval()
    with torch.no_grad():
        ref = shipped.candidates(_chw(image) * 0.9, 0.2455)
    np.testing.assert_array_equal(got, ref.numpy())
    assert fields.settings["stain_normalization"] is True
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        fields.prepare(image[..., 0])


# ---------------------------------------------------------------- FieldDetector streams a field in blocks


def _small_tiles(shipped: MSSNDetector, tile_px: int = 128) -> MSSNDetector:
    """The shipped weights with small tiles, so a small field spans several blocks."""
    return MSSNDetector(shipped.fnr, shipped.fpr, tile_px=tile_px).eval()


@pytest.fixture(scope="module")
def crop_with_mitosis(sample) -> np.ndarray:
    """A 450x390 crop of the sample around its first mitosis: several 128-px blocks, a mitosis inside."""
    image, mitoses = sample
    x, y = mitoses[0]
    y0 = int(np.clip(y - 200, 0, image.shape[0] - 450))
    x0 = int(np.clip(x - 170, 0, image.shape[1] - 390))
    return np.ascontiguousarray(image[y0 : y0 + 450, x0 : x0 + 390])


def test_blocks_equal_the_whole_field(shipped, crop_with_mitosis):
    """Stage 1 streamed in 128-px blocks equals the whole-field map bit for bit; the votes to rounding."""
    det, image = _small_tiles(shipped), crop_with_mitosis
    fields = FieldDetector(det, block_px=128)
    with torch.no_grad():
        ref_map = det.stage1_maps(_chw(image))["fused"]
        ref = det.detect(_chw(image), 0.2455)
    torch.testing.assert_close(fields.fused_map(image), ref_map, atol=0, rtol=0)
    got = fields(image, 0.2455)
    np.testing.assert_array_equal(got["candidates"], ref["candidates"].numpy())
    np.testing.assert_allclose(got["votes"], ref["votes"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(got["keep"], ref["keep"].numpy())
    blocks = {(int(x) // 128, int(y) // 128) for x, y, _ in got["candidates"]}
    assert got["keep"].any() and len(blocks) >= 3  # a real case: something kept, candidates in several blocks


def test_blocks_with_a_subsampled_stain_fit_equal_the_whole_field(shipped, crop_with_mitosis):
    """The normaliser fitted once on a regular subsample, applied block by block = normalising the whole field."""
    from mssn_monai.transforms import NormalizeHEStain

    det, image = _small_tiles(shipped), crop_with_mitosis
    norm = NormalizeHEStain(target_white=0.95, max_fit_pixels=20_000)  # 450x390 -> every 3rd row and column
    fields = FieldDetector(det, norm, block_px=256)
    with torch.no_grad():
        ref = det.detect(torch.as_tensor(norm(_chw(image))), 0.2455)
    got = fields(image, 0.2455)
    np.testing.assert_allclose(got["candidates"], ref["candidates"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got["votes"], ref["votes"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(got["keep"], ref["keep"].numpy())


def test_block_size_must_be_a_multiple_of_the_tile(shipped):
    det = _small_tiles(shipped)
    for bad in (64, 200, 0, True, 256.0):
        with pytest.raises(ValueError, match="block_px"):
            FieldDetector(det, block_px=bad)
    assert FieldDetector(det).block_px == 2048  # BLOCK_PX, a multiple of this detector's 128-px tile
    assert FieldDetector(shipped).block_px == 2048 and shipped.tile_cells * 4 == 1024  # the shipped defaults


def test_blocks_read_from_a_tiled_tiff_equal_the_array(shipped, crop_with_mitosis, tmp_path):
    """A TiledTiffImage (read by tiles as blocks ask) gives the detections of the same pixels in memory."""
    import tifffile

    from mssn_monai.io import TiledTiffImage

    tifffile.imwrite(tmp_path / "f.tif", crop_with_mitosis, tile=(64, 64), photometric="rgb")
    fields = FieldDetector(_small_tiles(shipped), block_px=128)
    got, ref = fields(TiledTiffImage(tmp_path / "f.tif"), 0.2455), fields(crop_with_mitosis, 0.2455)
    for key, value in ref.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def _by_position(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return rows[np.lexsort((rows[:, 0], rows[:, 1]))]


def test_detect_blocks_each_on_its_own_equal_the_whole_field(shipped, crop_with_mitosis):
    """Blocks run separately (any order, any subset: what a resumed slide run does) give the whole field's
    candidates and detections: a mitosis on a block seam is found by exactly one block."""
    image = crop_with_mitosis
    fields = FieldDetector(_small_tiles(shipped), block_px=128)
    ref = fields(image, 0.2455)
    grid = fields.block_grid(*image.shape[:2])
    order = [(i, j) for i in range(grid[0]) for j in range(grid[1])][::-1]
    parts = dict(fields.detect_blocks(image, 0.2455, blocks=order))
    assert sorted(parts) == sorted(order)
    cand = np.concatenate([p["candidates"] for p in parts.values()])
    got = np.concatenate([p["detections"] for p in parts.values()])
    np.testing.assert_allclose(_by_position(cand), _by_position(ref["candidates"]), atol=1e-6)
    np.testing.assert_allclose(_by_position(got), _by_position(ref["detections"]), atol=1e-5)
    seams = [x for x, y, _ in cand if min(x % 128, y % 128) < 24 or max(x % 128, y % 128) > 104]
    assert len(ref["detections"]) and seams  # a real case: detections, and candidates near block seams
    # one block alone gives what it gave in the full run
    (i, j) = order[3]
    alone = dict(fields.detect_blocks(image, 0.2455, blocks=[(i, j)]))
    np.testing.assert_array_equal(alone[(i, j)]["detections"], parts[(i, j)]["detections"])
    with pytest.raises(ValueError, match="outside the"):
        list(fields.detect_blocks(image, 0.2455, blocks=[(grid[0], 0)]))


def test_a_field_normalised_once_equals_one_normalised_block_by_block(shipped, crop_with_mitosis, monkeypatch):
    """A small in-memory field is stain-normalised once and cropped from; a large one block by block as it is
    read: normalisation is pixel by pixel, so both give exactly the same detections."""
    import mssn_monai.networks.detector as detector_module
    from mssn_monai.transforms import NormalizeHEStain

    fields = FieldDetector(_small_tiles(shipped), NormalizeHEStain(), block_px=128)
    once = fields(crop_with_mitosis, 0.2455)
    monkeypatch.setattr(detector_module, "WHOLE_FIELD_MAX_PX", 0)
    streamed = fields(crop_with_mitosis, 0.2455)
    assert len(once["candidates"]) > 0
    for key, value in streamed.items():
        np.testing.assert_array_equal(once[key], value, err_msg=key)


def test_stage1_in_bfloat16_moves_the_map_by_little(shipped, sample):
    image = sample[0][:512, :512]
    fp32, bf16 = FieldDetector(shipped), FieldDetector(shipped, stage1_bf16=True)
    a, b = fp32.fused_map(image), bf16.fused_map(image)
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    diff = (a - b).abs()
    assert float(diff.max()) > 0 and float(diff.mean()) < 0.005  # bfloat16 did run, and stays close on average
    assert bf16.settings["stage1_bf16"] is True and fp32.settings["stage1_bf16"] is False


class _CountingReader:
    """A lazily read field (not a numpy array) that counts the windows read from it."""

    def __init__(self, image: np.ndarray) -> None:
        self.image, self.shape, self.ndim, self.windows = image, image.shape, image.ndim, 0

    def __getitem__(self, key):
        self.windows += 1
        return self.image[key]


def test_detect_blocks_reads_each_block_once(shipped, crop_with_mitosis):
    """The vote box of a block is cut from the window its stage 1 read (not read and normalised again)."""
    from mssn_monai.transforms import NormalizeHEStain

    fields = FieldDetector(_small_tiles(shipped), NormalizeHEStain(), block_px=128)
    lazy = _CountingReader(crop_with_mitosis)
    got = dict(fields.detect_blocks(lazy, 0.2455))
    # the stain fit's subsample, then at most one window per block (a window inside the last one is cut from it)
    assert sum(len(r["candidates"]) > 0 for r in got.values()) >= 2 and lazy.windows <= 1 + len(got)
    ref = dict(fields.detect_blocks(crop_with_mitosis, 0.2455))
    assert any(len(r["candidates"]) for r in ref.values())
    for block, result in ref.items():
        for key, value in result.items():
            np.testing.assert_array_equal(got[block][key], value, err_msg=f"{block} {key}")


def test_detect_blocks_on_allowed_cells_only(shipped, crop_with_mitosis):
    """With a mask of allowed map cells (a slide's tissue), stage 1 runs over boxes around each block's
    allowed cells and proposes candidates there only: every cell allowed gives exactly the unmasked result;
    the left half allowed gives the same candidates well inside it and none outside; a block with no allowed
    cell is not read at all."""
    image = crop_with_mitosis
    fields = FieldDetector(_small_tiles(shipped), block_px=128)
    ref = dict(fields.detect_blocks(image, 0.2455))
    every = dict(fields.detect_blocks(image, 0.2455, cells=lambda r0, r1, c0, c1: np.ones((r1 - r0, c1 - c0), bool)))
    for block, result in ref.items():
        for key, value in result.items():
            np.testing.assert_array_equal(every[block][key], value, err_msg=f"{block} {key}")
    half_px = 4 * (image.shape[1] // 8)  # the allowed cells: x < half_px

    def left(r0, r1, c0, c1):
        return np.broadcast_to(4 * np.arange(c0, c1) < half_px, (r1 - r0, c1 - c0))

    masked = dict(fields.detect_blocks(image, 0.2455, cells=left))
    cand_ref = np.concatenate([r["candidates"] for r in ref.values()])
    cand = np.concatenate([r["candidates"] for r in masked.values()])
    assert len(cand) and (cand[:, 0] < half_px).all()
    inner = cand_ref[cand_ref[:, 0] < half_px - 40]  # farther than a peak's reach from the mask's edge
    assert len(inner) and len(cand_ref) > len(inner)
    np.testing.assert_allclose(_by_position(cand[cand[:, 0] < half_px - 40]), _by_position(inner), atol=1e-6)
    lazy = _CountingReader(image)
    none = dict(fields.detect_blocks(lazy, 0.2455, cells=lambda r0, r1, c0, c1: np.zeros((r1 - r0, c1 - c0), bool)))
    assert lazy.windows == 0 and all(len(r["candidates"]) == len(r["detections"]) == 0 for r in none.values())
    with pytest.raises(ValueError, match="must be a"):
        list(fields.detect_blocks(image, 0.2455, cells=lambda r0, r1, c0, c1: np.ones((2, 2), bool)))


def test_detect_blocks_computes_separate_boxes_for_distant_tissue(shipped, crop_with_mitosis, monkeypatch):
    """Two groups of allowed cells far apart in one block (two tissue islands) are computed as two boxes
    (:func:`~mssn_monai.ops.tissue.cell_boxes`), not their common bounding box: fewer pixels are read and
    the result is exactly the bounding box's."""
    import mssn_monai.networks.detector as detector_module
    from mssn_monai.ops.tissue import cell_boxes

    image = crop_with_mitosis  # 450 wide, 390 high: with 512-px blocks, one block
    fields = FieldDetector(_small_tiles(shipped), block_px=512)

    def islands(r0, r1, c0, c1):
        rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        return ((rr < 30) & (cc < 30)) | ((rr >= 65) & (cc >= 80))  # map cells: two corners of the field

    class Windows(_CountingReader):
        def __getitem__(self, key):
            self.pixels = getattr(self, "pixels", 0) + len(range(*key[0].indices(self.shape[0]))) * len(
                range(*key[1].indices(self.shape[1]))
            )
            return super().__getitem__(key)

    boxed = Windows(image)
    got = dict(fields.detect_blocks(boxed, 0.2455, cells=islands))
    monkeypatch.setattr(
        detector_module, "cell_boxes", lambda allowed, context=0: cell_boxes(allowed, context, max_boxes=1)
    )
    whole = Windows(image)
    ref = dict(fields.detect_blocks(whole, 0.2455, cells=islands))
    assert boxed.windows == 2 and whole.windows == 1 and boxed.pixels < 0.8 * whole.pixels
    assert any(len(r["candidates"]) for r in ref.values())
    for block, result in ref.items():
        for key, value in result.items():
            np.testing.assert_array_equal(got[block][key], value, err_msg=f"{block} {key}")

"""PatchSampleDataset: exact centres, class plan, keyed determinism, exclusion, hard negatives, borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from torch.utils.data import DataLoader

from mssn_monai.data.patches import PatchSampleDataset
from mssn_monai.io import write_image
from mssn_monai.keys import PatchClass, PatchKeys
from mssn_monai.transforms import RandHEStainJitterd

SPACING = 0.25  # um/px: exclusion 8 um = 32 px


def _write(tmp_path, name: str, image: np.ndarray) -> str:
    path = tmp_path / f"{name}.png"
    write_image(path, image)
    return str(path)


def _marked_image(points, size=(64, 80), value=200) -> np.ndarray:
    """``(H, W, 3)`` uint8 grey-ish gradient with one pure white pixel at each integer ``(x, y)``."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (np.arange(w)[None, :] * 2) % 100
    img[..., 1] = (np.arange(h)[:, None] * 3) % 100
    img[..., 2] = 50
    for x, y in points:
        img[y, x] = value
    return img


@pytest.fixture
def records(tmp_path):
    mitoses_a = [[20, 30], [60, 12]]
    mimics_a = [[40, 50]]
    a = _write(tmp_path, "a", _marked_image(mitoses_a + mimics_a))
    b = _write(tmp_path, "b", _marked_image([], size=(48, 48)))
    return [
        {"image": a, "mitoses": mitoses_a, "mimics": mimics_a, "spacing": SPACING},
        {"image": b, "mitoses": [], "mimics": [], "spacing": SPACING},
    ]


def _centre(patch: torch.Tensor) -> torch.Tensor:
    s = patch.shape[-1]
    return patch[:, s // 2, s // 2]


def test_exact_centre_without_jitter(records):
    ds = PatchSampleDataset(records, patch_size=16, samples_per_epoch=64, positive_fraction=0.5, jitter_px=0.0)
    classes = ds.classes()
    seen = set()
    for i in np.flatnonzero(classes != PatchClass.BACKGROUND):
        s = ds[int(i)]
        assert s[PatchKeys.IMAGE].shape == (3, 16, 16) and s[PatchKeys.IMAGE].dtype == torch.float32
        torch.testing.assert_close(_centre(s[PatchKeys.IMAGE]), torch.full((3,), 200 / 255))
        assert s[PatchKeys.IMAGE_INDEX] == 0
        seen.add(tuple(s[PatchKeys.POINT].tolist()))
        assert float(s[PatchKeys.LABEL]) == (1.0 if int(s[PatchKeys.CLASS]) == PatchClass.MITOSIS else 0.0)
    assert seen == {(20.0, 30.0), (60.0, 12.0), (40.0, 50.0)}


def test_point_is_rounded_centre_pixel(tmp_path):
    img = _marked_image([(10, 7)], size=(20, 20))
    rec = [{"image": _write(tmp_path, "r", img), "mitoses": [[9.5, 6.6]], "spacing": SPACING}]
    ds = PatchSampleDataset(
        rec, patch_size=8, samples_per_epoch=4, positive_fraction=1.0, mimic_fraction=0.0, jitter_px=0.0
    )
    s = ds[0]
    assert s[PatchKeys.POINT].tolist() == [10.0, 7.0]  # halves up, as extract_patch
    torch.testing.assert_close(_centre(s[PatchKeys.IMAGE]), torch.full((3,), 200 / 255))


def test_class_fractions_are_exact_per_epoch(records):
    ds = PatchSampleDataset(records, patch_size=8, samples_per_epoch=200, positive_fraction=0.5, mimic_fraction=0.25)
    counts = np.bincount(ds.classes(), minlength=3)
    assert counts.tolist() == [50, 100, 50]
    sampled = np.bincount([int(ds[i][PatchKeys.CLASS]) for i in range(0, 200, 10)], minlength=3)
    assert sampled.tolist() == np.bincount(ds.classes()[::10], minlength=3).tolist()


def test_no_mimics_falls_back_to_background(records):
    no_mimics = [{**r, "mimics": []} for r in records]
    ds = PatchSampleDataset(no_mimics, patch_size=8, samples_per_epoch=40, positive_fraction=0.5, mimic_fraction=0.25)
    assert np.bincount(ds.classes(), minlength=3).tolist() == [20, 20, 0]


def test_determinism_by_seed_and_epoch(records):
    kw = dict(patch_size=16, samples_per_epoch=16, jitter_px=5.0)
    a, b = PatchSampleDataset(records, seed=3, **kw), PatchSampleDataset(records, seed=3, **kw)
    b.set_epoch(0)
    for i in (5, 0, 11):  # any order gives the same item
        for key in (PatchKeys.IMAGE, PatchKeys.POINT, PatchKeys.CLASS):
            torch.testing.assert_close(a[i][key], b[i][key])
    first = [a[i][PatchKeys.POINT] for i in range(16)]
    a.set_epoch(1)
    assert a.epoch == 1
    second = [a[i][PatchKeys.POINT] for i in range(16)]
    assert not all(torch.equal(p, q) for p, q in zip(first, second, strict=True))
    assert not np.array_equal(a.classes(0), a.classes(1))
    other_seed = PatchSampleDataset(records, seed=4, **kw)
    assert not all(torch.equal(p, other_seed[i][PatchKeys.POINT]) for i, p in enumerate(first))


def test_background_respects_exclusion_and_jitter_disc(records):
    ds = PatchSampleDataset(records, patch_size=8, samples_per_epoch=120, jitter_px=6.0, nuclei_fraction=0.5)
    mitoses = np.array(records[0]["mitoses"], float)
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(120):
            s = ds[i]
            p = s[PatchKeys.POINT].numpy()
            if s[PatchKeys.IMAGE_INDEX] == 0:
                dist = np.hypot(*(mitoses - p).T).min()
                if s[PatchKeys.CLASS] == PatchClass.BACKGROUND:
                    assert dist >= 8.0 / SPACING
                elif s[PatchKeys.CLASS] == PatchClass.MITOSIS:
                    assert dist <= 6.0 + 0.5 * np.sqrt(2)  # disc radius plus rounding


def test_hard_negatives_added_deduplicated_and_sampled(records):
    ds = PatchSampleDataset(
        records, patch_size=8, samples_per_epoch=200, positive_fraction=0.0, mimic_fraction=0.5, jitter_px=0.0
    )
    # (30.5, 11) is 1.1 px from (30, 10) added just before it: a duplicate within one call
    assert ds.add_hard_negatives(1, [[30, 10], [30.5, 11], [10, 40]]) == 2
    # (42, 50) is 2 px from the annotated mimic (40, 50); (21, 30) is 1 px from a mitosis
    assert ds.add_hard_negatives(0, [[42, 50], [21, 30], [5, 60]]) == 1
    assert ds.add_hard_negatives(0, [[7, 61]]) == 0  # 2.2 px from the hard negative (5, 60)
    hn = ds.hard_negatives
    np.testing.assert_array_equal(hn[1], [[30, 10], [10, 40]])
    np.testing.assert_array_equal(hn[0], [[5, 60]])
    hn[0][0] = -1  # a copy: the dataset is unchanged
    assert ds.hard_negatives[0][0, 0] == 5
    assert set(hn) == {0, 1}
    points = {
        (int(s[PatchKeys.IMAGE_INDEX]), *s[PatchKeys.POINT].tolist())
        for s in (ds[i] for i in np.flatnonzero(ds.classes() == PatchClass.MIMIC))
    }
    assert points == {(0, 40.0, 50.0), (0, 5.0, 60.0), (1, 30.0, 10.0), (1, 10.0, 40.0)}
    with pytest.raises(IndexError, match="image_index must be an int in \\[0, 2\\), got 2"):
        ds.add_hard_negatives(2, [[1, 1]])
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        ds.add_hard_negatives(0, [1, 2, 3])


def test_hard_negatives_enable_mimic_fraction(records):
    no_mimics = [{**r, "mimics": []} for r in records]
    ds = PatchSampleDataset(no_mimics, patch_size=8, samples_per_epoch=20, positive_fraction=0.5, mimic_fraction=0.5)
    assert (ds.classes() == PatchClass.MIMIC).sum() == 0
    ds.add_hard_negatives(1, [[3, 3]])
    assert (ds.classes() == PatchClass.MIMIC).sum() == 10


def test_border_patch_uses_symmetric_rule(tmp_path):
    img = np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3)
    rec = [{"image": _write(tmp_path, "corner", img), "mitoses": [[0, 0]], "spacing": SPACING}]
    ds = PatchSampleDataset(
        rec, patch_size=8, samples_per_epoch=2, positive_fraction=1.0, mimic_fraction=0.0, jitter_px=0.0
    )
    patch = ds[0][PatchKeys.IMAGE]
    padded = np.pad(img.transpose(2, 0, 1), ((0, 0), (4, 3), (4, 3)), mode="symmetric")[:, :8, :8]
    np.testing.assert_allclose(patch.numpy(), padded / 255.0, atol=1e-7)
    assert ds[0][PatchKeys.POINT].tolist() == [0.0, 0.0]


def test_scale_jitter_keeps_centre(records):
    ds = PatchSampleDataset(
        records,
        patch_size=16,
        samples_per_epoch=32,
        positive_fraction=1.0,
        mimic_fraction=0.0,
        jitter_px=0.0,
        scale_range=(0.6, 1.6),
    )
    plain = PatchSampleDataset(
        records, patch_size=16, samples_per_epoch=32, positive_fraction=1.0, mimic_fraction=0.0, jitter_px=0.0
    )
    differs = False
    for i in range(8):
        s = ds[i]
        torch.testing.assert_close(_centre(s[PatchKeys.IMAGE]), torch.full((3,), 200 / 255))
        assert 0.0 <= float(s[PatchKeys.IMAGE].min()) and float(s[PatchKeys.IMAGE].max()) <= 1.0
        differs |= not torch.allclose(s[PatchKeys.IMAGE], plain[i][PatchKeys.IMAGE])
    assert differs
    unit = PatchSampleDataset(
        records,
        patch_size=16,
        samples_per_epoch=4,
        positive_fraction=1.0,
        mimic_fraction=0.0,
        jitter_px=0.0,
        scale_range=(1.0, 1.0),
    )
    torch.testing.assert_close(unit[0][PatchKeys.IMAGE], plain[0][PatchKeys.IMAGE])


def test_dataloader_collation_and_transform(records):
    transform = Compose([RandHEStainJitterd(PatchKeys.IMAGE)])
    ds = PatchSampleDataset(records, patch_size=16, samples_per_epoch=10, transform=transform, seed=1)
    batch = next(iter(DataLoader(ds, batch_size=5, num_workers=0)))
    assert batch[PatchKeys.IMAGE].shape == (5, 3, 16, 16)
    assert batch[PatchKeys.LABEL].shape == (5, 1) and batch[PatchKeys.LABEL].dtype == torch.float32
    assert batch[PatchKeys.CLASS].shape == (5,) and batch[PatchKeys.CLASS].dtype == torch.int64
    assert batch[PatchKeys.POINT].shape == (5, 2)
    assert batch[PatchKeys.IMAGE_INDEX].dtype == torch.int64
    again = PatchSampleDataset(records, patch_size=16, samples_per_epoch=10, transform=transform, seed=1)
    torch.testing.assert_close(again[3][PatchKeys.IMAGE], ds[3][PatchKeys.IMAGE])  # augmentation is keyed too


def test_field_transform_and_no_cache(records):
    calls = []

    def invert(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return 1.0 - x

    ds = PatchSampleDataset(
        records,
        patch_size=8,
        samples_per_epoch=4,
        positive_fraction=1.0,
        mimic_fraction=0.0,
        jitter_px=0.0,
        field_transform=invert,
    )
    s = ds[0]
    torch.testing.assert_close(_centre(s[PatchKeys.IMAGE]), torch.full((3,), 55 / 255))
    ds[1]
    assert calls == [(3, 64, 80)]  # once per image with the cache
    uncached = PatchSampleDataset(
        records, patch_size=8, samples_per_epoch=4, positive_fraction=1.0, mimic_fraction=0.0, cache=False
    )
    uncached[0]
    assert uncached._fields == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 15}, "patch_size must be an even int >= 8"),
        ({"patch_size": 6}, "patch_size must be an even int >= 8"),
        ({"positive_fraction": 0.8, "mimic_fraction": 0.3}, "positive_fraction \\+ mimic_fraction must be <= 1"),
        ({"scale_range": (0.2, 1.0)}, "scale_range must be"),
        ({"seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_bad_knobs(records, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PatchSampleDataset(records, **kwargs)


def test_records_without_mitoses(records):
    negatives = [records[1]]
    with pytest.raises(ValueError, match="none of the 1 records has a mitosis"):
        PatchSampleDataset(negatives)
    ds = PatchSampleDataset(negatives, patch_size=8, samples_per_epoch=6, positive_fraction=0.0, mimic_fraction=0.0)
    assert {int(ds[i][PatchKeys.CLASS]) for i in range(6)} == {0}


def test_point_outside_image_raises_naming_file(records):
    bad = [{**records[0], "mitoses": [[500, 3]]}]
    ds = PatchSampleDataset(bad, patch_size=8, samples_per_epoch=2, positive_fraction=1.0, mimic_fraction=0.0)
    with pytest.raises(ValueError, match=r"a\.png: mitosis point \(x=500, y=3\) is outside the image of 80x64 px"):
        ds[0]


def test_state_dict_round_trip_and_image(records, tmp_path):
    ds = PatchSampleDataset(records, patch_size=8, samples_per_epoch=8)
    ds.add_hard_negatives(1, [[3, 4], [30, 20]])
    ds.set_epoch(5)
    torch.save(ds.state_dict(), tmp_path / "state.pt")
    fresh = PatchSampleDataset(records, patch_size=8, samples_per_epoch=8)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.epoch == 5
    np.testing.assert_array_equal(fresh.hard_negatives[1], [[3, 4], [30, 20]])
    torch.testing.assert_close(fresh[2][PatchKeys.IMAGE], ds[2][PatchKeys.IMAGE])
    with pytest.raises(ValueError, match="hard negatives for 2 images but this dataset has 1"):
        PatchSampleDataset(records[:1], patch_size=8).load_state_dict(ds.state_dict())
    image = ds.image(1)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert ds.data[0]["mitoses"] == records[0]["mitoses"] and ds.data[0] is not records[0]
    with pytest.raises(IndexError, match="got 2"):
        ds.image(2)


def test_downsample_samples_the_reduced_field_at_converted_points(tmp_path):
    """``downsample=2``: the field is the mean of its 2x2 blocks, the points move to the reduced grid
    (``(x + 0.5) / 2 - 0.5``), the spacing doubles, and mined points given at full resolution are converted."""
    from mssn_monai.ops.intensity import to_uint8
    from mssn_monai.ops.resample import downsample_mean

    img = np.zeros((40, 48, 3), np.uint8)
    img[20:22, 30:32] = 200  # one 2x2 block: the reduced pixel (15, 10)
    img[..., 2] += np.arange(48, dtype=np.uint8)[None, :]  # a gradient, so the reduction is checked exactly
    rec = [{"image": _write(tmp_path, "d", img), "mitoses": [[30.5, 20.5]], "spacing": SPACING}]
    ds = PatchSampleDataset(
        rec, patch_size=8, samples_per_epoch=4, positive_fraction=1.0, mimic_fraction=0.0, jitter_px=0.0, downsample=2
    )
    reduced = to_uint8(downsample_mean(torch.from_numpy(img).permute(2, 0, 1)[None], 2)[0]).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ds.image(0), reduced)
    assert ds.image(0).shape == (20, 24, 3)
    s = ds[0]
    assert s[PatchKeys.POINT].tolist() == [15.0, 10.0]  # (30.5 + 0.5) / 2 - 0.5 = 15
    want = torch.as_tensor(reduced[10, 15] / 255.0, dtype=torch.float32)
    torch.testing.assert_close(_centre(s[PatchKeys.IMAGE]), want)
    assert ds._spacing == [2 * SPACING]
    assert ds.add_hard_negatives(0, [[3.5, 39.5]]) == 1  # 16.5 reduced px from the mitosis: beyond 8 um
    np.testing.assert_allclose(ds.hard_negatives[0], [[1.5, 19.5]])
    with pytest.raises(ValueError, match="downsample must be an int >= 1"):
        PatchSampleDataset(rec, downsample=0)

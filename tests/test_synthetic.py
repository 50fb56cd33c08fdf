"""The synthetic H&E generator: determinism, ground truth, layout."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import tifffile

from mssn_monai.data.synthetic import (
    ATYPICAL_PHASES,
    BLEND_SPREAD,
    LOOKS,
    MIMIC_KINDS,
    MITOSIS_PHASES,
    STYLES,
    Morphology,
    StainStyle,
    draw_look,
    generate_dataset,
    generate_field,
)

NAMED = LOOKS
NEW_KINDS = ATYPICAL_PHASES + ("neutrophil", "debris")


def test_same_seed_same_field():
    a = generate_field((256, 192), seed=3)
    b = generate_field((256, 192), seed=3)
    c = generate_field((256, 192), seed=4)
    assert a.image.shape == (192, 256, 3) and a.image.dtype == np.uint8
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mitoses, b.mitoses)
    assert not np.array_equal(a.image, c.image)


def test_ground_truth_is_inside_and_separated():
    for seed in range(3):
        f = generate_field((768, 768), seed=seed, mitosis_rate=6.0)
        pts = np.concatenate([f.mitoses, f.mimics])
        assert len(f.mitoses) == len(f.mitosis_phases) and len(f.mimics) == len(f.mimic_kinds)
        assert set(f.mitosis_phases) <= set(MITOSIS_PHASES) and set(f.mimic_kinds) <= set(MIMIC_KINDS)
        assert np.all(pts >= 0) and np.all(pts[:, 0] < 768) and np.all(pts[:, 1] < 768)
        # annotated figures are at least 20 um apart, so an 8 um match radius is never ambiguous
        d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
        d[np.diag_indices(len(pts))] = np.inf
        assert d.min(initial=np.inf) * f.spacing >= 20.0 - 1e-6


def test_mitoses_are_darker_than_ordinary_tissue():
    """Mitotic chromatin is dense: the figure's darkest pixels are far darker than the field's median."""
    fields = [generate_field((512, 512), seed=s, mitosis_rate=12.0) for s in (11, 12)]
    assert sum(len(f.mitoses) for f in fields) >= 2
    for f in fields:
        gray = f.image.mean(axis=2)
        r = int(3 / f.spacing)
        for x, y in f.mitoses.astype(int):
            patch = gray[max(y - r, 0) : y + r, max(x - r, 0) : x + r]
            assert patch.min() < 0.6 * np.median(gray)


def test_dataset_layout_is_mitos_atypia14(tmp_path):
    files = generate_dataset(tmp_path, n_images=3, size=(128, 96), seed=1, frames_per_slide=2)
    assert len(files) == 3
    slides = sorted(p.name for p in (tmp_path / "Training Aperio").iterdir())
    assert len(slides) == 2
    for image_path in files:
        assert image_path.parent.parent.name == "frames" and image_path.parent.name == "x40"
        assert tifffile.imread(image_path).shape == (96, 128, 3)
        slide_dir = image_path.parents[2]
        for suffix in ("_mitosis.csv", "_not_mitosis.csv"):
            gt = slide_dir / "mitosis" / f"{image_path.stem}{suffix}"
            assert gt.is_file()
            for row in csv.reader(gt.open()):
                x, y, conf = (float(v) for v in row)
                assert 0 <= x < 128 and 0 <= y < 96 and conf == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        generate_field((0, 10))
    with pytest.raises(ValueError, match="spacing"):
        generate_field((10, 10), spacing=0)


def _dataset_digest(root, style: str) -> str:
    """sha256 of the pixels and the CSV text of a 2-field, 256x256 dataset written with seed 0."""
    h = hashlib.sha256()
    for image_path in generate_dataset(root, n_images=2, size=(256, 256), seed=0, frames_per_slide=2, style=style):
        h.update(np.ascontiguousarray(tifffile.imread(image_path)).tobytes())
        for suffix in ("_mitosis.csv", "_not_mitosis.csv"):
            h.update((image_path.parents[2] / "mitosis" / f"{image_path.stem}{suffix}").read_text().encode())
    return h.hexdigest()


@pytest.mark.parametrize(
    "style, digest",
    [
        ("default", "0bedb0943a56c1ef76d62d93fcc0de9f788394d963d6275552a1f294483b391e"),
        ("shifted", "f58cd554d8214fa57afb837fcb67595ce729b514d510277d4a81d8127ad89c22"),
    ],
)
def test_default_and_shifted_are_pinned(tmp_path, style, digest):
    """Benchmark sets and shipped samples were written with these styles: same seed, same bytes, forever."""
    assert _dataset_digest(tmp_path, style) == digest


def test_generate_field_default_is_pinned():
    f = generate_field((256, 256), seed=0)
    h = hashlib.sha256(f.image.tobytes())
    h.update(repr(np.round(f.mitoses, 4).tolist()).encode() + repr(np.round(f.mimics, 4).tolist()).encode())
    h.update(",".join(f.mitosis_phases + f.mimic_kinds).encode())
    assert h.hexdigest() == "bc42b6099f05e093f927949f978e78b1b3b700a258f70cd23a924596ea604304"


def test_styles_are_listed():
    assert set(STYLES) >= {"default", "shifted", "random", "blend"} and len(NAMED) >= 5
    assert len(set(STYLES)) == len(STYLES)
    assert set(STYLES) - set(LOOKS) == {"random", "blend"}


@pytest.mark.parametrize("style", STYLES)
def test_every_style_renders_deterministically(style):
    a = generate_field((256, 256), seed=1, style=style, mitosis_rate=40.0)
    b = generate_field((256, 256), seed=1, style=style, mitosis_rate=40.0)
    assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mimics, b.mimics)
    assert a.mitosis_phases == b.mitosis_phases and a.mimic_kinds == b.mimic_kinds
    assert set(a.mitosis_phases) <= set(MITOSIS_PHASES) and set(a.mimic_kinds) <= set(MIMIC_KINDS)
    pts = np.concatenate([a.mitoses, a.mimics])
    assert len(pts) and np.all(pts >= 0) and np.all(pts < 256)
    assert not np.array_equal(a.image, generate_field((256, 256), seed=2, style=style).image)


def test_named_styles_differ_in_colour():
    """Mean RGB over three slides of each named style: every pair of styles is far apart (8-bit units)."""
    means = {
        s: np.mean([generate_field((160, 160), seed=k, style=s).image.reshape(-1, 3).mean(0) for k in range(3)], 0)
        for s in NAMED
    }
    for i, a in enumerate(NAMED):
        for b in NAMED[i + 1 :]:
            # shifted is the wide-range sibling of default (tone curve, JPEG), not a different mean colour
            margin = 15.0 if {a, b} == {"default", "shifted"} else 40.0
            assert np.linalg.norm(means[a] - means[b]) > margin, (a, b, means[a], means[b])


def test_named_styles_differ_in_morphology():
    """Per-slide morphology ranges of the new styles do not overlap where they define the style."""
    rng = np.random.default_rng(0)
    looks = {s: [draw_look(s, rng).morphology for _ in range(5)] for s in ("pale", "dark", "magenta", "faded")}
    assert max(m.mitosis_scale[1] for m in looks["pale"]) < min(m.mitosis_scale[0] for m in looks["dark"])
    assert max(m.nucleus_um[1] for m in looks["pale"]) < min(m.nucleus_um[1] for m in looks["dark"])
    assert max(m.chromatin[1] for m in looks["faded"]) < min(m.chromatin[0] for m in looks["dark"])
    # the classic figures are 5-15 um; the family stays within 4-20 um
    assert all(0.6 <= m.mitosis_scale[0] and m.mitosis_scale[1] * 15.0 <= 20.0 for v in looks.values() for m in v)
    atypical = {s: sum(m.phase_p.get(k, 0.0) for k in ATYPICAL_PHASES) for s, v in looks.items() for m in v[:1]}
    assert atypical["magenta"] > 2 * atypical["dark"] > 2 * atypical["pale"] > 0
    assert Morphology() == draw_look("default", rng).morphology == draw_look("shifted", rng).morphology


def test_random_style_draws_a_fresh_look_per_slide(tmp_path):
    rng = np.random.default_rng(3)
    looks = [draw_look("random", rng) for _ in range(4)]
    for a, b in zip(looks[:-1], looks[1:], strict=True):
        assert not np.allclose(a.stain_h, b.stain_h) and a.morphology != b.morphology
    files = generate_dataset(tmp_path, n_images=3, size=(96, 96), seed=4, frames_per_slide=1, style="random")
    means = [tifffile.imread(f).reshape(-1, 3).mean(0) for f in files]
    assert min(np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i)) > 3.0
    again = generate_dataset(tmp_path / "again", n_images=3, size=(96, 96), seed=4, frames_per_slide=1, style="random")
    for f, g in zip(files, again, strict=True):
        np.testing.assert_array_equal(tifffile.imread(f), tifffile.imread(g))


def test_random_style_without_excluded_looks(monkeypatch, tmp_path):
    """``exclude``: no parameter of an excluded look is ever drawn; the others still mix."""
    from dataclasses import replace

    import mssn_monai.data.synthetic as synthetic

    base = StainStyle.random(np.random.default_rng(0))

    def marked(i: int):  # every scalar parameter and the morphology carry the look's index
        return lambda rng: replace(
            base, amount_h=float(i), amount_e=float(i), blur_um=float(i), noise=float(i),
            morphology=Morphology(cell_area_um2=float(i + 100)),
        )  # fmt: skip

    monkeypatch.setattr(synthetic, "_NAMED", {name: marked(i) for i, name in enumerate(NAMED)})
    rng = np.random.default_rng(1)
    drawn = set()
    for _ in range(60):
        look = draw_look("random", rng, exclude=("pale", "dark"))
        values = {look.amount_h, look.amount_e, look.blur_um, look.noise, look.morphology.cell_area_um2 - 100}
        drawn |= values
    assert drawn == {float(NAMED.index(s)) for s in NAMED if s not in ("pale", "dark")}


@pytest.mark.parametrize(
    "style, exclude, match",
    [
        ("random", ("pal",), "unknown style 'pal'"),
        ("pale", ("dark",), "'random' and 'blend' only"),
        ("blend", ("pal",), "unknown style 'pal'"),
        ("random", NAMED, "every"),
    ],
)
def test_exclude_refuses_bad_input(tmp_path, style, exclude, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "x", n_images=1, size=(32, 32), style=style, exclude=exclude)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=match):
        draw_look(style, np.random.default_rng(0), exclude=exclude)


def test_blend_style_lies_between_the_looks(monkeypatch):
    """``blend``: each parameter between two allowed looks' values or a quarter past them, never an
    excluded look's, and values no look has."""
    from dataclasses import replace

    import mssn_monai.data.synthetic as synthetic

    base = StainStyle.random(np.random.default_rng(0))
    values = {name: 1.0 + i for i, name in enumerate(NAMED)}  # amount_h of each look: 1, 2, ...

    def marked(v: float):
        return lambda rng: replace(base, amount_h=v, noise=v, morphology=Morphology(nucleus_um=(v + 2.0, v + 3.0)))

    monkeypatch.setattr(synthetic, "_NAMED", {name: marked(v) for name, v in values.items()})
    allowed = [v for name, v in values.items() if name not in ("pale", "dark")]
    lo, hi = min(allowed), max(allowed)
    reach = BLEND_SPREAD * (hi - lo)
    rng = np.random.default_rng(2)
    drawn = []
    for _ in range(200):
        look = draw_look("blend", rng, exclude=("pale", "dark"))
        drawn.append(look.amount_h)
        a, b = look.morphology.nucleus_um
        assert a <= b and abs((b - a) - 1.0) < 1e-9  # a range stays a range of the same width here
        assert lo - reach - 1e-9 <= look.noise <= hi + reach + 1e-9
    drawn = np.asarray(drawn)
    assert drawn.min() >= lo - reach - 1e-9 and drawn.max() <= hi + reach + 1e-9
    assert drawn.min() < lo and drawn.max() > hi  # past the looks, both ways
    assert np.mean(np.abs(drawn - np.round(drawn)) > 0.05) > 0.5  # mostly values no look has


def test_blend_value_exact_cases():
    from mssn_monai.data.synthetic import _blend_value as blend

    rng = np.random.default_rng(0)
    assert blend("amount_h", 1.0, 2.0, 0.5, rng) == 1.5
    assert blend("amount_h", 0.5, 1.0, -2.0, rng) == 0.2  # floored where the stain would vanish
    assert blend("mitosis_halo_p", 0.8, 0.9, 3.0, rng) == 1.0  # a probability stays one
    assert blend("nucleoli_max", 1, 3, 0.5, rng) == 2 and isinstance(blend("nucleoli_max", 1, 3, 0.6, rng), int)
    assert blend("chromatin", (0.3, 0.4), (0.5, 0.1), 1.0, rng) == pytest.approx((0.1, 0.5))  # a range kept in order
    assert blend("cell_gap_um", (12.0, 3.0), (10.0, 5.0), 0.5, rng) == (11.0, 4.0)  # a pair is not reordered
    assert blend("mimic_rates", {"a": 2.0}, {"b": 4.0}, 0.5, rng) == {"a": 1.0, "b": 2.0}
    assert blend("prophase_clumped_p", None, 0.5, 0.5, rng) in (None, 0.5)  # the classic None: one of the two
    h = blend("stain_h", np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), 0.5, rng)
    np.testing.assert_allclose(h, np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0))
    np.testing.assert_array_equal(blend("white", np.full(3, 250.0), np.full(3, 200.0), -1.0, rng), np.full(3, 255.0))


def test_no_exclusion_keeps_the_family_draws():
    a, b = draw_look("random", np.random.default_rng(5)), draw_look("random", np.random.default_rng(5), exclude=())
    np.testing.assert_array_equal(a.stain_h, b.stain_h)
    assert a.morphology == b.morphology and a.blur_um == b.blur_um


def _bare(**morphology) -> StainStyle:
    """A clean look (no blur, noise, stroma or ordinary cells) so that a figure's darkness is its own."""
    h, e = np.array([0.650, 0.704, 0.286]), np.array([0.072, 0.990, 0.105])
    return StainStyle(
        stain_h=h / np.linalg.norm(h),
        stain_e=e / np.linalg.norm(e),
        amount_h=1.0,
        amount_e=1.0,
        white=np.full(3, 240.0),
        blur_um=0.0,
        noise=0.0,
        morphology=Morphology(
            cell_area_um2=1e12, infiltrate_p=0.0, white_frac=(0.0, 0.0), stroma_od=(0.0, 0.0), **morphology
        ),
    )


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_are_marked_at_their_centre(kind):
    """Each new mitosis form and mimic kind appears, labelled, with its point at the centre of its chromatin."""
    if kind in MITOSIS_PHASES:
        look = _bare(phase_p={kind: 1.0}, mimic_rates={}, mitosis_scale=(0.6, 1.4), plate_bend=0.3)
        f = generate_field((384, 384), seed=1, style=look, mitosis_rate=60.0)
        pts, names = f.mitoses, f.mitosis_phases
    else:
        f = generate_field((384, 384), seed=1, style=_bare(mimic_rates={kind: 60.0}, mimic_halo_p=0.5), mitosis_rate=0)
        pts, names = f.mimics, f.mimic_kinds
    assert len(pts) >= 2 and set(names) == {kind}
    darkness = 240.0 - f.image.mean(axis=2)
    r = 11.0 / f.spacing
    yy, xx = np.mgrid[0:384, 0:384]
    for x, y in pts:
        if not (r < x < 384 - r and r < y < 384 - r):
            continue
        inside = (darkness > 100) & ((xx - x) ** 2 + (yy - y) ** 2 < r * r)
        assert inside.sum() > 20
        assert np.hypot(xx[inside].mean() - x, yy[inside].mean() - y) * f.spacing < 1.5
        if kind == "ring":  # a clear centre inside the ring of chromosomes
            assert darkness[int(round(y)), int(round(x))] < 0.5 * np.percentile(darkness[inside], 90)


@pytest.mark.parametrize("style", ["pale", "dark", "magenta", "faded"])
def test_new_styles_keep_mitoses_dark_and_mimics_as_dark(style):
    """Darkness does not give mitoses away: the typical mimic is about as dark as the typical mitosis."""
    rng = np.random.default_rng(5)
    mit, mim, field_median = [], [], []
    for _ in range(2):
        f = generate_field((448, 448), rng, style=style, mitosis_rate=30.0)
        gray = f.image.mean(axis=2)
        r = int(2.5 / f.spacing)
        for points, out in ((f.mitoses, mit), (f.mimics, mim)):
            out += [np.percentile(gray[max(y - r, 0) : y + r, max(x - r, 0) : x + r], 5) for x, y in points.astype(int)]
        field_median.append(np.median(gray))
    assert len(mit) >= 4 and len(mim) >= 4
    assert np.median(mit) < 0.75 * np.mean(field_median)
    assert -35.0 < np.median(mim) - np.median(mit) < 20.0, (np.median(mim), np.median(mit))


def test_unknown_style_names_the_valid_ones(tmp_path):
    for call in (
        lambda: generate_dataset(tmp_path, n_images=1, size=(32, 32), style="neon"),
        lambda: generate_field((32, 32), style="neon"),
        lambda: draw_look("neon", np.random.default_rng(0)),
    ):
        with pytest.raises(ValueError, match="neon.*default, shifted, pale, dark, magenta, faded, random"):
            call()
    with pytest.raises(ValueError, match="spiral"):
        Morphology(phase_p={"spiral": 1.0})

"""scripts/loso.py: the datalists of the leave-one-look-out folds and of the whole family (no training here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mssn_monai.data.datalist import load_datalist, write_datalist

ROOT = Path(__file__).resolve().parents[1]
LOOKS = ["default", "shifted", "pale", "dark", "magenta", "faded"]


@pytest.fixture(scope="module")
def loso():
    spec = importlib.util.spec_from_file_location("loso_script", ROOT / "scripts" / "loso.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(folder: Path, names: list[str]) -> list[dict]:
    return [
        {"image": str(folder / f"{n}.tiff"), "mitoses": [], "mimics": [], "spacing": 0.25, "group": n} for n in names
    ]


def _looks(out: Path) -> None:
    """What ``loso.py data`` writes: per look 2 training, 1 validation and 2 test records."""
    for look in LOOKS:
        folder = out / "data" / look
        sections = {
            "training": _records(folder, [f"{look}_t0", f"{look}_t1"]),
            "validation": _records(folder, [f"{look}_v0"]),
            "testing": _records(folder, [f"{look}_x0", f"{look}_x1"]),
        }
        write_datalist(sections, folder / "datalist.json")


def test_fold_trains_on_the_other_looks_and_names_each_validation_look(loso, tmp_path):
    _looks(tmp_path)
    fold = loso._fold_datalist(tmp_path, "pale")
    training = load_datalist(fold / "datalist.json", "training")
    validation = load_datalist(fold / "datalist.json", "validation")
    testing = load_datalist(fold / "datalist.json", "testing")
    assert len(training) == 10 and not any("pale" in r["group"] for r in training)
    assert all(r["domain"] == r["group"].split("_")[0] for r in training)
    assert [r["domain"] for r in validation] == [look for look in LOOKS if look != "pale"]
    assert [r["group"] for r in validation] == [f"{look}_v0" for look in LOOKS if look != "pale"]
    assert [r["group"] for r in testing] == ["pale_x0", "pale_x1"]  # the held-out look: test fields only


def test_family_trains_on_every_look_and_validates_on_new_fields_named_by_look(loso, tmp_path):
    _looks(tmp_path)
    extra = {"random_train": "training", "random": "validation", **{f"{look}_val": "validation" for look in LOOKS}}
    for name, section in extra.items():  # already rendered: family() only gathers
        folder = tmp_path / "data" / name
        write_datalist({section: _records(folder, [f"{name}_0"])}, folder / "datalist.json")
    path = loso.family(str(tmp_path))
    training, validation = load_datalist(path, "training"), load_datalist(path, "validation")
    assert len(training) == 6 * 3 + 1 and {r["group"] for r in training} >= {"random_train_0", "pale_v0"}
    assert {(r["group"], r["domain"]) for r in training} >= {("random_train_0", "random"), ("pale_v0", "pale")}
    assert not any(r["group"].endswith(("_x0", "_x1")) for r in training + validation)  # test fields stay out
    assert [(r["group"], r["domain"]) for r in validation] == [(f"{look}_val_0", look) for look in LOOKS] + [
        ("random_0", "random")
    ]
    # --family-style blend: blend training draws instead of random ones, the same validation, its own datalist
    folder = tmp_path / "data" / "blend_train"
    write_datalist({"training": _records(folder, ["blend_train_0"])}, folder / "datalist.json")
    path = loso.family(str(tmp_path), family_style="blend")
    assert path == tmp_path / "family_blend" / "datalist.json"
    blend_training = load_datalist(path, "training")
    assert ("blend_train_0", "blend") in {(r["group"], r["domain"]) for r in blend_training}
    assert not any(r["group"] == "random_train_0" for r in blend_training)
    assert [r["group"] for r in load_datalist(path, "validation")] == [r["group"] for r in validation]
    # --family-style mix: the first half of each drawn set (here one field each), each naming its own style
    path = loso.family(str(tmp_path), random_train=2, family_style="mix")
    assert path == tmp_path / "family_mix" / "datalist.json"
    mix_training = {(r["group"], r["domain"]) for r in load_datalist(path, "training")}
    assert {("random_train_0", "random"), ("blend_train_0", "blend")} <= mix_training


@pytest.mark.parametrize("style", ["random", "blend"])
def test_fold_with_family_fields_renders_the_family_without_the_held_out_look(loso, tmp_path, monkeypatch, style):
    """``train --family-fields N [--family-style S]``: N fields of style S drawn with ``exclude=(holdout,)``
    join the fold's training, in their own folder per style."""
    import mssn_monai.data.synthetic as synthetic

    _looks(tmp_path)
    calls = []
    real = synthetic.generate_dataset

    def spy(out, **kwargs):
        calls.append(kwargs)
        return real(out, **{**kwargs, "size": (48, 48)})

    monkeypatch.setattr(synthetic, "generate_dataset", spy)
    fold = loso._fold_datalist(tmp_path, "dark", family_fields=3, family_style=style)
    training = load_datalist(fold / "datalist.json", "training")
    assert calls == [
        {"n_images": 3, "size": (1024, 1024), "seed": 900 + LOOKS.index("dark"), "frames_per_slide": 1,
         "style": style, "exclude": ("dark",)}
    ]  # fmt: skip
    assert (tmp_path / "data" / f"{style}_without_dark" / "datalist.json").is_file()
    assert len(training) == 10 + 3 and [r["domain"] for r in training].count(style) == 3
    assert not any("dark" in r.get("group", "") for r in training)
    loso._fold_datalist(tmp_path, "dark", family_fields=3, family_style=style)  # rendered once, then read
    assert len(calls) == 1
    with pytest.raises(ValueError, match="holds 3 fields, not 4"):
        loso._fold_datalist(tmp_path, "dark", family_fields=4, family_style=style)


def test_family_fields_of_a_fold_are_kept_when_its_datalist_is_written_again(loso, tmp_path, monkeypatch):
    """``refit`` writes a fold's datalist again: the family fields it trained on stay in it."""
    import mssn_monai.data.synthetic as synthetic

    _looks(tmp_path)
    real = synthetic.generate_dataset
    monkeypatch.setattr(synthetic, "generate_dataset", lambda out, **kw: real(out, **{**kw, "size": (48, 48)}))
    fold = loso._fold_datalist(tmp_path, "faded", family_fields=2, family_style="blend")
    assert loso._family_fields_of(fold / "datalist.json") == (2, "blend")
    assert loso._family_fields_of(tmp_path / "nothing.json") == (0, "random")
    again = loso._fold_datalist(tmp_path, "faded", *loso._family_fields_of(fold / "datalist.json"))
    assert [r["domain"] for r in load_datalist(again / "datalist.json", "training")].count("blend") == 2
    plain = loso._fold_datalist(tmp_path, "pale")
    assert loso._family_fields_of(plain / "datalist.json") == (0, "random")
    mix = loso._fold_datalist(tmp_path, "dark", family_fields=3, family_style="mix")
    assert loso._family_fields_of(mix / "datalist.json") == (3, "mix")


def test_mix_family_takes_the_first_half_of_each_drawn_style(loso, tmp_path, monkeypatch):
    """``--family-style mix``: the first ``N - N // 2`` of the N ``random`` draws and the first ``N // 2`` of the N
    ``blend`` draws, each tagged with its own style; the single-style sets are rendered once and shared."""
    import mssn_monai.data.synthetic as synthetic

    _looks(tmp_path)
    calls = []
    real = synthetic.generate_dataset

    def spy(out, **kwargs):
        calls.append(kwargs["style"])
        return real(out, **{**kwargs, "size": (48, 48)})

    monkeypatch.setattr(synthetic, "generate_dataset", spy)
    assert loso._family_shares("mix", 5) == [("random", 3), ("blend", 2)]
    assert loso._family_shares("blend", 5) == [("blend", 5)]
    fold = loso._fold_datalist(tmp_path, "dark", family_fields=5, family_style="mix")
    training = load_datalist(fold / "datalist.json", "training")
    drawn = {s: load_datalist(tmp_path / "data" / f"{s}_without_dark" / "datalist.json", "training") for s in calls}
    expected = [(r["image"], "random") for r in drawn["random"][:3]] + [
        (r["image"], "blend") for r in drawn["blend"][:2]
    ]
    assert [(r["image"], r["domain"]) for r in training if r["domain"] in drawn] == expected
    assert calls == ["random", "blend"]
    loso._fold_datalist(tmp_path, "dark", family_fields=5, family_style="random")  # the same set, not rendered again
    assert calls == ["random", "blend"]


def test_family_style_must_be_random_blend_or_mix(loso, tmp_path):
    with pytest.raises(ValueError, match="--family-style must be one of random, blend, mix, got 'pale'"):
        loso._fold_datalist(tmp_path, "dark", family_fields=2, family_style="pale")
    with pytest.raises(ValueError, match="--family-style must be one of random, blend, got 'mix'"):
        loso.family_without(tmp_path, "dark", 2, style="mix")  # mix is drawn as its two styles
    with pytest.raises(ValueError, match="--family-style"):
        loso.family(str(tmp_path), family_style="pale")
    assert not (tmp_path / "data").exists()  # nothing rendered

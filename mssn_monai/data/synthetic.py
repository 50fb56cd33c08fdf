"""Synthetic H&E fields with mitotic figures and hard mimics: the benchmark this project can run.

No real mitosis dataset can be downloaded here, so the project renders its own ground. A field is
built the way light passes through a stained section (Beer-Lambert): two optical-density maps, one
for hematoxylin (nuclei, chromatin) and one for eosin (stroma, cytoplasm), are painted object by
object and turned into RGB with a per-slide stain matrix::

    rgb = white * exp(-(od_h * stain_h + od_e * stain_e))

What is painted, in micrometres at about 40x (0.2455 um/px by default):

- tissue with white space (lumen, fat), dense tumour nests and sparse fibrous stroma, plus
  lymphocyte infiltrates;
- ordinary nuclei of varied size, shape and chromatin texture with nucleoli and cytoplasm;
- mitotic figures built from many small chromosome arms, which gives them their ragged, hairy
  outline: prophase (granular round; clumped or spread as threads), metaphase (dark plate seen
  edge-on as a bar, straight or bent), anaphase (two parallel bars), telophase (two separated dark
  masses in a pinching cell), and the atypical forms tripolar (three short plates around the
  centre), ring (chromosomes on an annulus around a clear centre) and lagging (anaphase with
  chromosomes or a chromatin bridge left between the two plates); 4-20 um depending on the style;
- hard mimics that are as dark as mitoses: apoptotic bodies (smooth condensed fragments in bright
  eosinophilic cytoplasm, with or without a retraction halo), lymphocytes (small, round, dark),
  pyknotic and hyperchromatic nuclei (dark, smooth or coarse, round), neutrophils (three to five dark
  lobes on a curved chain in granular pink cytoplasm) and debris (irregular dark fragments of varied
  size in an eosinophilic blob).

Darkness alone does not separate the classes (a darkness-based blob detector is fooled by the mimics);
shape, outline and texture do.

Looks. Every slide draws its whole look (a :class:`StainStyle`: stain vectors and amounts, white
point, tone curve, focus, sharpening, noise, JPEG, and its :class:`Morphology`: tissue architecture,
nuclei, mitosis and mimic morphology) from the ranges of one named style, so that a model trained on
some styles can be tested on a held-out one (:data:`STYLES`, :func:`draw_look`):

============  ==============================================  ==============================================
style         stain and scanner                               morphology
============  ==============================================  ==============================================
``default``   reference H&E hues (sd 0.07); H x0.75-1.3, E    classic: nuclei 3.2-6 um (semi-axis); phases
              x0.6-1.4; white 240 +- 8; blur 0.1-0.6 um;      pro/meta/ana/telo 25/35/20/20 %, figures 5-15
              noise 1-4; linear; no JPEG                      um, faint halo, pale cytoplasm; apoptotic
                                                              (halo), lymphocyte, pyknotic, hyperchromatic
``shifted``   hues sd 0.14; H x0.55-0.75 or 1.3-1.7, E        classic (as ``default``)
              x0.4-0.6 or 1.4-1.9; white 232 +- 12; gamma
              0.75-1.35 per channel; blur 0.5-0.9 um; noise
              3-6; JPEG 55-85
``pale``      weak H (x0.45-0.65) near [.55 .70 .45];         sparse tissue, 15-40 % white space; small
              bluish E near [.35 .92 .15] (x0.5-0.8); white   round nuclei (2.4-4.6 um), fine chromatin;
              246-255; blur 0-0.15 um, unsharp mask 0.6-1.2;  small figures (x0.6-0.85: about 4-13 um),
              noise 0.5-1.5; no JPEG                          fewer, long thin arms; spread prophase,
                                                              straight plates; halo and clear cytoplasm
                                                              80 %; 5 % atypical; mimics with halo 85 %,
                                                              many lymphocytes and neutrophils
``dark``      strong purple H (x1.3-1.6) near [.58 .74 .34];  dense sheets, little white space; large
              E near [.12 .96 .25] (x1.1-1.5); white 225-     nuclei (4.5-7.8 um), coarse chromatin;
              240; gamma 1.05-1.25; blur 0.6-0.85 um; noise   large figures (x1.1-1.33: up to 20 um), more
              2-4; JPEG 40-65                                 and thicker arms, clumped prophase, bent
                                                              plates, wide anaphase; halo 15 %, clear
                                                              cytoplasm 20 %; 12 % atypical; mimics
                                                              (hyperchromatic, pyknotic, debris) x1.45
                                                              denser, halo 15 %
``magenta``   reddish-purple H near [.45 .80 .40] (x0.9-      spindle-rich stroma of thick wavy fibres;
              1.2); red-magenta E near [.05 .80 .60] (x1.0-   elongated irregular nuclei (3.5-6 um,
              1.4); warm white (252, 240, 225); warm tone     aspect 0.45-0.8); figures x0.85-1.15 with
              curve (gamma R 0.85-0.95, B 1.1-1.25); blur     long arms, bent plates; 30 % atypical
              0.3-0.5 um; noise 1.5-3; JPEG 80-92             (tripolar, ring, lagging); halo and clear
                                                              cytoplasm 50 %; many neutrophils, debris
``faded``     greyish archival stains (hues half-way to       round nuclei (3-5.1 um), smooth chromatin, no
              grey), weak (H x0.65-0.9, E x0.35-0.6);         nucleoli; figures x0.7-1.0 with short stubby
              yellowed white (238, 232, 205); low-contrast    arms, straight plates, narrow anaphase
              gamma 0.8-0.9; blur 0.4-0.7 um; noise 4-7;      (3-5 um); 8 % atypical; halo 30 %; mimics
              JPEG 60-80                                      x1.25 denser, mostly bare (halo 20 %)
``random``    each slide a fresh draw from the whole family: every stain, scanner and morphology
              parameter is taken from the look of a randomly chosen named style, so that combinations
              no single style has appear
``blend``     each slide a fresh look *between* the named ones: every parameter is ``a + t (b - a)`` of
              two randomly chosen looks' values, ``t`` uniform in ``[-0.25, 1.25]`` (:data:`BLEND_SPREAD`),
              clipped to where it renders (stain hues renormalised; a parameter one look leaves at its
              classic ``None`` is taken from either look), so that values no single style has appear
============  ==============================================  ==============================================

``default`` and ``shifted`` keep their random draws: the same seed writes the same bytes as before
the family existed (benchmark sets and shipped samples were written with them).

Ground truth: a mitosis is marked at the centre of its figure (the midpoint of both daughter masses
in anaphase and telophase, the centre of the three plates or of the ring in atypical forms), as
annotators do. Mimics of the kinds listed above are marked as ``not_mitosis``, at the centre of the
mimic, except lymphocytes inside dense infiltrates (real annotators do not mark those).

Files are written in the MITOS-ATYPIA-14 layout so that ``prepare --format mitos-atypia-14`` reads
them like real data::

    <out>/Training Aperio/<slide>/frames/x40/<slide>_<nn>.tiff
    <out>/Training Aperio/<slide>/mitosis/<slide>_<nn>_mitosis.csv       (x,y,confidence)
    <out>/Training Aperio/<slide>/mitosis/<slide>_<nn>_not_mitosis.csv   (x,y,confidence)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from mssn_monai.constants import APERIO_SPACING_UM
from mssn_monai.io import atomic_write, write_image

__all__ = [
    "MITOSIS_PHASES",
    "TYPICAL_PHASES",
    "ATYPICAL_PHASES",
    "MIMIC_KINDS",
    "STYLES",
    "LOOKS",
    "BLEND_SPREAD",
    "Morphology",
    "SyntheticField",
    "StainStyle",
    "draw_look",
    "generate_field",
    "generate_dataset",
]

TYPICAL_PHASES = ("prophase", "metaphase", "anaphase", "telophase")
ATYPICAL_PHASES = ("tripolar", "ring", "lagging")
MITOSIS_PHASES = TYPICAL_PHASES + ATYPICAL_PHASES
MIMIC_KINDS = ("apoptotic", "lymphocyte", "pyknotic", "hyperchromatic", "neutrophil", "debris")

# Ruifrok & Johnston optical-density vectors (RGB) of hematoxylin and eosin.
_H_REF = np.array([0.650, 0.704, 0.286])
_E_REF = np.array([0.072, 0.990, 0.105])


def _classic_phases() -> dict[str, float]:
    return {"prophase": 0.25, "metaphase": 0.35, "anaphase": 0.2, "telophase": 0.2}


def _classic_mimics() -> dict[str, float]:
    return {"apoptotic": 3.0, "lymphocyte": 4.0, "pyknotic": 3.0, "hyperchromatic": 2.5}


@dataclass
class Morphology:
    """What one slide's tissue, nuclei, mitoses and mimics look like; the defaults are the classic look.

    Ranges ``(lo, hi)`` are drawn from again for every object. Parameters that default to ``None`` (or
    1, or 0) keep the classic behaviour and draw nothing from the random generator, so that the
    ``default`` and ``shifted`` styles render the same bytes as before these parameters existed.

    Args:
        tissue_cells: features of the tissue / white-space field across the field (range).
        white_frac: fraction of the field left white (lumen, fat) (range).
        density_cells: features of the cell-density field across the field (range).
        stroma_od: eosin optical density of the stroma (range).
        fibre_um: Gaussian sigmas across and along a collagen fibre, in um.
        fibre_wave_um: amplitude of the waviness of the fibres, in um.
        tumour_threshold: local density (0-1) above which cells are tumour cells, else stromal spindles.
        cell_area_um2: tissue area per candidate cell position, in um^2 (smaller = denser).
        cell_gap_um: ``(g0, g1)``: cells stay at least ``g0 - g1 * density`` um apart.
        cytoplasm_um: radius of a tumour cell's cytoplasm, in um (range).
        cytoplasm_od: eosin optical density of the cytoplasm (range).
        nucleus_um: semi-major axis of a tumour nucleus, in um (range).
        nucleus_aspect: minor / major axis of a tumour nucleus (range).
        nucleus_od: hematoxylin optical density of an ordinary nucleus (range).
        chromatin: strength of the chromatin texture of an ordinary nucleus (range).
        nucleus_wobble: irregularity of nuclear outlines (0 = ellipse).
        nucleoli_max: nucleoli per nucleus are drawn from ``0 .. nucleoli_max - 1``.
        grain_um: Gaussian sigmas of the fine and the coarse chromatin texture, in um.
        stromal_um: semi-major axis of a stromal (spindle) nucleus, in um (range).
        stromal_aspect: minor / major axis of a stromal nucleus (range).
        infiltrate_p: probability of a lymphocyte infiltrate in a field.
        phase_p: relative frequency of each mitosis phase (keys from :data:`MITOSIS_PHASES`).
        mitosis_scale: size factor of the figures against the classic 5-15 um (range), ``None`` = 1.
        mitosis_od: hematoxylin density of mitotic chromatin (range).
        arm_count: factor on the number of chromosome arms of a figure.
        arm_length: factor on the length of a chromosome arm (classic 0.8-1.1 um).
        arm_width: factor on the thickness of a chromosome arm (classic 0.3-0.35 um).
        plate_bend: largest bend of a metaphase / anaphase plate, as a fraction of half its length.
        prophase_clumped_p: probability of a clumped prophase (a few coarse clumps), else spread
            (long thin threads); ``None``: the classic granular disc.
        anaphase_sep_um: distance between the two anaphase plates at scale 1, in um (range).
        mitosis_halo_p: probability of a clear retraction halo around a mitotic cell; ``None``: the
            classic faint halo of random strength.
        mitosis_clear_p: probability of clear (pale) cytoplasm around a mitosis, else ordinary
            cytoplasm; ``None``: the classic pale cytoplasm.
        mimic_rates: mean number of mimics of each kind per 1024x1024 field at 0.2455 um/px (keys from
            :data:`MIMIC_KINDS`).
        mimic_halo_p: probability of a retraction halo around a mimic; ``None``: the classic halos
            (apoptotic always, pyknotic of random strength, others none).
        mimic_od: factor on the hematoxylin density of mimic nuclei (lymphocytes included), to keep
            mimics as dark as the style's mitoses.
    """

    tissue_cells: tuple[float, float] = (2.0, 4.0)
    white_frac: tuple[float, float] = (0.0, 0.25)
    density_cells: tuple[float, float] = (2.0, 5.0)
    stroma_od: tuple[float, float] = (0.22, 0.4)
    fibre_um: tuple[float, float] = (0.5, 5.0)
    fibre_wave_um: float = 12.0
    tumour_threshold: float = 0.45
    cell_area_um2: float = 60.0
    cell_gap_um: tuple[float, float] = (11.5, 3.5)
    cytoplasm_um: tuple[float, float] = (6.0, 8.5)
    cytoplasm_od: tuple[float, float] = (0.15, 0.35)
    nucleus_um: tuple[float, float] = (3.2, 6.0)
    nucleus_aspect: tuple[float, float] = (0.65, 1.0)
    nucleus_od: tuple[float, float] = (0.3, 0.65)
    chromatin: tuple[float, float] = (0.25, 0.55)
    nucleus_wobble: float = 0.12
    nucleoli_max: int = 3
    grain_um: tuple[float, float] = (0.35, 1.2)
    stromal_um: tuple[float, float] = (4.0, 7.0)
    stromal_aspect: tuple[float, float] = (0.25, 0.45)
    infiltrate_p: float = 0.5
    phase_p: dict[str, float] = field(default_factory=_classic_phases)
    mitosis_scale: tuple[float, float] | None = None
    mitosis_od: tuple[float, float] = (0.45, 0.8)
    arm_count: float = 1.0
    arm_length: float = 1.0
    arm_width: float = 1.0
    plate_bend: float = 0.0
    prophase_clumped_p: float | None = None
    anaphase_sep_um: tuple[float, float] = (4.0, 7.0)
    mitosis_halo_p: float | None = None
    mitosis_clear_p: float | None = None
    mimic_rates: dict[str, float] = field(default_factory=_classic_mimics)
    mimic_halo_p: float | None = None
    mimic_od: float = 1.0

    def __post_init__(self) -> None:
        bad = sorted(set(self.phase_p) - set(MITOSIS_PHASES)) + sorted(set(self.mimic_rates) - set(MIMIC_KINDS))
        if bad:
            raise ValueError(f"unknown mitosis phase or mimic kind {bad}: expected {MITOSIS_PHASES} / {MIMIC_KINDS}")


@dataclass
class StainStyle:
    """The whole look of one slide: how it was stained and scanned, and its :class:`Morphology`.

    Args:
        stain_h: unit RGB optical-density vector of hematoxylin.
        stain_e: unit RGB optical-density vector of eosin.
        amount_h: multiplier on every hematoxylin density (staining strength).
        amount_e: multiplier on every eosin density.
        white: RGB of an empty pixel (0-255, the scanner's white point).
        blur_um: Gaussian blur sigma in um (focus).
        noise: standard deviation of additive sensor noise in 8-bit units.
        gamma: per-channel tone curve of the scanner, ``out = 255 (in / 255) ** gamma`` (1 = linear).
        jpeg_quality: JPEG compression quality of the scanner's output, or ``None`` for none.
        sharpen: strength of the scanner's unsharp mask (sigma 0.4 um; 0 = none).
        morphology: tissue, nucleus, mitosis and mimic parameters (the classic ones by default).
    """

    stain_h: np.ndarray
    stain_e: np.ndarray
    amount_h: float
    amount_e: float
    white: np.ndarray
    blur_um: float
    noise: float
    gamma: np.ndarray = field(default_factory=lambda: np.ones(3))
    jpeg_quality: int | None = None
    sharpen: float = 0.0
    morphology: Morphology = field(default_factory=Morphology)

    @classmethod
    def random(cls, rng: np.random.Generator) -> StainStyle:
        """A plausible H&E look: stain hues, amounts, white point, focus and noise drawn at random."""
        stain_h = _unit(_H_REF + rng.normal(0.0, 0.07, 3))
        stain_e = _unit(_E_REF + rng.normal(0.0, 0.07, 3))
        return cls(
            stain_h=np.abs(stain_h),
            stain_e=np.abs(stain_e),
            amount_h=float(rng.uniform(0.75, 1.3)),
            amount_e=float(rng.uniform(0.6, 1.4)),
            white=np.clip(rng.normal(240.0, 8.0, 3), 215.0, 255.0),
            blur_um=float(rng.uniform(0.1, 0.6)),
            noise=float(rng.uniform(1.0, 4.0)),
        )

    @classmethod
    def shifted(cls, rng: np.random.Generator) -> StainStyle:
        """Another lab and scanner: a look outside :meth:`random`'s range, for domain-shift tests.

        Stain hues drawn twice as far from the reference, stronger or weaker staining, a tinted white
        point, a non-linear per-channel tone curve, softer focus, more noise and JPEG compression.
        Training on :meth:`random` fields and testing on these measures robustness to a new scanner.
        """
        stain_h = _unit(_H_REF + rng.normal(0.0, 0.14, 3))
        stain_e = _unit(_E_REF + rng.normal(0.0, 0.14, 3))
        return cls(
            stain_h=np.abs(stain_h),
            stain_e=np.abs(stain_e),
            amount_h=float(rng.choice([rng.uniform(0.55, 0.75), rng.uniform(1.3, 1.7)])),
            amount_e=float(rng.choice([rng.uniform(0.4, 0.6), rng.uniform(1.4, 1.9)])),
            white=np.clip(rng.normal(232.0, 12.0, 3), 195.0, 255.0),
            blur_um=float(rng.uniform(0.5, 0.9)),
            noise=float(rng.uniform(3.0, 6.0)),
            gamma=rng.uniform(0.75, 1.35, 3),
            jpeg_quality=int(rng.integers(55, 85)),
        )

    def jittered(self, rng: np.random.Generator) -> StainStyle:
        """The same slide seen in another field: small changes of amounts, focus and noise."""
        return StainStyle(
            stain_h=self.stain_h,
            stain_e=self.stain_e,
            amount_h=self.amount_h * float(rng.uniform(0.93, 1.07)),
            amount_e=self.amount_e * float(rng.uniform(0.93, 1.07)),
            white=np.clip(self.white + rng.normal(0.0, 2.0, 3), min(210.0, float(self.white.min()) - 10.0), 255.0),
            blur_um=max(0.0, self.blur_um + float(rng.normal(0.0, 0.04))),
            noise=self.noise,
            gamma=self.gamma,
            jpeg_quality=self.jpeg_quality,
            sharpen=self.sharpen,
            morphology=self.morphology,
        )


# ---- the family of looks -----------------------------------------------------------------------
def _span(rng: np.random.Generator, lo: tuple[float, float], width: tuple[float, float]) -> tuple[float, float]:
    """A per-slide range: its low end drawn from ``lo``, its width from ``width``."""
    a = float(rng.uniform(*lo))
    return a, a + float(rng.uniform(*width))


def _stain(rng: np.random.Generator, ref: list[float], sd: float) -> np.ndarray:
    return np.abs(_unit(np.asarray(ref, dtype=np.float64) + rng.normal(0.0, sd, 3)))


def _atypical(rng: np.random.Generator, total: float) -> dict[str, float]:
    """Typical phases (classic mix, a random share each) plus ``total`` of atypical forms."""
    typical = {k: v * float(rng.uniform(0.7, 1.3)) for k, v in _classic_phases().items()}
    norm = sum(typical.values())
    w = rng.dirichlet(np.full(len(ATYPICAL_PHASES), 2.0))
    return {
        **{k: (1.0 - total) * v / norm for k, v in typical.items()},
        **{k: total * float(p) for k, p in zip(ATYPICAL_PHASES, w, strict=True)},
    }


def _pale(rng: np.random.Generator) -> StainStyle:
    """Weak hematoxylin, bluish eosin, a sharp clean scanner; sparse tissue, small nuclei and figures."""
    return StainStyle(
        stain_h=_stain(rng, [0.55, 0.70, 0.45], 0.04),
        stain_e=_stain(rng, [0.35, 0.92, 0.15], 0.04),
        amount_h=float(rng.uniform(0.45, 0.65)),
        amount_e=float(rng.uniform(0.5, 0.8)),
        white=np.clip(rng.normal(251.0, 2.5, 3), 246.0, 255.0),
        blur_um=float(rng.uniform(0.0, 0.15)),
        noise=float(rng.uniform(0.5, 1.5)),
        sharpen=float(rng.uniform(0.6, 1.2)),
        morphology=Morphology(
            tissue_cells=(2.5, 5.0),
            white_frac=_span(rng, (0.15, 0.2), (0.1, 0.2)),
            density_cells=(1.5, 3.0),
            stroma_od=(0.15, 0.28),
            fibre_um=(0.35, 3.0),
            tumour_threshold=0.6,
            cell_area_um2=75.0,
            cell_gap_um=(12.0, 3.0),
            cytoplasm_um=(4.5, 6.5),
            cytoplasm_od=(0.1, 0.25),
            nucleus_um=_span(rng, (2.4, 2.8), (1.3, 1.8)),
            nucleus_aspect=(0.75, 1.0),
            nucleus_od=(0.35, 0.7),
            chromatin=(0.1, 0.3),
            nucleus_wobble=0.08,
            grain_um=(0.25, 0.8),
            stromal_um=(3.0, 5.5),
            phase_p=_atypical(rng, 0.05),
            mitosis_scale=_span(rng, (0.6, 0.65), (0.15, 0.2)),
            arm_count=0.8,
            arm_length=1.25,
            arm_width=0.75,
            plate_bend=0.05,
            prophase_clumped_p=0.1,
            anaphase_sep_um=(5.0, 7.5),
            mitosis_halo_p=0.8,
            mitosis_clear_p=0.8,
            mimic_rates={
                "apoptotic": 3.5,
                "lymphocyte": 5.0,
                "pyknotic": 1.5,
                "hyperchromatic": 1.0,
                "neutrophil": 3.0,
                "debris": 1.0,
            },
            mimic_halo_p=0.85,
        ),
    )


def _dark(rng: np.random.Generator) -> StainStyle:
    """Strong purple stain, heavy blur and JPEG; dense sheets of large nuclei, large figures."""
    return StainStyle(
        stain_h=_stain(rng, [0.58, 0.74, 0.34], 0.04),
        stain_e=_stain(rng, [0.12, 0.96, 0.25], 0.04),
        amount_h=float(rng.uniform(1.3, 1.6)),
        amount_e=float(rng.uniform(1.1, 1.5)),
        white=np.clip(rng.normal(232.0, 4.0, 3), 225.0, 240.0),
        blur_um=float(rng.uniform(0.6, 0.85)),
        noise=float(rng.uniform(2.0, 4.0)),
        gamma=np.full(3, rng.uniform(1.05, 1.25)) + rng.normal(0.0, 0.02, 3),
        jpeg_quality=int(rng.integers(40, 66)),
        morphology=Morphology(
            tissue_cells=(1.5, 3.0),
            white_frac=_span(rng, (0.0, 0.02), (0.0, 0.06)),
            density_cells=(3.0, 6.0),
            stroma_od=(0.3, 0.45),
            tumour_threshold=0.3,
            cell_area_um2=50.0,
            cell_gap_um=(11.0, 3.5),
            cytoplasm_um=(7.0, 9.5),
            cytoplasm_od=(0.2, 0.4),
            nucleus_um=_span(rng, (4.5, 5.0), (2.2, 2.8)),
            nucleus_aspect=(0.6, 0.95),
            nucleus_od=(0.3, 0.55),
            chromatin=(0.5, 0.85),
            nucleus_wobble=0.16,
            nucleoli_max=4,
            grain_um=(0.45, 1.6),
            phase_p=_atypical(rng, 0.12),
            mitosis_scale=_span(rng, (1.1, 1.13), (0.15, 0.2)),
            mitosis_od=(0.5, 0.85),
            arm_count=1.3,
            arm_length=1.1,
            arm_width=1.25,
            plate_bend=0.35,
            prophase_clumped_p=0.85,
            anaphase_sep_um=(6.0, 9.0),
            mitosis_halo_p=0.15,
            mitosis_clear_p=0.2,
            mimic_rates={
                "apoptotic": 2.0,
                "lymphocyte": 2.0,
                "pyknotic": 4.0,
                "hyperchromatic": 4.0,
                "neutrophil": 0.5,
                "debris": 3.0,
            },
            mimic_halo_p=0.15,
            mimic_od=1.45,
        ),
    )


def _magenta(rng: np.random.Generator) -> StainStyle:
    """A warm lab: red-magenta eosin, reddish hematoxylin, warm tone curve; fibrous spindle-rich stroma."""
    return StainStyle(
        stain_h=_stain(rng, [0.45, 0.80, 0.40], 0.04),
        stain_e=_stain(rng, [0.05, 0.80, 0.60], 0.04),
        amount_h=float(rng.uniform(0.9, 1.2)),
        amount_e=float(rng.uniform(1.0, 1.4)),
        white=np.clip(np.array([252.0, 240.0, 225.0]) + rng.normal(0.0, 3.0, 3), 210.0, 255.0),
        blur_um=float(rng.uniform(0.3, 0.5)),
        noise=float(rng.uniform(1.5, 3.0)),
        gamma=np.array([rng.uniform(0.85, 0.95), rng.uniform(1.0, 1.05), rng.uniform(1.1, 1.25)]),
        jpeg_quality=int(rng.integers(80, 93)),
        morphology=Morphology(
            white_frac=_span(rng, (0.0, 0.1), (0.05, 0.15)),
            density_cells=(2.0, 4.0),
            stroma_od=(0.35, 0.55),
            fibre_um=(0.8, 8.0),
            fibre_wave_um=20.0,
            tumour_threshold=0.55,
            cell_area_um2=60.0,
            cytoplasm_um=(6.0, 8.0),
            nucleus_um=_span(rng, (3.5, 3.8), (1.7, 2.2)),
            nucleus_aspect=(0.45, 0.8),
            nucleus_od=(0.3, 0.6),
            chromatin=(0.3, 0.5),
            nucleus_wobble=0.2,
            stromal_um=(5.0, 8.5),
            stromal_aspect=(0.18, 0.35),
            infiltrate_p=0.3,
            phase_p=_atypical(rng, 0.3),
            mitosis_scale=_span(rng, (0.85, 0.9), (0.2, 0.25)),
            arm_length=1.5,
            plate_bend=0.2,
            prophase_clumped_p=0.5,
            anaphase_sep_um=(5.0, 8.0),
            mitosis_halo_p=0.5,
            mitosis_clear_p=0.5,
            mimic_rates={
                "apoptotic": 3.0,
                "lymphocyte": 2.0,
                "pyknotic": 2.0,
                "hyperchromatic": 2.0,
                "neutrophil": 4.0,
                "debris": 2.0,
            },
            mimic_halo_p=0.5,
        ),
    )


def _faded(rng: np.random.Generator) -> StainStyle:
    """An archival slide: greyish weak stains, yellowed white, low contrast, noise; smooth round nuclei."""
    grey = np.full(3, 1.0 / np.sqrt(3.0))
    return StainStyle(
        stain_h=_stain(rng, list(0.5 * _unit(_H_REF) + 0.5 * grey), 0.03),
        stain_e=_stain(rng, list(0.45 * _unit(_E_REF) + 0.55 * grey), 0.03),
        amount_h=float(rng.uniform(0.65, 0.9)),
        amount_e=float(rng.uniform(0.35, 0.6)),
        white=np.clip(np.array([238.0, 232.0, 205.0]) + rng.normal(0.0, 3.0, 3), 190.0, 250.0),
        blur_um=float(rng.uniform(0.4, 0.7)),
        noise=float(rng.uniform(4.0, 7.0)),
        gamma=np.full(3, rng.uniform(0.8, 0.9)),
        jpeg_quality=int(rng.integers(60, 81)),
        morphology=Morphology(
            white_frac=_span(rng, (0.05, 0.1), (0.05, 0.1)),
            density_cells=(2.0, 4.0),
            stroma_od=(0.25, 0.4),
            fibre_um=(0.7, 3.0),
            tumour_threshold=0.4,
            cell_gap_um=(12.5, 4.0),
            nucleus_um=_span(rng, (3.0, 3.3), (1.4, 1.8)),
            nucleus_aspect=(0.8, 1.0),
            nucleus_od=(0.35, 0.6),
            chromatin=(0.05, 0.2),
            nucleus_wobble=0.06,
            nucleoli_max=1,
            grain_um=(0.5, 2.0),
            phase_p=_atypical(rng, 0.08),
            mitosis_scale=_span(rng, (0.7, 0.75), (0.2, 0.25)),
            arm_count=1.1,
            arm_length=0.75,
            arm_width=1.15,
            prophase_clumped_p=0.5,
            anaphase_sep_um=(3.0, 5.0),
            mitosis_halo_p=0.3,
            mitosis_clear_p=0.3,
            mimic_rates={
                "apoptotic": 3.0,
                "lymphocyte": 4.0,
                "pyknotic": 4.0,
                "hyperchromatic": 3.0,
                "neutrophil": 0.5,
                "debris": 1.0,
            },
            mimic_halo_p=0.2,
            mimic_od=1.25,
        ),
    )


_NAMED: dict[str, Callable[[np.random.Generator], StainStyle]] = {
    "default": StainStyle.random,
    "shifted": StainStyle.shifted,
    "pale": _pale,
    "dark": _dark,
    "magenta": _magenta,
    "faded": _faded,
}


def _family(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> StainStyle:
    """A fresh draw from the family: each parameter from the look of a randomly chosen named style, none
    of ``exclude`` (without exclusions the draws are those of every version since the family exists)."""
    looks = [draw(rng) for name, draw in _NAMED.items() if name not in exclude]
    stain = {f.name: getattr(looks[rng.integers(len(looks))], f.name) for f in fields(StainStyle)}
    morph = {f.name: getattr(looks[rng.integers(len(looks))].morphology, f.name) for f in fields(Morphology)}
    stain["morphology"] = Morphology(**morph)
    return StainStyle(**stain)


BLEND_SPREAD = 0.25
"""How far the ``blend`` style reaches past its two looks: each parameter is ``a + t (b - a)`` with
``t`` uniform in ``[-BLEND_SPREAD, 1 + BLEND_SPREAD]`` (0: only values between the two looks')."""

# Bounds ``(lo, hi)`` a blended parameter is clipped to (a value outside would not render, or not mean
# what it says); parameters not named here only need to stay >= 0.
_BLEND_BOUNDS: dict[str, tuple[float, float]] = {
    "white": (150.0, 255.0),
    "gamma": (0.5, 2.0),
    "jpeg_quality": (30.0, 100.0),
    "white_frac": (0.0, 0.9),
    "tumour_threshold": (0.05, 0.95),
    "nucleus_aspect": (0.15, 1.0),
    "stromal_aspect": (0.1, 1.0),
    "infiltrate_p": (0.0, 1.0),
    "plate_bend": (0.0, 0.5),
    "prophase_clumped_p": (0.0, 1.0),
    "mitosis_halo_p": (0.0, 1.0),
    "mitosis_clear_p": (0.0, 1.0),
    "mimic_halo_p": (0.0, 1.0),
    # amounts and sizes that must stay above zero: their floor
    **{
        name: (floor, np.inf)
        for name, floor in {
            "amount_h": 0.2,
            "amount_e": 0.2,
            "tissue_cells": 0.5,
            "density_cells": 0.5,
            "fibre_um": 0.1,
            "cell_area_um2": 20.0,
            "cytoplasm_um": 2.0,
            "nucleus_um": 1.5,
            "grain_um": 0.1,
            "stromal_um": 1.5,
            "mitosis_scale": 0.3,
            "arm_count": 0.3,
            "arm_length": 0.3,
            "arm_width": 0.3,
            "anaphase_sep_um": 1.0,
            "nucleoli_max": 1.0,
        }.items()
    },
}


def _blend_value(name: str, a: object, b: object, t: float, rng: np.random.Generator) -> object:
    """``a + t (b - a)`` for one parameter of two looks, clipped to where it renders; a parameter that
    cannot be blended (``None`` in one look, a flag) is taken from one of them at random."""
    if a is None or b is None or isinstance(a, bool) or type(a) is not type(b):
        return a if rng.random() < 0.5 else b
    lo, hi = _BLEND_BOUNDS.get(name, (0.0, np.inf))
    if isinstance(a, dict):  # relative frequencies: a kind one look lacks counts as 0 there
        keys = list(dict.fromkeys([*a, *b]))
        out = {k: max(0.0, a.get(k, 0.0) + t * (b.get(k, 0.0) - a.get(k, 0.0))) for k in keys}
        return out if sum(out.values()) > 0 else dict(a)
    if isinstance(a, tuple):  # a range (kept in order) or a pair (cell_gap_um: two coefficients)
        ends = [float(np.clip(x + t * (y - x), lo, hi)) for x, y in zip(a, b, strict=True)]
        return tuple(ends if name == "cell_gap_um" else sorted(ends))
    if isinstance(a, np.ndarray):
        v = a + t * (b - a)
        if name in ("stain_h", "stain_e"):  # a direction: unit length, non-negative
            return np.abs(_unit(v))
        return np.clip(v, lo, hi)
    v = float(np.clip(a + t * (b - a), lo, hi))
    return int(round(v)) if isinstance(a, int) else v


def _blend(rng: np.random.Generator, exclude: tuple[str, ...] = (), spread: float = BLEND_SPREAD) -> StainStyle:
    """A fresh look between the named ones: each parameter blended from two looks drawn at random (none of
    ``exclude``), at its own position ``t`` in ``[-spread, 1 + spread]`` (:data:`BLEND_SPREAD`)."""
    looks = [draw(rng) for name, draw in _NAMED.items() if name not in exclude]

    def pick(name: str, of: Callable[[StainStyle], object]) -> object:
        a, b = (of(looks[i]) for i in rng.integers(len(looks), size=2))
        return _blend_value(name, a, b, float(rng.uniform(-spread, 1.0 + spread)), rng)

    morph = {f.name: pick(f.name, lambda look, n=f.name: getattr(look.morphology, n)) for f in fields(Morphology)}
    scanner = [f.name for f in fields(StainStyle) if f.name != "morphology"]
    stain = {name: pick(name, lambda look, n=name: getattr(look, n)) for name in scanner}
    return StainStyle(**stain, morphology=Morphology(**morph))


LOOKS = tuple(_NAMED)
"""The named looks (``synth --style``), each a distinct stain, scanner and morphology."""

STYLES = (*LOOKS, "random", "blend")
"""Names of the looks :func:`draw_look`, :func:`generate_field` and :func:`generate_dataset` accept."""


def _check_exclude(style: str, exclude: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    exclude = tuple(dict.fromkeys(exclude or ()))
    if not exclude:
        return exclude
    unknown = [e for e in exclude if e not in _NAMED]
    if unknown:
        raise ValueError(f"exclude: unknown style {unknown[0]!r}, expected some of {', '.join(_NAMED)}")
    if style not in ("random", "blend"):
        raise ValueError(f"exclude applies to the styles 'random' and 'blend' only, got style {style!r}")
    if len(exclude) == len(_NAMED):
        raise ValueError("exclude: every named style excluded, nothing left to draw from")
    return exclude


def draw_look(style: str, rng: np.random.Generator, exclude: tuple[str, ...] | list[str] = ()) -> StainStyle:
    """Draw one slide's look from a named style (see the module docstring's table).

    Args:
        style: one of :data:`STYLES`.
        rng: the generator to draw from.
        exclude: with ``style="random"``, named styles none of whose parameters is drawn (the family
            without a held-out look, for leave-one-style-out training); at least one must remain.

    Returns:
        the :class:`StainStyle` (stain, scanner and morphology) of one slide.

    Raises:
        ValueError: ``style`` is not one of :data:`STYLES`; ``exclude`` names an unknown style, is given
            with a named style, or excludes every style.
    """
    exclude = _check_exclude(style, exclude)
    if style == "random":
        return _family(rng, exclude)
    if style == "blend":
        return _blend(rng, exclude)
    if style not in _NAMED:
        raise ValueError(f"unknown style {style!r}, expected one of {', '.join(STYLES)}")
    return _NAMED[style](rng)


@dataclass
class SyntheticField:
    """One rendered field and its ground truth.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mitoses: ``(N, 2)`` float (x, y) pixel centres of mitotic figures.
        mimics: ``(M, 2)`` float (x, y) pixel centres of annotated mimics.
        mitosis_phases: phase name of each mitosis (one of :data:`MITOSIS_PHASES`).
        mimic_kinds: kind of each annotated mimic (one of :data:`MIMIC_KINDS`).
        spacing: pixel spacing in um/px.
    """

    image: np.ndarray
    mitoses: np.ndarray
    mimics: np.ndarray
    mitosis_phases: list[str] = field(default_factory=list)
    mimic_kinds: list[str] = field(default_factory=list)
    spacing: float = APERIO_SPACING_UM


def generate_field(
    size: tuple[int, int] = (1024, 1024),
    seed: int | np.random.Generator = 0,
    spacing: float = APERIO_SPACING_UM,
    style: StainStyle | str | None = None,
    mitosis_rate: float = 2.5,
) -> SyntheticField:
    """Render one synthetic H&E field.

    Args:
        size: ``(width, height)`` in pixels.
        seed: seed or generator; the same seed gives the same field.
        spacing: pixel spacing in um/px.
        style: the slide's look, or the name of a style in :data:`STYLES` to draw one from (with the
            field's generator); ``None`` draws a ``default`` look.
        mitosis_rate: mean number of mitoses per 1024x1024 field at 0.2455 um/px (scaled by tissue area).

    Returns:
        a :class:`SyntheticField`.

    Raises:
        ValueError: a non-positive size or spacing, or an unknown style name.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 um/px, got {spacing!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if isinstance(style, str):
        style = draw_look(style, rng)
    style = style or StainStyle.random(rng)
    return _FieldPainter(width, height, spacing, rng, style.morphology).paint(style, mitosis_rate)


def generate_dataset(
    out: str | os.PathLike,
    n_images: int = 8,
    size: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    spacing: float = APERIO_SPACING_UM,
    frames_per_slide: int = 4,
    split_name: str = "Training Aperio",
    style: str = "default",
    exclude: tuple[str, ...] | list[str] = (),
) -> list[Path]:
    """Write ``n_images`` synthetic fields in the MITOS-ATYPIA-14 layout (see module docstring).

    Fields of one slide share their look (stain, scanner, morphology) and their mitotic rate (high- and
    low-grade slides).

    Args:
        out: output root folder.
        n_images: number of fields.
        size: ``(width, height)`` in pixels.
        seed: seed of everything; the same seed writes the same files.
        spacing: pixel spacing in um/px.
        frames_per_slide: fields per slide.
        split_name: the top folder (``"<Training|Testing> <Aperio|Hamamatsu>"``).
        style: one of :data:`STYLES`: ``default`` (:meth:`StainStyle.random`), ``shifted``
            (:meth:`StainStyle.shifted`: another lab and scanner), ``pale``, ``dark``, ``magenta``,
            ``faded`` (distinct looks and morphologies, for leave-one-style-out tests) or ``random``
            (each slide a fresh draw from the whole family).
        exclude: with ``style="random"``, named styles the draws take nothing from (:func:`draw_look`).

    Returns:
        the image paths written.

    Raises:
        ValueError: ``n_images`` or ``frames_per_slide`` below 1, an unknown style, or a bad ``exclude``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images!r}")
    if frames_per_slide < 1:
        raise ValueError(f"frames_per_slide must be >= 1, got {frames_per_slide!r}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}, expected one of {', '.join(STYLES)}")
    exclude = _check_exclude(style, exclude)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    root_rng = np.random.default_rng(seed)
    n_slides = -(-n_images // frames_per_slide)
    slide_seeds = root_rng.integers(0, 2**63 - 1, size=n_slides)
    written: list[Path] = []
    for s in range(n_slides):
        rng = np.random.default_rng(slide_seeds[s])
        slide_style = draw_look(style, rng, exclude)
        rate = float(rng.choice([0.6, 1.5, 2.5, 4.0]))  # slide grade
        slide = f"S{seed % 10000:04d}{s:03d}"
        slide_dir = out / split_name / slide
        for f in range(min(frames_per_slide, n_images - s * frames_per_slide)):
            name = f"{slide}_{f:02d}"
            fld = generate_field(size, rng, spacing, slide_style.jittered(rng), mitosis_rate=rate)
            image_path = slide_dir / "frames" / "x40" / f"{name}.tiff"
            write_image(image_path, fld.image)
            _write_points(slide_dir / "mitosis" / f"{name}_mitosis.csv", fld.mitoses)
            _write_points(slide_dir / "mitosis" / f"{name}_not_mitosis.csv", fld.mimics)
            written.append(image_path)
    return written


def _write_points(path: Path, points: np.ndarray) -> None:
    with atomic_write(path, "w", newline="") as f:
        w = csv.writer(f)
        for x, y in points:
            w.writerow([int(round(x)), int(round(y)), 1])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Smooth random field in [0, 1] with about ``cells`` features across the larger side (bicubic upsampling)."""
    from PIL import Image

    h, w = shape
    step = max(h, w) / max(cells, 1.0)
    gh, gw = int(np.ceil(h / step)) + 2, int(np.ceil(w / step)) + 2
    grid = Image.fromarray(rng.random((gh, gw)).astype(np.float32), mode="F")
    # sample the inner part of the grid so that borders are as smooth as the middle
    up = np.asarray(grid.resize((w, h), Image.BICUBIC, box=(1.0, 1.0, gw - 1.0, gh - 1.0)), dtype=np.float32)
    lo, hi = up.min(), up.max()
    return (up - lo) / (hi - lo + 1e-9)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class _FieldPainter:
    """Paints optical-density maps object by object; all sizes are given in um and converted once.

    Every range and factor comes from the slide's :class:`Morphology`; with the classic one the painter
    draws exactly the random numbers it drew before the family of looks existed.
    """

    def __init__(
        self, width: int, height: int, spacing: float, rng: np.random.Generator, morphology: Morphology | None = None
    ):
        self.w, self.h = width, height
        self.px = 1.0 / spacing  # pixels per um
        self.rng = rng
        self.m = morphology or Morphology()
        self.od_h = np.zeros((height, width), np.float32)
        self.od_e = np.zeros((height, width), np.float32)
        # shared textures, sampled under each object
        self.fine = self._noise(self.m.grain_um[0])  # chromatin grain
        self.coarse = self._noise(self.m.grain_um[1])  # clumps
        self.occupied: list[tuple[float, float, float]] = []  # (x, y, radius px) of figures and mimics

    # ---- primitives -------------------------------------------------------------------------
    def _noise(self, sigma_um: float) -> np.ndarray:
        n = self.rng.standard_normal((self.h, self.w)).astype(np.float32)
        n = ndimage.gaussian_filter(n, sigma_um * self.px)
        return n / (n.std() + 1e-6)

    def _warp(self, img: np.ndarray, amplitude: float) -> np.ndarray:
        """Displace ``img`` by a smooth random field of up to ``amplitude`` px."""
        shape = img.shape
        dy = (_smooth_field(self.rng, shape, 6.0) - 0.5) * 2 * amplitude
        dx = (_smooth_field(self.rng, shape, 6.0) - 0.5) * 2 * amplitude
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        return ndimage.map_coordinates(img, [yy + dy, xx + dx], order=1, mode="reflect")

    def _box(self, x: float, y: float, r: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """Slices of the canvas around (x, y) with half-size r px, and local coordinates relative to (x, y)."""
        x0, x1 = max(int(np.floor(x - r)), 0), min(int(np.ceil(x + r)) + 1, self.w)
        y0, y1 = max(int(np.floor(y - r)), 0), min(int(np.ceil(y + r)) + 1, self.h)
        if x0 >= x1 or y0 >= y1:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        return slice(y0, y1), slice(x0, x1), xx - x, yy - y

    def _blob_mask(
        self, u: np.ndarray, v: np.ndarray, a: float, b: float, angle: float, wobble: float, edge: float = 1.0
    ) -> np.ndarray:
        """Soft mask of an ellipse (semi-axes a, b px, rotated) with a wobbly outline; 1 inside."""
        c, s = np.cos(angle), np.sin(angle)
        p = (c * u + s * v) / a
        q = (-s * u + c * v) / b
        r = np.sqrt(p * p + q * q)
        theta = np.arctan2(q, p)
        bound = np.ones_like(r)
        for k in (2, 3, 5):
            bound += wobble * self.rng.normal(0, 1.0 / k) * np.cos(k * theta + self.rng.uniform(0, 2 * np.pi))
        return _smoothstep((bound - r) * min(a, b) / edge + 0.5)

    def _arms(self, box, centres: np.ndarray, angles: np.ndarray, length: float, width: float) -> np.ndarray:
        """Sum of small elongated Gaussians (chromosome arms) at ``centres`` (k, 2) local px."""
        _, _, u, v = box
        acc = np.zeros_like(u)
        for (cx, cy), ang in zip(centres, angles, strict=True):
            c, s = np.cos(ang), np.sin(ang)
            du, dv = u - cx, v - cy
            p = (c * du + s * dv) / length
            q = (-s * du + c * dv) / width
            acc += np.exp(-0.5 * (p * p + q * q))
        return acc

    def _free(self, x: float, y: float, r: float) -> bool:
        return all((x - ox) ** 2 + (y - oy) ** 2 > (r + orr) ** 2 for ox, oy, orr in self.occupied)

    # ---- tissue ---------------------------------------------------------------------------
    def paint(self, style: StainStyle, mitosis_rate: float) -> SyntheticField:
        rng, m = self.rng, self.m
        scale = (self.w * self.h) / (1024.0 * 1024.0) * (APERIO_SPACING_UM * self.px) ** -2
        tissue = _smooth_field(rng, (self.h, self.w), cells=rng.uniform(*m.tissue_cells))
        white_frac = rng.uniform(*m.white_frac)
        thr = np.quantile(tissue, white_frac) if white_frac > 0.02 else -1.0
        tissue_mask = _smoothstep((tissue - thr) * 12.0).astype(np.float32)
        density = _smooth_field(rng, (self.h, self.w), cells=rng.uniform(*m.density_cells))

        # stroma: fibres along a random direction, stronger where cells are sparse
        fib = rng.standard_normal((self.h, self.w)).astype(np.float32)
        sig = np.array(m.fibre_um) * self.px
        fib = ndimage.gaussian_filter(fib, sig)
        fib = ndimage.rotate(fib, rng.uniform(0, 180), reshape=False, order=1, mode="reflect")
        fib = self._warp(fib, m.fibre_wave_um * self.px)  # wavy collagen, not straight combed lines
        fib /= fib.std() + 1e-6
        self.od_e += (
            tissue_mask
            * np.float32(rng.uniform(*m.stroma_od))
            * np.clip(1.0 + 0.25 * fib + 0.1 * self.coarse, 0.4, None)
        )
        self.od_h += tissue_mask * np.float32(rng.uniform(0.03, 0.08)) * (1.0 + 0.3 * self.coarse)

        # annotated figures first (they need free room), then ordinary cells fill the tissue
        p = np.array(list(m.phase_p.values()), dtype=np.float64)
        p = p if abs(p.sum() - 1.0) < 1e-9 else p / p.sum()
        mitoses, phases = self._place_figures(
            rng.poisson(mitosis_rate * scale), tissue_mask, density, tuple(m.phase_p), self._mitosis, p
        )
        n_mimics = {kind: rng.poisson(rate * scale) for kind, rate in m.mimic_rates.items()}
        mimics: list[tuple[float, float]] = []
        kinds: list[str] = []
        for kind, n in n_mimics.items():
            pts, _ = self._place_figures(n, tissue_mask, density, (kind,), self._mimic)
            mimics += [tuple(p) for p in pts]
            kinds += [kind] * len(pts)
        if rng.random() < m.infiltrate_p:
            self._infiltrate(tissue_mask)
        self._cells(tissue_mask, density)

        rgb = self._render(style)
        return SyntheticField(
            image=rgb,
            mitoses=np.asarray(mitoses, np.float64).reshape(-1, 2),
            mimics=np.asarray(mimics, np.float64).reshape(-1, 2),
            mitosis_phases=phases,
            mimic_kinds=kinds,
            spacing=1.0 / self.px,
        )

    def _place_figures(
        self,
        n: int,
        tissue_mask: np.ndarray,
        density: np.ndarray,
        kinds: tuple[str, ...],
        painter: Callable[[float, float, str], float | None],
        p: np.ndarray | None = None,
    ) -> tuple[list[list[float]], list[str]]:
        pts, names = [], []
        margin = 4.0 * self.px
        for _ in range(int(n)):
            for _try in range(30):
                x = self.rng.uniform(margin, max(self.w - margin, margin + 1))
                y = self.rng.uniform(margin, max(self.h - margin, margin + 1))
                xi, yi = min(int(x), self.w - 1), min(int(y), self.h - 1)
                if tissue_mask[yi, xi] < 0.9 or self.rng.random() > 0.35 + density[yi, xi]:
                    continue
                if not self._free(x, y, 13.0 * self.px):  # annotated figures stay >= 20 um apart
                    continue
                kind = str(self.rng.choice(kinds, p=p))
                room = painter(x, y, kind)
                self.occupied.append((x, y, room or 7.0 * self.px))
                pts.append([x, y])
                names.append(kind)
                break
        return pts, names

    def _cell_body(self, x: float, y: float, r_um: float, e_od: float, halo: float = 0.0) -> None:
        """Cytoplasm (eosin) around a nucleus; ``halo`` clears a ring around the cell (retraction)."""
        r = r_um * self.px
        box = self._box(x, y, r * 1.6)
        if box is None:
            return
        ys, xs, u, v = box
        m = self._blob_mask(u, v, r, r * self.rng.uniform(0.8, 1.0), self.rng.uniform(0, np.pi), 0.15, edge=2.0)
        if halo > 0:
            ring = self._blob_mask(u, v, r * 1.45, r * 1.45, 0.0, 0.1, edge=2.0) - m
            keep = 1.0 - halo * np.clip(ring, 0, 1)
            self.od_e[ys, xs] *= keep
            self.od_h[ys, xs] *= keep
        self.od_e[ys, xs] += e_od * m * (1.0 + 0.15 * self.fine[ys, xs])

    def _nucleus(
        self, x, y, a_um, b_um, od, texture, wobble=0.12, nucleoli=True, rim=0.25, angle: float | None = None
    ) -> None:
        a, b = a_um * self.px, b_um * self.px
        box = self._box(x, y, max(a, b) * 1.5 + 2)
        if box is None:
            return
        ys, xs, u, v = box
        angle = self.rng.uniform(0, np.pi) if angle is None else angle
        m = self._blob_mask(u, v, a, b, angle, wobble, edge=1.2)
        inner = self._blob_mask(u, v, a * 0.8, b * 0.8, 0.0, 0.0, edge=2.0)
        chrom = 1.0 + texture * (0.6 * self.fine[ys, xs] + 0.4 * self.coarse[ys, xs])
        dens = m * (1.0 + rim * (m - inner)) * np.clip(chrom, 0.2, None)
        self.od_h[ys, xs] += od * dens
        self.od_e[ys, xs] *= 1.0 - 0.5 * m
        if nucleoli:
            for _ in range(self.rng.integers(0, self.m.nucleoli_max)):
                cx, cy = self.rng.normal(0, 0.35 * a), self.rng.normal(0, 0.35 * b)
                rr = self.rng.uniform(0.5, 1.0) * self.px
                self.od_h[ys, xs] += 0.5 * od * np.exp(-0.5 * ((u - cx) ** 2 + (v - cy) ** 2) / rr**2) * m

    def _cells(self, tissue_mask: np.ndarray, density: np.ndarray) -> None:
        """Ordinary tumour and stromal cells, sampled with a minimum spacing that follows density."""
        rng, mo = self.rng, self.m
        area_um2 = self.w * self.h / self.px**2
        n_try = int(area_um2 / mo.cell_area_um2)
        xs = rng.uniform(0, self.w, n_try)
        ys = rng.uniform(0, self.h, n_try)
        dens = density[ys.astype(int).clip(0, self.h - 1), xs.astype(int).clip(0, self.w - 1)]
        tis = tissue_mask[ys.astype(int).clip(0, self.h - 1), xs.astype(int).clip(0, self.w - 1)]
        keep = rng.random(n_try) < tis * (0.15 + 0.85 * dens**1.5)
        placed: list[tuple[float, float]] = []
        grid: dict[tuple[int, int], list[int]] = {}
        cell = 10.0 * self.px
        gap0, gap1 = mo.cell_gap_um
        for x, y, d in zip(xs[keep], ys[keep], dens[keep], strict=True):
            min_d = (gap0 - gap1 * d) * self.px
            gx, gy = int(x // cell), int(y // cell)
            near = [i for dx in (-1, 0, 1) for dy in (-1, 0, 1) for i in grid.get((gx + dx, gy + dy), [])]
            if any((placed[i][0] - x) ** 2 + (placed[i][1] - y) ** 2 < min_d**2 for i in near):
                continue
            if not self._free(x, y, 4.5 * self.px):
                continue
            grid.setdefault((gx, gy), []).append(len(placed))
            placed.append((x, y))
            tumour = d > mo.tumour_threshold
            if tumour:
                self._cell_body(x, y, rng.uniform(*mo.cytoplasm_um), rng.uniform(*mo.cytoplasm_od))
                a = rng.uniform(*mo.nucleus_um)
                self._nucleus(
                    x,
                    y,
                    a,
                    a * rng.uniform(*mo.nucleus_aspect),
                    rng.uniform(*mo.nucleus_od),
                    rng.uniform(*mo.chromatin),
                    wobble=mo.nucleus_wobble,
                )
            else:  # spindle-shaped stromal nucleus
                a = rng.uniform(*mo.stromal_um)
                self._nucleus(x, y, a, a * rng.uniform(*mo.stromal_aspect), rng.uniform(0.35, 0.7), 0.2, nucleoli=False)

    def _infiltrate(self, tissue_mask: np.ndarray) -> None:
        """A cluster of lymphocytes (not annotated, as in real ground truth)."""
        rng = self.rng
        cx, cy = rng.uniform(0, self.w), rng.uniform(0, self.h)
        r = rng.uniform(20, 45) * self.px
        for _ in range(int(rng.integers(20, 70))):
            x, y = cx + rng.normal(0, r / 2), cy + rng.normal(0, r / 2)
            if not (0 <= x < self.w and 0 <= y < self.h) or tissue_mask[int(y), int(x)] < 0.5:
                continue
            if not self._free(x, y, 4.0 * self.px):
                continue
            self._lymphocyte(x, y)

    # ---- mitotic figures ------------------------------------------------------------------
    def _count(self, lo: int, hi: int) -> int:
        """Number of chromosome arms, ``lo <= k < hi`` times the slide's arm-count factor."""
        f = self.m.arm_count
        return int(self.rng.integers(round(lo * f), max(round(hi * f), round(lo * f) + 1)))

    def _mitosis(self, x: float, y: float, phase: str) -> float:
        """Paint a mitotic figure centred on (x, y); returns the radius (px) it keeps free of other cells."""
        rng, px, mo = self.rng, self.px, self.m
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)])  # spindle axis
        n_perp = np.array([-d[1], d[0]])  # plate direction
        s = 1.0 if mo.mitosis_scale is None else rng.uniform(*mo.mitosis_scale)
        al, aw = mo.arm_length, mo.arm_width
        # a rounded mitotic cell, classically with pale, clear cytoplasm and a faint retraction halo
        r_cell = rng.uniform(8.0, 11.0) * (0.5 + 0.5 * s) * (1.2 if phase in ATYPICAL_PHASES else 1.0)
        if mo.mitosis_clear_p is None:
            e_cyto = rng.uniform(0.08, 0.2)
        else:
            e_cyto = rng.uniform(0.03, 0.1) if rng.random() < mo.mitosis_clear_p else rng.uniform(0.2, 0.4)
        if mo.mitosis_halo_p is None:
            halo = rng.uniform(0.0, 0.4)
        else:
            halo = rng.uniform(0.5, 0.9) if rng.random() < mo.mitosis_halo_p else 0.0
        self._cell_body(x, y, r_cell, e_cyto, halo=halo)
        od = rng.uniform(*mo.mitosis_od)
        if phase == "prophase":
            diam = rng.uniform(6.0, 10.0) * s * px
            k = self._count(40, 80)
            clumped = mo.prophase_clumped_p is not None and rng.random() < mo.prophase_clumped_p
            if clumped:  # a few coarse clumps of condensed chromatin
                n_cl = int(rng.integers(4, 9))
                c_rad = 0.75 * diam / 2 * np.sqrt(rng.random(n_cl))
                c_th = rng.uniform(0, 2 * np.pi, n_cl)
                clumps = np.stack([c_rad * np.cos(c_th), c_rad * np.sin(c_th)], 1)
                centres = clumps[rng.integers(0, n_cl, k)] + rng.normal(0, 0.9 * px * s, (k, 2))
                arm, width = 0.7, 0.45
            else:  # granular disc; spread prophase: long thin threads
                rad = diam / 2 * np.sqrt(rng.random(k))
                th = rng.uniform(0, 2 * np.pi, k)
                centres = np.stack([rad * np.cos(th), rad * np.sin(th)], 1)
                arm, width = (0.9, 0.35) if mo.prophase_clumped_p is None else (1.5, 0.28)
            self._chromatin(x, y, centres, rng.uniform(0, np.pi, k), diam / 2 + 3 * px * s, od, arm * al, width * aw)
        elif phase == "metaphase":
            length = rng.uniform(8.0, 15.0) * s * px
            width = rng.uniform(1.5, 3.0) * s * px
            centres = self._plate(self._count(35, 70), length, width, n_perp, d)
            centres = self._bend(centres, length, n_perp, d, 1.0)
            arms = angle + rng.normal(0, 0.5, len(centres))  # arms stick out along the spindle: ragged edge
            self._chromatin(x, y, centres, arms, length / 2 + 4 * px * s, od, 1.1 * al, 0.35 * aw)
        elif phase in ("anaphase", "lagging"):
            length = rng.uniform(7.0, 13.0) * s * px
            sep = rng.uniform(*mo.anaphase_sep_um) * s * px
            if phase == "lagging":
                sep *= 1.4  # room for the chromosomes left behind
            c1 = self._plate(self._count(25, 45), length, 1.2 * px * s, n_perp, d)
            c2 = self._plate(self._count(25, 45), length, 1.2 * px * s, n_perp, d)
            bend = rng.uniform(-1.0, 1.0) if mo.plate_bend > 0 else 0.0  # the two plates curve apart
            c1 = self._bend(c1, length, n_perp, d, bend) + d * sep / 2
            c2 = self._bend(c2, length, n_perp, d, -bend) - d * sep / 2
            centres = np.concatenate([c1, c2])
            arms = angle + rng.normal(0, 0.4, len(centres))
            if phase == "lagging":
                lag, lag_arms = self._lagging(sep, length, d, n_perp, angle)
                centres, arms = np.concatenate([centres, lag]), np.concatenate([arms, lag_arms])
            self._chromatin(x, y, centres, arms, max(length, sep) / 2 + 5 * px * s, od, 0.8 * al, 0.3 * aw)
        elif phase == "telophase":
            sep = rng.uniform(7.0, 12.0) * s * px
            k = self._count(25, 45)
            parts = []
            for sgn in (1, -1):
                rad = rng.uniform(2.0, 3.5) * s * px * np.sqrt(rng.random(k))
                th = rng.uniform(0, 2 * np.pi, k)
                parts.append(
                    np.stack([rad * np.cos(th), rad * np.sin(th) * 0.7], 1) @ _rot(angle).T + sgn * d * sep / 2
                )
            self._chromatin(
                x, y, np.concatenate(parts), rng.uniform(0, np.pi, 2 * k), sep / 2 + 6 * px * s, od, 1.0 * al, 0.3 * aw
            )
            for sgn in (1, -1):  # two daughter cells pinching apart
                cx, cy = np.array([x, y]) + sgn * d * sep / 2
                self._cell_body(cx, cy, rng.uniform(4.5, 6.0) * (0.5 + 0.5 * s), rng.uniform(0.1, 0.25))
        elif phase == "tripolar":  # three short plates around the centre, one per spindle pole
            rad = rng.uniform(2.5, 4.0) * s * px
            parts, arms = [], []
            for j in range(3):
                phi = angle + 2 * np.pi * j / 3 + rng.normal(0, 0.15)
                pole = np.array([np.cos(phi), np.sin(phi)])
                along = np.array([-pole[1], pole[0]])
                plate = self._plate(self._count(15, 30), rng.uniform(3.5, 6.5) * s * px, 1.2 * px * s, along, pole)
                parts.append(plate + pole * rad)
                arms.append(phi + rng.normal(0, 0.5, len(plate)))
            centres = np.concatenate(parts)
            self._chromatin(x, y, centres, np.concatenate(arms), rad + 6 * px * s, od, 1.0 * al, 0.35 * aw)
        elif phase == "ring":  # a ring of chromosomes around a clear centre (polar view)
            rad = rng.uniform(3.0, 5.0) * s * px
            k = self._count(40, 70)
            th = rng.uniform(0, 2 * np.pi, k)
            rr = rad + rng.normal(0, 0.45 * px, k)
            squash = rng.uniform(0.7, 1.0)
            centres = np.stack([rr * np.cos(th), rr * np.sin(th) * squash], 1) @ _rot(angle).T
            arms = th + angle + np.pi / 2 + rng.normal(0, 0.7, k)  # arms along the ring, ragged inside and out
            self._chromatin(x, y, centres, arms, rad + 4 * px * s, od, 1.1 * al, 0.35 * aw)
        else:
            raise ValueError(f"unknown mitosis phase {phase!r}, expected one of {MITOSIS_PHASES}")
        return 7.0 * px * max(s, 1.0)

    def _plate(self, k: int, length: float, width: float, along: np.ndarray, across: np.ndarray) -> np.ndarray:
        t = self.rng.uniform(-0.5, 0.5, k) * length
        w = self.rng.normal(0, width / 2, k)
        return t[:, None] * along[None] + w[:, None] * across[None]

    def _bend(
        self, centres: np.ndarray, length: float, along: np.ndarray, across: np.ndarray, sign: float
    ) -> np.ndarray:
        """Bend a plate into an arc (up to ``plate_bend`` of its half length); its centre stays in place."""
        if self.m.plate_bend <= 0 or sign == 0:
            return centres
        amount = sign * self.rng.uniform(0.3, 1.0) * self.m.plate_bend * length / 2
        t = centres @ along / (length / 2)
        return centres + (amount * (t * t - 1.0 / 3.0))[:, None] * across[None]

    def _lagging(
        self, sep: float, length: float, d: np.ndarray, n_perp: np.ndarray, angle: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chromosomes left between the anaphase plates, and sometimes a thin chromatin bridge."""
        rng, px = self.rng, self.px
        parts, arms = [], []
        for _ in range(int(rng.integers(1, 4))):
            at = rng.uniform(-0.3, 0.3) * sep * d + rng.uniform(-0.4, 0.4) * length * n_perp
            k = int(rng.integers(2, 6))
            parts.append(at[None] + rng.normal(0, 0.5 * px, (k, 2)))
            arms.append(angle + rng.normal(0, 0.3, k))
        if rng.random() < 0.4:
            t = np.linspace(-0.45, 0.45, 12) * sep
            off = rng.uniform(-0.3, 0.3) * length
            parts.append(t[:, None] * d[None] + off * n_perp[None])
            arms.append(np.full(len(t), angle))
        return np.concatenate(parts), np.concatenate(arms)

    def _chromatin(self, x, y, centres, angles, radius, od, arm_um, width_um) -> None:
        box = self._box(x, y, radius + 2)
        if box is None:
            return
        ys, xs, u, v = box
        acc = self._arms(box, centres, angles, arm_um * self.px, width_um * self.px * self.rng.uniform(0.8, 1.3))
        dens = 1.0 - np.exp(-acc)  # saturates where arms overlap
        dens *= np.clip(1.0 + 0.25 * self.fine[ys, xs], 0.3, None)
        self.od_h[ys, xs] += od * 3.0 * dens
        self.od_e[ys, xs] *= 1.0 - 0.4 * dens

    # ---- mimics ---------------------------------------------------------------------------
    def _halo(self, classic: tuple[float, float] | None) -> float:
        """Strength of a mimic's retraction halo: the classic range, or present with ``mimic_halo_p``."""
        p = self.m.mimic_halo_p
        if p is None:
            return 0.0 if classic is None else self.rng.uniform(*classic)
        return self.rng.uniform(0.5, 0.9) if self.rng.random() < p else 0.0

    def _mimic(self, x: float, y: float, kind: str) -> None:
        rng = self.rng
        if kind == "apoptotic":
            # shrunken, bright eosinophilic cell, classically with a clear retraction halo, smooth dark fragments
            self._cell_body(x, y, rng.uniform(5.0, 8.0), rng.uniform(0.5, 0.85), halo=self._halo((0.5, 0.9)))
            n = int(rng.integers(1, 5))
            for i in range(n):
                off = rng.normal(0, 1.6, 2) * self.px if (n > 1 or i) else np.zeros(2)
                r = rng.uniform(1.2, 3.2) if n > 1 else rng.uniform(2.5, 4.5)
                self._nucleus(
                    x + off[0],
                    y + off[1],
                    r,
                    r * rng.uniform(0.8, 1.0),
                    rng.uniform(1.1, 1.9) * self.m.mimic_od,
                    0.08,
                    wobble=0.03,
                    nucleoli=False,
                    rim=0.0,
                )
        elif kind == "lymphocyte":
            self._lymphocyte(x, y)
        elif kind == "pyknotic":
            self._cell_body(x, y, rng.uniform(5.0, 7.5), rng.uniform(0.2, 0.45), halo=self._halo((0.0, 0.5)))
            r = rng.uniform(2.5, 4.5)
            self._nucleus(
                x,
                y,
                r,
                r * rng.uniform(0.65, 1.0),
                rng.uniform(1.1, 1.8) * self.m.mimic_od,
                0.1,
                wobble=0.06,
                nucleoli=False,
                rim=0.1,
            )
        elif kind == "hyperchromatic":
            # large, dark, coarse chromatin: the look of an early prophase without the threads
            self._cell_body(x, y, rng.uniform(7.0, 9.5), rng.uniform(0.15, 0.35), halo=self._halo(None))
            a = rng.uniform(4.0, 6.5)
            self._nucleus(
                x,
                y,
                a,
                a * rng.uniform(0.6, 0.95),
                rng.uniform(0.8, 1.3) * self.m.mimic_od,
                rng.uniform(0.4, 0.7),
                wobble=0.2,
                rim=0.35,
            )
        elif kind == "neutrophil":
            self._neutrophil(x, y)
        elif kind == "debris":
            self._debris(x, y)
        else:
            raise ValueError(f"unknown mimic kind {kind!r}, expected one of {MIMIC_KINDS}")

    def _lymphocyte(self, x: float, y: float) -> None:
        rng = self.rng
        r = rng.uniform(2.4, 3.6)
        self._cell_body(x, y, r + 0.8, rng.uniform(0.05, 0.15))
        self._nucleus(
            x,
            y,
            r,
            r * rng.uniform(0.85, 1.0),
            rng.uniform(1.0, 1.6) * self.m.mimic_od,
            0.2,
            wobble=0.04,
            nucleoli=False,
            rim=0.1,
        )

    def _neutrophil(self, x: float, y: float) -> None:
        """Three to five dark round lobes on a curved chain, joined by thin strands, in granular pink cytoplasm."""
        rng, px = self.rng, self.px
        self._cell_body(x, y, rng.uniform(5.0, 6.5), rng.uniform(0.3, 0.5), halo=self._halo(None))
        n = int(rng.integers(3, 6))
        phi = rng.uniform(0, 2 * np.pi) + np.arange(n) * rng.uniform(0.9, 1.3)
        chain = rng.uniform(2.4, 3.0) * np.stack([np.cos(phi), np.sin(phi)], 1)
        chain -= chain.mean(0)
        od = rng.uniform(1.0, 1.6) * self.m.mimic_od
        for (ax, ay), (bx, by) in zip(chain[:-1], chain[1:], strict=True):
            half = 0.5 * np.hypot(bx - ax, by - ay)
            mid_x, mid_y = x + 0.5 * (ax + bx) * px, y + 0.5 * (ay + by) * px
            strand_angle = float(np.arctan2(by - ay, bx - ax))
            self._nucleus(
                mid_x, mid_y, half, 0.3, 0.7 * od, 0.0, wobble=0.0, nucleoli=False, rim=0.0, angle=strand_angle
            )
        for cx, cy in chain:
            r = rng.uniform(0.9, 1.3)
            self._nucleus(
                x + cx * px, y + cy * px, r, r * rng.uniform(0.75, 1.0), od, 0.1, wobble=0.05, nucleoli=False, rim=0.1
            )

    def _debris(self, x: float, y: float) -> None:
        """Irregular dark fragments of varied size scattered in an eosinophilic blob (karyorrhexis)."""
        rng, px = self.rng, self.px
        self._cell_body(x, y, rng.uniform(4.0, 7.0), rng.uniform(0.3, 0.6), halo=self._halo(None))
        n = int(rng.integers(4, 13))
        offsets = rng.normal(0, 1.0, (n, 2)) * rng.uniform(1.2, 2.5)
        offsets -= offsets.mean(0)
        for ox, oy in offsets:
            r = rng.uniform(0.4, 1.6)
            self._nucleus(
                x + ox * px,
                y + oy * px,
                r,
                r * rng.uniform(0.4, 1.0),
                rng.uniform(1.2, 2.0) * self.m.mimic_od,
                0.1,
                wobble=0.35,
                nucleoli=False,
                rim=0.0,
            )

    # ---- optics ---------------------------------------------------------------------------
    def _render(self, style: StainStyle) -> np.ndarray:
        od = self.od_h[..., None] * (style.amount_h * style.stain_h)[None, None].astype(np.float32) + self.od_e[
            ..., None
        ] * (style.amount_e * style.stain_e)[None, None].astype(np.float32)
        rgb = style.white[None, None].astype(np.float32) * np.exp(-od)
        sigma = style.blur_um * self.px
        if sigma > 0.2:
            rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0))
        if style.sharpen > 0:  # the scanner's unsharp mask
            s = 0.4 * self.px
            rgb += np.float32(style.sharpen) * (rgb - ndimage.gaussian_filter(rgb, (s, s, 0)))
        rgb += self.rng.normal(0.0, style.noise, rgb.shape).astype(np.float32)
        gamma = np.asarray(style.gamma, dtype=np.float32)
        if not np.allclose(gamma, 1.0):
            rgb = 255.0 * (np.clip(rgb, 0, 255) / 255.0) ** gamma[None, None]
        out = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        if style.jpeg_quality is not None:
            out = _jpeg_roundtrip(out, style.jpeg_quality)
        return out


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])

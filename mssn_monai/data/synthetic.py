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
- mitotic figures in four phases built from many small chromosome arms, which gives them their
  ragged, hairy outline: prophase (granular round), metaphase (dark plate seen edge-on as a bar),
  anaphase (two parallel bars), telophase (two separated dark masses in a pinching cell); 5-15 um;
- hard mimics that are as dark as mitoses: apoptotic bodies (smooth condensed fragments in bright
  eosinophilic cytoplasm with a retraction halo), lymphocytes (small, round, dark), pyknotic and
  hyperchromatic nuclei (dark, smooth or coarse, round).

Darkness alone does not separate the classes (a darkness-based blob detector is fooled by the mimics);
shape, outline and texture do. Every slide gets its own stain vectors, stain amounts, white point,
blur and noise, so a model must not rely on one colour.

Ground truth: a mitosis is marked at the centre of its figure (the midpoint of both daughter masses
in anaphase and telophase), as annotators do. Mimics of the kinds listed above are marked as
``not_mitosis``, except lymphocytes inside dense infiltrates (real annotators do not mark those).

Files are written in the MITOS-ATYPIA-14 layout so that ``prepare --format mitos-atypia-14`` reads
them like real data::

    <out>/Training Aperio/<slide>/frames/x40/<slide>_<nn>.tiff
    <out>/Training Aperio/<slide>/mitosis/<slide>_<nn>_mitosis.csv       (x,y,confidence)
    <out>/Training Aperio/<slide>/mitosis/<slide>_<nn>_not_mitosis.csv   (x,y,confidence)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mssn_monai.io import atomic_write, write_image

__all__ = [
    "MITOSIS_PHASES",
    "MIMIC_KINDS",
    "SyntheticField",
    "StainStyle",
    "generate_field",
    "generate_dataset",
]

MITOSIS_PHASES = ("prophase", "metaphase", "anaphase", "telophase")
MIMIC_KINDS = ("apoptotic", "lymphocyte", "pyknotic", "hyperchromatic")

# Ruifrok & Johnston optical-density vectors (RGB) of hematoxylin and eosin.
_H_REF = np.array([0.650, 0.704, 0.286])
_E_REF = np.array([0.072, 0.990, 0.105])


@dataclass
class StainStyle:
    """How one slide was stained and scanned.

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
        )


@dataclass
class SyntheticField:
    """One rendered field and its ground truth.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mitoses: ``(N, 2)`` float (x, y) pixel centres of mitotic figures.
        mimics: ``(M, 2)`` float (x, y) pixel centres of annotated mimics.
        mitosis_phases: phase name of each mitosis.
        mimic_kinds: kind of each annotated mimic.
        spacing: pixel spacing in um/px.
    """

    image: np.ndarray
    mitoses: np.ndarray
    mimics: np.ndarray
    mitosis_phases: list[str] = field(default_factory=list)
    mimic_kinds: list[str] = field(default_factory=list)
    spacing: float = 0.2455


def generate_field(
    size: tuple[int, int] = (1024, 1024),
    seed: int | np.random.Generator = 0,
    spacing: float = 0.2455,
    style: StainStyle | None = None,
    mitosis_rate: float = 2.5,
) -> SyntheticField:
    """Render one synthetic H&E field.

    Args:
        size: ``(width, height)`` in pixels.
        seed: seed or generator; the same seed gives the same field.
        spacing: pixel spacing in um/px.
        style: stain and scanner look; drawn at random when ``None``.
        mitosis_rate: mean number of mitoses per 1024x1024 field at 0.2455 um/px (scaled by tissue area).

    Returns:
        a :class:`SyntheticField`.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 um/px, got {spacing!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    style = style or StainStyle.random(rng)
    return _FieldPainter(width, height, spacing, rng).paint(style, mitosis_rate)


def generate_dataset(
    out: str | os.PathLike,
    n_images: int = 8,
    size: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    spacing: float = 0.2455,
    frames_per_slide: int = 4,
    split_name: str = "Training Aperio",
    style: str = "default",
) -> list[Path]:
    """Write ``n_images`` synthetic fields in the MITOS-ATYPIA-14 layout (see module docstring).

    Fields of one slide share their stain style and their mitotic rate (high- and low-grade slides).

    Args:
        out: output root folder.
        n_images: number of fields.
        size: ``(width, height)`` in pixels.
        seed: seed of everything; the same seed writes the same files.
        spacing: pixel spacing in um/px.
        frames_per_slide: fields per slide.
        split_name: the top folder (``"<Training|Testing> <Aperio|Hamamatsu>"``).
        style: ``"default"`` (:meth:`StainStyle.random`) or ``"shifted"`` (:meth:`StainStyle.shifted`: another
            lab and scanner, for domain-shift tests).

    Returns:
        the image paths written.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images!r}")
    if frames_per_slide < 1:
        raise ValueError(f"frames_per_slide must be >= 1, got {frames_per_slide!r}")
    styles = {"default": StainStyle.random, "shifted": StainStyle.shifted}
    if style not in styles:
        raise ValueError(f"unknown style {style!r}, expected one of {sorted(styles)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    root_rng = np.random.default_rng(seed)
    n_slides = -(-n_images // frames_per_slide)
    slide_seeds = root_rng.integers(0, 2**63 - 1, size=n_slides)
    written: list[Path] = []
    for s in range(n_slides):
        rng = np.random.default_rng(slide_seeds[s])
        slide_style = styles[style](rng)
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
    """Paints optical-density maps object by object; all sizes are given in um and converted once."""

    def __init__(self, width: int, height: int, spacing: float, rng: np.random.Generator):
        self.w, self.h = width, height
        self.px = 1.0 / spacing  # pixels per um
        self.rng = rng
        self.od_h = np.zeros((height, width), np.float32)
        self.od_e = np.zeros((height, width), np.float32)
        # shared textures, sampled under each object
        self.fine = self._noise(0.35)  # chromatin grain
        self.coarse = self._noise(1.2)  # clumps
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
        rng = self.rng
        scale = (self.w * self.h) / (1024.0 * 1024.0) * (0.2455 * self.px) ** -2
        tissue = _smooth_field(rng, (self.h, self.w), cells=rng.uniform(2.0, 4.0))
        white_frac = rng.uniform(0.0, 0.25)
        thr = np.quantile(tissue, white_frac) if white_frac > 0.02 else -1.0
        tissue_mask = _smoothstep((tissue - thr) * 12.0).astype(np.float32)
        density = _smooth_field(rng, (self.h, self.w), cells=rng.uniform(2.0, 5.0))

        # stroma: fibres along a random direction, stronger where cells are sparse
        fib = rng.standard_normal((self.h, self.w)).astype(np.float32)
        sig = np.array([0.5, 5.0]) * self.px
        fib = ndimage.gaussian_filter(fib, sig)
        fib = ndimage.rotate(fib, rng.uniform(0, 180), reshape=False, order=1, mode="reflect")
        fib = self._warp(fib, 12.0 * self.px)  # wavy collagen, not straight combed lines
        fib /= fib.std() + 1e-6
        self.od_e += (
            tissue_mask * np.float32(rng.uniform(0.22, 0.4)) * np.clip(1.0 + 0.25 * fib + 0.1 * self.coarse, 0.4, None)
        )
        self.od_h += tissue_mask * np.float32(rng.uniform(0.03, 0.08)) * (1.0 + 0.3 * self.coarse)

        # annotated figures first (they need free room), then ordinary cells fill the tissue
        mitoses, phases = self._place_figures(
            rng.poisson(mitosis_rate * scale), tissue_mask, density, MITOSIS_PHASES, self._mitosis
        )
        n_mimics = {
            "apoptotic": rng.poisson(3.0 * scale),
            "lymphocyte": rng.poisson(4.0 * scale),
            "pyknotic": rng.poisson(3.0 * scale),
            "hyperchromatic": rng.poisson(2.5 * scale),
        }
        mimics: list[tuple[float, float]] = []
        kinds: list[str] = []
        for kind, n in n_mimics.items():
            pts, _ = self._place_figures(n, tissue_mask, density, (kind,), self._mimic)
            mimics += [tuple(p) for p in pts]
            kinds += [kind] * len(pts)
        if rng.random() < 0.5:
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

    def _place_figures(self, n, tissue_mask, density, kinds, painter) -> tuple[list[list[float]], list[str]]:
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
                kind = str(self.rng.choice(kinds, p=_phase_p(kinds)))
                painter(x, y, kind)
                self.occupied.append((x, y, 7.0 * self.px))
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

    def _nucleus(self, x, y, a_um, b_um, od, texture, wobble=0.12, nucleoli=True, rim=0.25) -> None:
        a, b = a_um * self.px, b_um * self.px
        box = self._box(x, y, max(a, b) * 1.5 + 2)
        if box is None:
            return
        ys, xs, u, v = box
        m = self._blob_mask(u, v, a, b, self.rng.uniform(0, np.pi), wobble, edge=1.2)
        inner = self._blob_mask(u, v, a * 0.8, b * 0.8, 0.0, 0.0, edge=2.0)
        chrom = 1.0 + texture * (0.6 * self.fine[ys, xs] + 0.4 * self.coarse[ys, xs])
        dens = m * (1.0 + rim * (m - inner)) * np.clip(chrom, 0.2, None)
        self.od_h[ys, xs] += od * dens
        self.od_e[ys, xs] *= 1.0 - 0.5 * m
        if nucleoli:
            for _ in range(self.rng.integers(0, 3)):
                cx, cy = self.rng.normal(0, 0.35 * a), self.rng.normal(0, 0.35 * b)
                rr = self.rng.uniform(0.5, 1.0) * self.px
                self.od_h[ys, xs] += 0.5 * od * np.exp(-0.5 * ((u - cx) ** 2 + (v - cy) ** 2) / rr**2) * m

    def _cells(self, tissue_mask: np.ndarray, density: np.ndarray) -> None:
        """Ordinary tumour and stromal cells, sampled with a minimum spacing that follows density."""
        rng = self.rng
        area_um2 = self.w * self.h / self.px**2
        n_try = int(area_um2 / 60.0)
        xs = rng.uniform(0, self.w, n_try)
        ys = rng.uniform(0, self.h, n_try)
        dens = density[ys.astype(int).clip(0, self.h - 1), xs.astype(int).clip(0, self.w - 1)]
        tis = tissue_mask[ys.astype(int).clip(0, self.h - 1), xs.astype(int).clip(0, self.w - 1)]
        keep = rng.random(n_try) < tis * (0.15 + 0.85 * dens**1.5)
        placed: list[tuple[float, float]] = []
        grid: dict[tuple[int, int], list[int]] = {}
        cell = 10.0 * self.px
        for x, y, d in zip(xs[keep], ys[keep], dens[keep], strict=True):
            min_d = (11.5 - 3.5 * d) * self.px
            gx, gy = int(x // cell), int(y // cell)
            near = [i for dx in (-1, 0, 1) for dy in (-1, 0, 1) for i in grid.get((gx + dx, gy + dy), [])]
            if any((placed[i][0] - x) ** 2 + (placed[i][1] - y) ** 2 < min_d**2 for i in near):
                continue
            if not self._free(x, y, 4.5 * self.px):
                continue
            grid.setdefault((gx, gy), []).append(len(placed))
            placed.append((x, y))
            tumour = d > 0.45
            if tumour:
                self._cell_body(x, y, rng.uniform(6.0, 8.5), rng.uniform(0.15, 0.35))
                a = rng.uniform(3.2, 6.0)
                self._nucleus(x, y, a, a * rng.uniform(0.65, 1.0), rng.uniform(0.3, 0.65), rng.uniform(0.25, 0.55))
            else:  # spindle-shaped stromal nucleus
                a = rng.uniform(4.0, 7.0)
                self._nucleus(x, y, a, a * rng.uniform(0.25, 0.45), rng.uniform(0.35, 0.7), 0.2, nucleoli=False)

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
    def _mitosis(self, x: float, y: float, phase: str) -> None:
        rng = self.rng
        px = self.px
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)])  # spindle axis
        n_perp = np.array([-d[1], d[0]])  # plate direction
        # a rounded mitotic cell with pale, clear cytoplasm
        self._cell_body(x, y, rng.uniform(8.0, 11.0), rng.uniform(0.08, 0.2), halo=rng.uniform(0.0, 0.4))
        od = rng.uniform(0.45, 0.8)
        if phase == "prophase":
            diam = rng.uniform(6.0, 10.0) * px
            k = int(rng.integers(40, 80))
            rad = diam / 2 * np.sqrt(rng.random(k))
            th = rng.uniform(0, 2 * np.pi, k)
            centres = np.stack([rad * np.cos(th), rad * np.sin(th)], 1)
            self._chromatin(x, y, centres, rng.uniform(0, np.pi, k), diam / 2 + 3 * px, od, 0.9, 0.35)
        elif phase == "metaphase":
            length = rng.uniform(8.0, 15.0) * px
            width = rng.uniform(1.5, 3.0) * px
            centres = self._plate(int(rng.integers(35, 70)), length, width, n_perp, d)
            arms = angle + rng.normal(0, 0.5, len(centres))  # arms stick out along the spindle: ragged edge
            self._chromatin(x, y, centres, arms, length / 2 + 4 * px, od, 1.1, 0.35)
        elif phase == "anaphase":
            length = rng.uniform(7.0, 13.0) * px
            sep = rng.uniform(4.0, 7.0) * px
            c1 = self._plate(int(rng.integers(25, 45)), length, 1.2 * px, n_perp, d) + d * sep / 2
            c2 = self._plate(int(rng.integers(25, 45)), length, 1.2 * px, n_perp, d) - d * sep / 2
            centres = np.concatenate([c1, c2])
            arms = angle + rng.normal(0, 0.4, len(centres))
            self._chromatin(x, y, centres, arms, max(length, sep) / 2 + 5 * px, od, 0.8, 0.3)
        elif phase == "telophase":
            sep = rng.uniform(7.0, 12.0) * px
            k = int(rng.integers(25, 45))
            parts = []
            for sgn in (1, -1):
                rad = rng.uniform(2.0, 3.5) * px * np.sqrt(rng.random(k))
                th = rng.uniform(0, 2 * np.pi, k)
                parts.append(
                    np.stack([rad * np.cos(th), rad * np.sin(th) * 0.7], 1) @ _rot(angle).T + sgn * d * sep / 2
                )
            self._chromatin(x, y, np.concatenate(parts), rng.uniform(0, np.pi, 2 * k), sep / 2 + 6 * px, od, 1.0, 0.3)
            for sgn in (1, -1):  # two daughter cells pinching apart
                cx, cy = np.array([x, y]) + sgn * d * sep / 2
                self._cell_body(cx, cy, rng.uniform(4.5, 6.0), rng.uniform(0.1, 0.25))
        else:
            raise ValueError(f"unknown mitosis phase {phase!r}, expected one of {MITOSIS_PHASES}")

    def _plate(self, k: int, length: float, width: float, along: np.ndarray, across: np.ndarray) -> np.ndarray:
        t = self.rng.uniform(-0.5, 0.5, k) * length
        w = self.rng.normal(0, width / 2, k)
        return t[:, None] * along[None] + w[:, None] * across[None]

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
    def _mimic(self, x: float, y: float, kind: str) -> None:
        rng = self.rng
        if kind == "apoptotic":
            # shrunken, bright eosinophilic cell with a clear retraction halo, smooth dark fragments
            self._cell_body(x, y, rng.uniform(5.0, 8.0), rng.uniform(0.5, 0.85), halo=rng.uniform(0.5, 0.9))
            n = int(rng.integers(1, 5))
            for i in range(n):
                off = rng.normal(0, 1.6, 2) * self.px if (n > 1 or i) else np.zeros(2)
                r = rng.uniform(1.2, 3.2) if n > 1 else rng.uniform(2.5, 4.5)
                self._nucleus(
                    x + off[0],
                    y + off[1],
                    r,
                    r * rng.uniform(0.8, 1.0),
                    rng.uniform(1.1, 1.9),
                    0.08,
                    wobble=0.03,
                    nucleoli=False,
                    rim=0.0,
                )
        elif kind == "lymphocyte":
            self._lymphocyte(x, y)
        elif kind == "pyknotic":
            self._cell_body(x, y, rng.uniform(5.0, 7.5), rng.uniform(0.2, 0.45), halo=rng.uniform(0.0, 0.5))
            r = rng.uniform(2.5, 4.5)
            self._nucleus(
                x, y, r, r * rng.uniform(0.65, 1.0), rng.uniform(1.1, 1.8), 0.1, wobble=0.06, nucleoli=False, rim=0.1
            )
        elif kind == "hyperchromatic":
            # large, dark, coarse chromatin: the look of an early prophase without the threads
            self._cell_body(x, y, rng.uniform(7.0, 9.5), rng.uniform(0.15, 0.35))
            a = rng.uniform(4.0, 6.5)
            self._nucleus(
                x, y, a, a * rng.uniform(0.6, 0.95), rng.uniform(0.8, 1.3), rng.uniform(0.4, 0.7), wobble=0.2, rim=0.35
            )
        else:
            raise ValueError(f"unknown mimic kind {kind!r}, expected one of {MIMIC_KINDS}")

    def _lymphocyte(self, x: float, y: float) -> None:
        rng = self.rng
        r = rng.uniform(2.4, 3.6)
        self._cell_body(x, y, r + 0.8, rng.uniform(0.05, 0.15))
        self._nucleus(
            x, y, r, r * rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.6), 0.2, wobble=0.04, nucleoli=False, rim=0.1
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


def _phase_p(kinds: tuple[str, ...]) -> np.ndarray | None:
    if kinds == MITOSIS_PHASES:
        return np.array([0.25, 0.35, 0.2, 0.2])
    return None

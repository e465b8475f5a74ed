"""Deterministic synthetic fundus photographs with multi-rater optic disc and cup masks (REFUGE-like data).

A case is an orange-red retina inside a dark circular field of view, a bright yellowish optic disc set off
the centre (the nasal side), a paler cup inside the disc, and dark vessels leaving the disc, under smooth
shading and noise. Each of ``num_raters`` raters outlines the disc and the cup: every rater's outline is the
true one with its own small bias in size, position and a wobble of low harmonics, so the raters agree inside
and disagree at the boundary (more on the cup, as real graders do). Every rater's cup lies inside their disc.

:func:`write_fundus_layout` writes cases in the REFUGE layout (``<part>/<case>/<case>.jpg`` with
``<case>_seg_cup_K.png`` / ``<case>_seg_disc_K.png``, K = 1..R, 255 = structure), which
:class:`~samforge.data.refuge.RefugeDataset` reads; :class:`SyntheticFundusDataset` serves the same cases on
the fly (spec ``synthetic-fundus[:N[:SIZE[:SEED]]]``).

    >>> case = make_fundus_case(0, image_size=(128, 128))
    >>> case.image.shape, case.disc.shape, bool((case.cup <= case.disc).all())
    ((128, 128, 3), (7, 128, 128), True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from samforge.data.raters import DEFAULT_RATER_RULE, RaterIndex, RaterRule
from samforge.data.refuge import CASE_PARTS, refuge_sample, split_options
from samforge.data.sample import BadSample, Sample
from samforge.data.synthetic import _smooth_noise
from samforge.utils.atomic import atomic_path

NUM_RATERS = 7  # as REFUGE's multi-rater release
DISC_RATER_SPREAD = 0.03  # sd of a rater's relative size bias on the disc outline
CUP_RATER_SPREAD = 0.07  # and on the cup outline (graders disagree more on the cup)
JPEG_QUALITY = 95
SPEC_DEFAULTS = {"n": 16, "size": 256, "seed": 0}
_SPEC = re.compile(r"synthetic-fundus(?::(\d+)(?::(\d+)(?:x(\d+))?(?::(\d+))?)?)?")


@dataclass
class FundusCase:
    """One synthetic case: ``image`` H x W x 3 uint8; ``disc`` and ``cup`` R x H x W bool, one mask per rater."""

    name: str
    image: np.ndarray
    disc: np.ndarray
    cup: np.ndarray


def case_name(seed: int) -> str:
    """The case name (its identity) of the case generated from ``seed``."""
    return f"fundus{seed:05d}"


def _check(seed: object, image_size: object, num_raters: object) -> tuple[int, int]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if (not isinstance(image_size, Sequence) or len(image_size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 64 for v in image_size)):
        raise ValueError(f"image_size: expected (H, W) ints, each >= 64, got {image_size!r}")
    if isinstance(num_raters, bool) or not isinstance(num_raters, (int, np.integer)) or not 1 <= num_raters <= 32:
        raise ValueError(f"num_raters: expected an int in 1..32, got {num_raters!r}")
    return int(image_size[0]), int(image_size[1])


def _outline(rng: np.random.Generator, spread: float) -> tuple[float, np.ndarray, np.ndarray]:
    """A rater's bias: relative size, centre shift (in radii) and low-harmonic wobble (amplitudes, phases)."""
    scale = 1.0 + rng.normal(0.0, spread)
    shift = rng.normal(0.0, spread / 2, size=2)
    wobble = np.stack([rng.normal(0.0, spread / 2, size=3), rng.uniform(0, 2 * np.pi, size=3)])
    return scale, shift, wobble


def _ellipse(yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, radii: np.ndarray,
             bias: tuple[float, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Pixels inside an ellipse (radii = (ry, rx)), optionally as a rater outlines it (``bias``)."""
    scale, shift, wobble = bias if bias is not None else (1.0, np.zeros(2), np.zeros((2, 3)))
    dy = (yy - centre[0]) / radii[0] - shift[0]
    dx = (xx - centre[1]) / radii[1] - shift[1]
    theta = np.arctan2(dy, dx)
    edge = scale * (1.0 + sum(wobble[0, k] * np.cos((k + 2) * theta + wobble[1, k]) for k in range(3)))
    return np.hypot(dy, dx) <= edge


def _radius(yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Elliptical distance from ``centre`` in units of ``radii`` (1 on the ellipse)."""
    return np.hypot((yy - centre[0]) / radii[0], (xx - centre[1]) / radii[1])


def _vessels(rng: np.random.Generator, h: int, w: int, origin: np.ndarray, disc_radius: float) -> np.ndarray:
    """HxW float32 in [0, 1]: dark vessel strength, curves leaving the disc and thinning out."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    step = max(2.0, min(h, w) / 64)
    for _ in range(int(rng.integers(6, 11))):
        angle = rng.uniform(0, 2 * np.pi)
        y, x = origin + rng.normal(0, disc_radius / 4, size=2)
        width = max(1.0, min(h, w) / 80) * rng.uniform(0.8, 1.4)
        turn = rng.normal(0, 0.03)
        for _ in range(int(rng.integers(40, 90))):
            angle += turn + rng.normal(0, 0.06)
            ny, nx = y + step * np.sin(angle), x + step * np.cos(angle)
            draw.line([(x, y), (nx, ny)], fill=int(255 * min(1.0, 0.5 + width / 4)), width=max(1, round(width)))
            y, x = ny, nx
            width *= 0.985
            if not (0 <= y < h and 0 <= x < w):
                break
    return np.asarray(canvas, dtype=np.float32) / 255.0


def make_fundus_case(seed: int, image_size: tuple[int, int] = (256, 256), num_raters: int = NUM_RATERS) -> FundusCase:
    """The synthetic fundus case of ``seed`` (deterministic): see the module docstring."""
    h, w = _check(seed, image_size, num_raters)
    rng = np.random.default_rng([int(seed), 0x0F0D])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = min(h, w)
    field = np.hypot(yy - h / 2, xx - w / 2) / (0.48 * side)  # 1 at the edge of the field of view
    disc_centre = np.array([h / 2 + rng.uniform(-0.06, 0.06) * h,
                            w / 2 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.22) * w])
    disc_r = rng.uniform(0.09, 0.13) * side
    disc_radii = np.array([disc_r * rng.uniform(1.0, 1.12), disc_r])
    cup_ratio = rng.uniform(0.35, 0.65)
    cup_centre = disc_centre + rng.normal(0, 0.06, size=2) * disc_r
    cup_radii = disc_radii * cup_ratio

    shade = np.clip(1.0 - 0.45 * field ** 2, 0.0, 1.0) * (0.85 + 0.3 * _smooth_noise(rng, h, w, 6))
    retina = np.array([200.0, 78.0, 36.0]) * rng.uniform(0.85, 1.1)
    image = shade[..., None] * retina
    glow = np.exp(-0.5 * (_radius(yy, xx, disc_centre, disc_radii) / 0.9) ** 8)
    image = image * (1 - glow[..., None]) + glow[..., None] * np.array([245.0, 190.0, 110.0])
    cup_glow = np.exp(-0.5 * (_radius(yy, xx, cup_centre, cup_radii) / 0.9) ** 6)
    image = image * (1 - 0.8 * cup_glow[..., None]) + 0.8 * cup_glow[..., None] * np.array([255.0, 238.0, 205.0])
    vessels = _vessels(rng, h, w, disc_centre, disc_r)
    image = image * (1 - 0.6 * vessels[..., None]) + 0.6 * vessels[..., None] * np.array([110.0, 18.0, 12.0])
    image = image + rng.normal(0, 4.0, size=image.shape)
    image = image * (field <= 1.0)[..., None]  # black outside the field of view
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    disc = np.stack([_ellipse(yy, xx, disc_centre, disc_radii, _outline(rng, DISC_RATER_SPREAD))
                     for _ in range(num_raters)])
    cup = np.stack([_ellipse(yy, xx, cup_centre, cup_radii, _outline(rng, CUP_RATER_SPREAD))
                    for _ in range(num_raters)])
    return FundusCase(case_name(int(seed)), image, disc | cup, cup)  # a rater's cup lies inside their disc


def write_fundus_layout(out: str | Path, num_cases: int, image_size: tuple[int, int] = (256, 256), seed: int = 0,
                        part: str = "Training-400", num_raters: int = NUM_RATERS) -> list[Path]:
    """Write cases ``seed .. seed+num_cases-1`` to ``out/<part>/<case>/`` in the REFUGE layout (image JPEG,
    masks 0/255 PNGs, every file written atomically); returns the case folders."""
    if part not in CASE_PARTS:
        raise ValueError(f"part: expected one of {CASE_PARTS}, got {part!r}")
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 1:
        raise ValueError(f"num_cases: expected a positive int, got {num_cases!r}")
    folders = []
    for i in range(num_cases):
        case = make_fundus_case(seed + i, image_size=image_size, num_raters=num_raters)
        folder = Path(out) / part / case.name
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{case.name}.jpg") as tmp:
            Image.fromarray(case.image).save(tmp, format="JPEG", quality=JPEG_QUALITY)
        for structure, stack in (("cup", case.cup), ("disc", case.disc)):
            for k, mask in enumerate(stack, start=1):
                with atomic_path(folder / f"{case.name}_seg_{structure}_{k}.png") as tmp:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        folders.append(folder)
    return folders


class SyntheticFundusDataset:
    """Synthetic fundus cases ``seed .. seed + num_cases - 1`` served on the fly, two objects per sample (disc,
    cup) with the raters fused by ``rater`` (see :mod:`samforge.data.raters`); ``names`` are the case names."""

    structures = ("disc", "cup")

    def __init__(self, num_cases: int, image_size: tuple[int, int] = (256, 256), seed: int = 0,
                 rater: RaterRule = DEFAULT_RATER_RULE, num_raters: int = NUM_RATERS) -> None:
        if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 1:
            raise ValueError(f"num_cases: expected a positive int, got {num_cases!r}")
        _check(seed, image_size, num_raters)
        self.num_cases, self.image_size, self.seed, self.num_raters = num_cases, tuple(image_size), seed, num_raters
        self.index = RaterIndex([num_raters] * num_cases, rater)
        if isinstance(self.index.rule, int) and self.index.rule > num_raters:
            raise ValueError(f"rater={self.index.rule}: the synthetic fundus cases have {num_raters} raters")
        self.rater = self.index.rule
        self.bad_samples: list[BadSample] = []

    @property
    def case_names(self) -> list[str]:
        """The case of each sample (several samples share one under ``rater=all``)."""
        return [case_name(self.seed + self.index[i][0]) for i in range(len(self))]

    @property
    def names(self) -> list[str]:
        return [_sample_name(case_name(self.seed + c), r) for c, r in (self.index[i] for i in range(len(self)))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        c, draw = self.index[i]
        case = make_fundus_case(self.seed + c, image_size=self.image_size, num_raters=self.num_raters)
        sample = refuge_sample(case.image, case.disc, case.cup, self.rater, draw, _sample_name(case.name, draw))
        if isinstance(sample, str):  # cannot happen for generated cases (disc and cup are never empty)
            raise ValueError(f"synthetic fundus case {case.name}: {sample}")
        return sample


def open_synthetic_fundus_spec(spec: str) -> SyntheticFundusDataset:
    """The dataset of a ``synthetic-fundus[:N[:SIZE[:SEED]]][:rater=R]`` spec (SIZE = H or HxW, >= 64;
    defaults N = 16, SIZE = 256, SEED = 0, rater majority)."""
    base, options = split_options(spec, ("rater",))
    m = _SPEC.fullmatch(base)
    if m is None:
        raise ValueError(f"bad synthetic fundus spec {spec!r}: expected synthetic-fundus[:N[:SIZE[:SEED]]][:rater=R] "
                         "(SIZE = H or HxW)")
    n = int(m[1]) if m[1] else SPEC_DEFAULTS["n"]
    h = int(m[2]) if m[2] else SPEC_DEFAULTS["size"]
    w = int(m[3]) if m[3] else h
    if n < 1 or min(h, w) < 64:
        raise ValueError(f"bad synthetic fundus spec {spec!r}: N must be >= 1 and the size >= 64")
    return SyntheticFundusDataset(n, image_size=(h, w), seed=int(m[4]) if m[4] else SPEC_DEFAULTS["seed"],
                                  rater=options.get("rater", DEFAULT_RATER_RULE))


def _sample_name(case: str, draw: int | None) -> str:
    return case if draw is None else f"{case}[rater={draw + 1}]"

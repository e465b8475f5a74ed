"""Deterministic synthetic CT/MR-like volumes: the 3D counterpart of :mod:`samforge.data.synthetic_medical`.

A volume is a stack of ``depth`` grey slices with the look of :func:`make_medical_scene`: a dark outside, a
body whose smooth outline changes slowly from slice to slice, a brighter skin rim, faint smooth tissue
texture, small bright vessels that run through the slices, and organs that differ from the tissue by only
10-40 grey levels. Organs are smooth 3D blobs (ellipsoids with a wobbling outline) grown next to each other so
that they abut; their centres drift and their outlines turn and change shape along depth, so a cross-section
grows, changes and shrinks smoothly, and an organ appears on one slice and disappears a few slices later.
The image (not the labels) is blurred (partial volume), then gets speckle and Gaussian noise.

    >>> vol = make_medical_volume(0, depth=8, image_size=(64, 64))
    >>> vol.volume.shape, vol.labels.shape, vol.volume.dtype
    ((8, 64, 64), (8, 64, 64), dtype('uint8'))

``labels`` holds 0 for background and ``k`` for organ ``k`` (1..K, K <= ``num_organs``, K >= 1). Writers:
:func:`write_nifti_pair` (``images/<name>.nii.gz`` + ``labels/<name>.nii.gz`` with a millimetre affine, the
layout :class:`~samforge.data.nifti_dataset.NiftiDataset` reads), :func:`write_medsam_npz` (MedSAM's ``imgs`` /
``gts``) and :func:`write_medical_volumes` (a whole dataset in either form).
"""

from __future__ import annotations

import gzip
import numbers
import os
from pathlib import Path
from typing import NamedTuple, Sequence, Tuple, Union

import cv2
import numpy as np

from samforge.data.synthetic import MIN_VISIBLE_FRACTION
from samforge.data.synthetic_medical import ORGAN_CONTRAST
from samforge.utils.atomic import atomic_path, atomic_write_bytes

__all__ = ["DEFAULT_SPACING", "MedicalVolume", "make_medical_volume", "nifti_affine", "write_medical_volumes",
           "write_medsam_npz", "write_nifti_pair"]

DEFAULT_SPACING = (2.5, 0.8, 0.8)  # millimetres between slices, rows, columns (a typical abdominal CT)
_MIN_ORGAN_SEPARATION = 6.0  # grey levels between any two organs' base intensities (as make_medical_scene)
_PLACEMENT_TRIES = 30
_MIN_DEPTH = 1
_MAX_ORGANS = 32


class MedicalVolume(NamedTuple):
    """``volume``: D x H x W uint8 grey; ``labels``: D x H x W uint8 (0 background, k organ k)."""

    volume: np.ndarray
    labels: np.ndarray


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_volume_args(seed: object, depth: object, image_size: object,
                       num_organs: object) -> Tuple[int, int, int, int, int]:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if not _is_int(depth) or depth < _MIN_DEPTH:
        raise ValueError(f"depth: expected an int >= {_MIN_DEPTH} (number of slices), got {depth!r}")
    if (not isinstance(image_size, Sequence) or isinstance(image_size, str) or len(image_size) != 2
            or not all(_is_int(v) and v >= 32 for v in image_size)):
        raise ValueError(f"image_size: expected (H, W) ints, each >= 32, got {image_size!r}")
    lo_hi = (num_organs, num_organs) if _is_int(num_organs) else num_organs
    if (not isinstance(lo_hi, Sequence) or isinstance(lo_hi, str) or len(lo_hi) != 2
            or not all(_is_int(v) for v in lo_hi) or not 1 <= lo_hi[0] <= lo_hi[1] <= _MAX_ORGANS):
        raise ValueError(f"num_organs: expected an int or (min, max) with 1 <= min <= max <= {_MAX_ORGANS}, "
                         f"got {num_organs!r}")
    return int(depth), int(image_size[0]), int(image_size[1]), int(lo_hi[0]), int(lo_hi[1])


def _smooth_noise_3d(rng: np.random.Generator, d: int, h: int, w: int, cells: int) -> np.ndarray:
    """D x H x W float32 noise in about [0, 1], smooth over ~1/cells of a slice and a few slices in depth."""
    gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    gd = max(2, min(cells, (d + 2) // 3))
    grid = rng.random((gd, gh, gw), dtype=np.float32)
    planes = np.stack([cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC) for g in grid])
    pos = np.linspace(0, gd - 1, d, dtype=np.float32) if d > 1 else np.zeros(1, np.float32)
    i0 = np.minimum(np.floor(pos).astype(int), gd - 2)
    frac = (pos - i0)[:, None, None]
    return (planes[i0] * (1 - frac) + planes[i0 + 1] * frac).astype(np.float32)


def _harmonics(rng: np.random.Generator, n: int, strength: float) -> np.ndarray:
    """n x 2 (amplitude, phase) of outline harmonics 2..n+1, amplitudes falling with frequency."""
    return np.stack([[rng.normal(0, strength / f), rng.uniform(0, 2 * np.pi)] for f in range(2, 2 + n)])


def _profile(theta: np.ndarray, harm: np.ndarray) -> np.ndarray:
    prof = np.ones_like(theta)
    for i, (amp, phase) in enumerate(harm):
        prof = prof + amp * np.cos((i + 2) * theta + phase)
    return prof


def _lerp_profile(theta: np.ndarray, harm0: np.ndarray, harm1: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Outline profile whose harmonics move from ``harm0`` to ``harm1`` as ``s`` goes 0 -> 1 (per slice)."""
    return (1 - s) * _profile(theta, harm0) + s * _profile(theta, harm1)


def _body(rng: np.random.Generator, d: int, h: int, w: int) -> np.ndarray:
    """D x H x W bool: a roughly elliptical body section whose size and outline change slowly along depth."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ax, ay = w * rng.uniform(0.36, 0.44), h * rng.uniform(0.32, 0.42)
    cx, cy = w / 2 + rng.normal(0, 0.02 * w), h / 2 + rng.normal(0, 0.02 * h)
    harm0, harm1 = _harmonics(rng, 3, 0.10), _harmonics(rng, 3, 0.10)
    zs = np.linspace(0, 1, d, dtype=np.float32)[:, None, None]
    grow = 1 + rng.uniform(-0.08, 0.08) * np.sin(np.pi * zs + rng.uniform(0, np.pi))  # the body widens/narrows
    theta = np.arctan2((yy - cy) / ay, (xx - cx) / ax)[None]
    prof = np.clip(_lerp_profile(theta, harm0, harm1, zs), 0.6, 1.4)
    rho = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)[None]
    return rho < prof * grow / 1.12


def _organ_distance(rng: np.random.Generator, d: int, h: int, w: int, centre: tuple, r: float, rz: float,
                    wobble: np.ndarray) -> np.ndarray:
    """D x H x W float32 normalised distance to one organ (< 1 inside): an ellipsoid of in-plane radius ``r``
    and half-depth ``rz`` slices, whose centre drifts, axis turns and outline changes along depth."""
    cx, cy, cz = centre
    zz = np.arange(d, dtype=np.float32)[:, None, None]
    t = (zz - cz) / rz  # -1 .. 1 through the organ
    drift = rng.normal(0, 0.25 * r, 2)
    ox, oy = cx + drift[0] * t, cy + drift[1] * t
    ang = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.5, 0.5) * t
    aspect = np.clip(rng.uniform(0.6, 1.0) + rng.uniform(-0.15, 0.15) * t, 0.45, 1.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx[None] - ox, yy[None] - oy
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / aspect
    theta = np.arctan2(v, u)
    s = np.clip((t + 1) / 2, 0, 1)
    prof = np.clip(_lerp_profile(theta, _harmonics(rng, 3, 0.16), _harmonics(rng, 3, 0.16), s), 0.55, 1.5)
    radial = np.sqrt(u * u + v * v) / (r * prof)
    return (np.sqrt(radial ** 2 + t ** 2) + (wobble - 0.5) * 0.15).astype(np.float32)


def make_medical_volume(seed: int, depth: int = 16, image_size: Tuple[int, int] = (128, 128),
                        num_organs: Union[int, Tuple[int, int]] = 3) -> MedicalVolume:
    """Generate one deterministic CT/MR-like volume with organ labels.

    Args:
        seed: non-negative int; the same arguments always give the same volume.
        depth: number of slices D, >= 1.
        image_size: (H, W) of a slice, each >= 32.
        num_organs: organs to place, an int or an inclusive (min, max) range, at most 32. An organ that
            cannot be placed inside the body, or whose largest cross-section is under 0.3% of a slice, is left
            out (and the others renumbered), so K can be smaller, but is always >= 1.

    Returns:
        :class:`MedicalVolume` ``(volume, labels)``: ``volume`` D x H x W uint8 grey; ``labels`` D x H x W
        uint8, 0 background and k for organ k (1..K). Cross-sections smaller than a quarter of the minimum
        organ area are left unlabelled (an organ starts with a visible section, not a speck).
    """
    d, h, w, lo, hi = _check_volume_args(seed, depth, image_size, num_organs)
    rng = np.random.default_rng([seed, 0x5A3D])
    body = _body(rng, d, h, w)
    n = int(rng.integers(lo, hi + 1))
    s = min(np.sqrt(h * w), 1.5 * min(h, w))
    min_area = max(1, int(np.ceil(MIN_VISIBLE_FRACTION * h * w)))
    r_min = 1.5 * np.sqrt(min_area / np.pi)
    mid = d // 2
    by, bx = np.nonzero(body[mid])
    # Organs grow next to each other (as in make_medical_scene): each new centre sits about one touching
    # distance from an earlier one, and where two overlap the nearer (in normalised distance) wins.
    best = np.full((d, h, w), np.inf, dtype=np.float32)
    labels = np.zeros((d, h, w), dtype=np.int32)
    centres: list = []
    radii: list = []
    for i in range(n):
        r = max(s * rng.uniform(0.09, 0.17), r_min)
        rz = max(1.0, d * rng.uniform(0.25, 0.6))  # half extent in slices: some organs span the volume
        cz = d * rng.uniform(0.2, 0.8) - 0.5 if d > 1 else 0.0
        for _ in range(_PLACEMENT_TRIES):
            if centres:
                j = int(rng.integers(len(centres)))
                a = rng.uniform(0, 2 * np.pi)
                dist = (r + radii[j]) * rng.uniform(0.6, 0.95)
                cx, cy = centres[j][0] + dist * np.cos(a), centres[j][1] + dist * np.sin(a)
            else:
                k = int(rng.integers(len(bx)))
                cx, cy = 0.5 * (bx[k] + w / 2), 0.5 * (by[k] + h / 2)
            iy, ix = int(round(cy)), int(round(cx))
            if 0 <= iy < h and 0 <= ix < w and body[mid, iy, ix]:
                break
        else:
            continue
        wobble = _smooth_noise_3d(rng, d, h, w, int(rng.integers(5, 10)))
        dist_i = _organ_distance(rng, d, h, w, (cx, cy, cz), r, rz, wobble)
        inside = dist_i < 1
        labels[inside & (dist_i < best)] = i + 1
        best = np.where(inside, np.minimum(best, dist_i), best)
        centres.append((cx, cy))
        radii.append(r)
    # Organs keep a layer of body wall between them and the outside, slice by slice.
    wall = max(1, round(0.04 * min(h, w)))
    kernel = np.ones((3, 3), np.uint8)
    inner = np.stack([cv2.erode(b.astype(np.uint8), kernel, iterations=wall) > 0 for b in body])
    labels[~inner] = 0
    # Specks at an organ's ends are not annotated: a section starts at a visible size.
    areas = np.stack([np.bincount(sl.ravel(), minlength=n + 1) for sl in labels])  # D x (n + 1)
    speck = (areas < max(1, min_area // 4)) & (areas > 0)
    for z, k in zip(*np.nonzero(speck[:, 1:])):
        labels[z][labels[z] == k + 1] = 0
    areas[:, 1:][speck[:, 1:]] = 0
    kept = [k for k in range(1, n + 1) if areas[:, k].max() >= min_area]
    if not kept:  # a guaranteed organ in the middle of the body instead (rare: tiny images)
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = by.mean(), bx.mean()
        rr = max(0.2 * s, 2 * r_min)
        labels = np.where(inner & (((yy - cy) ** 2 + (xx - cx) ** 2) < rr * rr)[None], 1, 0).astype(np.int32)
        kept = [1]
        if (labels == 1).sum(axis=(1, 2)).max() < min_area:
            raise RuntimeError(f"make_medical_volume could not place any organ (seed={seed}, size={(h, w)})")
    relabel = np.zeros(n + 2, dtype=np.uint8)
    relabel[np.asarray(kept)] = np.arange(1, len(kept) + 1)
    labels = relabel[labels]

    # Intensities, as make_medical_scene: dark outside, tissue with faint smooth variation, a brighter rim.
    tissue = rng.uniform(80, 130)
    image = np.full((d, h, w), rng.uniform(5, 20), dtype=np.float32)
    image[body] = tissue
    image += (_smooth_noise_3d(rng, d, h, w, int(rng.integers(3, 7))) - 0.5) * 16 * body
    rim = max(1, round(0.012 * min(h, w)))
    eroded = np.stack([cv2.erode(b.astype(np.uint8), kernel, iterations=rim) > 0 for b in body])
    image[body & ~eroded] += rng.uniform(12, 25)
    # Unlabelled vessels: small bright discs whose centres run smoothly through the slices.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    zz = np.linspace(-1, 1, d, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(bx)))
        rr = s * rng.uniform(0.015, 0.04)
        vx, vy = rng.normal(0, 0.03 * s, 2)
        bright = rng.uniform(15, 60)
        for z in range(d):
            disc = (xx - bx[k] - vx * zz[z]) ** 2 + (yy - by[k] - vy * zz[z]) ** 2 < rr * rr
            image[z][disc & body[z] & (labels[z] == 0)] += bright
    # Organs: low contrast against the tissue, distinct (a little) from each other, faint 3D texture.
    levels: list = []
    for k in range(1, len(kept) + 1):
        for _ in range(50):
            level = tissue + rng.choice([-1.0, 1.0]) * rng.uniform(*ORGAN_CONTRAST)
            if all(abs(level - o) >= _MIN_ORGAN_SEPARATION for o in levels):
                break
        levels.append(level)
        tex = (_smooth_noise_3d(rng, d, h, w, int(rng.integers(6, 14))) - 0.5) * rng.uniform(4, 10)
        m = labels == k
        image[m] = level + tex[m]
    # Partial-volume blur (in plane, and a little across slices), then speckle and sensor noise.
    sigma = max(rng.uniform(0.8, 1.6) * min(h, w) / 256, 0.5)
    image = np.stack([cv2.GaussianBlur(sl, (0, 0), sigmaX=sigma) for sl in image])
    if d > 2:
        padded = np.concatenate([image[:1], image, image[-1:]])
        image = 0.2 * padded[:-2] + 0.6 * padded[1:-1] + 0.2 * padded[2:]
    image *= 1 + rng.normal(0, rng.uniform(0.03, 0.07), image.shape).astype(np.float32)
    image += rng.normal(0, rng.uniform(2.0, 5.0), image.shape).astype(np.float32)
    grey = np.clip(image, 0, 255).round().astype(np.uint8)
    return MedicalVolume(volume=grey, labels=labels.astype(np.uint8))


def _check_pair(volume: object, labels: object) -> None:
    for what, arr in (("volume", volume), ("labels", labels)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 3 or min(arr.shape) == 0:
            raise ValueError(f"{what}: expected a non-empty D x H x W numpy array, got "
                             f"{getattr(arr, 'shape', type(arr).__name__)}")
    if volume.dtype.kind not in "biuf":
        raise ValueError(f"volume: expected numbers, got dtype {volume.dtype}")
    if labels.dtype.kind not in "biu" or (labels.size and (labels.min() < 0 or labels.max() > 65535)):
        raise ValueError(f"labels: expected integer labels in 0..65535, got dtype {labels.dtype}")
    if volume.shape != labels.shape:
        raise ValueError(f"volume shape {volume.shape} and labels shape {labels.shape} differ: they must match")


def _check_spacing(spacing: object) -> Tuple[float, float, float]:
    if (not isinstance(spacing, Sequence) or isinstance(spacing, str) or len(spacing) != 3
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) and v > 0
                       for v in spacing)):
        raise ValueError(f"spacing: expected three positive numbers (slice, row, column) in mm, got {spacing!r}")
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"name: expected a file name without path separators, got {name!r}")
    return name


def nifti_affine(shape: Tuple[int, int, int], spacing: Sequence[float] = DEFAULT_SPACING) -> np.ndarray:
    """The 4 x 4 affine :func:`write_nifti_pair` writes for a volume of ``shape`` (D, H, W), stored as
    (row, column, slice): columns run to the patient's left (+x in RAS), rows from anterior to posterior
    (-y), slices from inferior to superior (+z); the origin is the volume's centre (millimetres)."""
    if not (isinstance(shape, Sequence) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
        raise ValueError(f"shape: expected (D, H, W) positive ints, got {shape!r}")
    sz, sy, sx = _check_spacing(spacing)
    d, h, w = shape
    return np.array([[0.0, sx, 0.0, -sx * (w - 1) / 2],
                     [-sy, 0.0, 0.0, sy * (h - 1) / 2],
                     [0.0, 0.0, sz, -sz * (d - 1) / 2],
                     [0.0, 0.0, 0.0, 1.0]])


def write_nifti_pair(root: Union[str, os.PathLike], name: str, volume: np.ndarray, labels: np.ndarray,
                     spacing: Sequence[float] = DEFAULT_SPACING) -> Tuple[Path, Path]:
    """Write ``root/images/<name>.nii.gz`` and ``root/labels/<name>.nii.gz`` atomically.

    ``volume`` / ``labels``: D x H x W (slices first, as :func:`make_medical_volume` returns them). The files
    store them as (row, column, slice) arrays, so slicing along axis 2 (the NIfTI readers' default) gives the
    slices back unchanged; the affine is :func:`nifti_affine`. Returns (image path, label path)."""
    import nibabel as nib  # only NIfTI users pay for it

    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root: expected a folder path, got {type(root).__name__}")
    name = _check_name(name)
    _check_pair(volume, labels)
    affine = nifti_affine(tuple(int(v) for v in volume.shape), spacing)
    lab_dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    paths = []
    for sub, arr in (("images", volume), ("labels", labels.astype(lab_dtype))):
        folder = Path(root) / sub
        folder.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(arr, (1, 2, 0))), affine)
        img.header.set_xyzt_units("mm")
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        if sub == "labels":
            img.header["scl_slope"], img.header["scl_inter"] = 1, 0
        path = folder / f"{name}.nii.gz"
        atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=6))
        paths.append(path)
    return paths[0], paths[1]


def write_medsam_npz(path: Union[str, os.PathLike], volume: np.ndarray, labels: np.ndarray,
                     spacing: Sequence[float] = DEFAULT_SPACING) -> Path:
    """Write a MedSAM-style ``.npz`` atomically: ``imgs`` D x H x W, ``gts`` D x H x W (uint8, or uint16 for
    labels over 255) and ``spacing`` (slice, row, column mm). Returns the path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"path: expected a file name ending in .npz, got {path}")
    _check_pair(volume, labels)
    sp = np.asarray(_check_spacing(spacing), dtype=np.float64)
    gts = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, imgs=volume, gts=gts, spacing=sp)
    return path


def write_medical_volumes(out: Union[str, os.PathLike], num_volumes: int, image_size: Tuple[int, int] = (128, 128),
                          depth: int = 16, seed: int = 0, fmt: str = "nifti",
                          num_organs: Union[int, Tuple[int, int]] = 3) -> list:
    """Write volumes ``seed .. seed + num_volumes - 1`` to ``out``: ``fmt="nifti"`` gives ``out/images/`` and
    ``out/labels/`` (``vol_<seed>.nii.gz``), ``fmt="npz"`` gives ``out/vol_<seed>.npz``. Returns the image
    (or npz) paths."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a folder path, got {type(out).__name__}")
    if not _is_int(num_volumes) or num_volumes < 1:
        raise ValueError(f"num_volumes: expected a positive int, got {num_volumes!r}")
    if fmt not in ("nifti", "npz"):
        raise ValueError(f"fmt: expected 'nifti' or 'npz', got {fmt!r}")
    _check_volume_args(seed, depth, image_size, num_organs)
    paths = []
    for i in range(num_volumes):
        vol = make_medical_volume(seed + i, depth=depth, image_size=image_size, num_organs=num_organs)
        name = f"vol_{seed + i:04d}"
        if fmt == "nifti":
            paths.append(write_nifti_pair(out, name, vol.volume, vol.labels)[0])
        else:
            paths.append(write_medsam_npz(Path(out) / f"{name}.npz", vol.volume, vol.labels))
    return paths

"""NIfTI volumes (``.nii`` / ``.nii.gz``, read with nibabel) sliced into 2D samples for SAM.

Input: a folder with ``images/`` and ``labels/`` (or ``masks/``) whose volumes pair by name
(``case01.nii.gz`` in both), or by the nnU-Net convention (``images/case01_0000.nii.gz`` with
``labels/case01.nii.gz``; each channel file ``_0000``, ``_0001``, ... pairs with the same label), or an
explicit list of ``(image path, label path)`` pairs.

DICOM: an image may also be a DICOM series folder (``images/case01/*.dcm``, read by
:func:`~samforge.data.dicom.read_dicom_series`: slices ordered along the normal, CT in HU, the array in
dicom2nifti's order) paired by its folder name with a NIfTI label volume (``labels/case01.nii.gz``). The label's
voxels must be the series' voxels: the same affine, or one that differs by an axis order or flips (a label drawn on
a reoriented NIfTI conversion is put back in the series' order); a label on another grid is a bad pair.

* Slicing: every slice along ``axis`` (0, 1 or 2; default 2, axial for RAS-oriented volumes) with at
  least one object is a sample, named ``<image path>[axis=A,z=I]`` (``z`` = index along ``axis``). The
  slice is the other two axes in array order, as stored (no reorientation). Slices without an object
  are skipped and counted in ``skipped_empty_slices``.
* Intensity: ``window=(level, width)`` clips to ``[level - width/2, level + width/2]`` and scales that to
  0..255 (CT, in the file's scaled units, e.g. HU); otherwise the ``percentiles`` (default 0.5 and 99.5)
  of the whole volume are mapped to 0 and 255 (MR). Grey is repeated to three uint8 channels.
* Masks: each distinct nonzero label value in a slice is one object, in increasing label order;
  ``labels=[...]`` keeps only those values.

Opening reads each label volume once (to find the slices with objects) and only the header of each
image; volumes are then read on demand and only the last one opened stays cached. Bad pairs (unreadable
file, not 3D, image and label shapes differ, no label file, no object) become :class:`BadSample` records
naming the file(s) and the reason, and are skipped. Image data that is corrupt beyond its header is only
found when the volume is read, and raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from samforge.data.bad_samples import natural_key, raise_if_no_samples
from samforge.data.dicom import dicom_series_folders, label_orientation, read_dicom_series, scan_dicom_series
from samforge.data.sample import BadSample, Sample

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DEFAULT_PERCENTILES = (0.5, 99.5)
_NNUNET_CHANNEL = re.compile(r"(.+)_\d{4}")


@dataclass
class _Volume:
    image: Path
    label: Path
    shape: tuple[int, int, int]
    label_ornt: np.ndarray | None = None  # DICOM images: puts the label's axes in the series' order


@dataclass
class _Entry:
    volume: int  # index into NiftiDataset._volumes
    z: int  # slice index along the dataset's axis
    labels: np.ndarray  # label values present in the slice (kept ones only), increasing


def nifti_stem(path: Path) -> str | None:
    """The name of a ``.nii`` / ``.nii.gz`` file without that suffix, or None for any other file."""
    name = path.name
    for s in NIFTI_SUFFIXES:
        if name.lower().endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return None


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder`` (hidden files left out), in natural name order."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and nifti_stem(p) is not None), key=lambda p: natural_key(p.name))


def volume_files(folder: Path) -> list[Path]:
    """The image volumes directly in ``folder``: NIfTI files, then DICOM series folders (natural name order)."""
    return nifti_files(folder) + dicom_series_folders(folder)


def volume_stem(path: Path) -> str | None:
    """The case name of a volume: a NIfTI file's name without its suffix, a DICOM series folder's name."""
    return path.name if path.is_dir() else nifti_stem(path)


def _load_proxy(path: Path):
    """nibabel's lazy image for ``path`` (the header is read, the data is not). Raises ``ValueError``."""
    import nibabel as nib  # imported here: only NIfTI users pay for it

    if not path.is_file():
        raise ValueError("file not found")
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, ... on bad files
        raise ValueError(f"unreadable NIfTI ({type(e).__name__}: {e})") from e


def _shape3d(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as a 3D shape (trailing singleton dimensions dropped). Raises ``ValueError`` otherwise."""
    dims = tuple(int(d) for d in shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims = dims[:-1]
    if len(dims) != 3:
        raise ValueError(f"expected a 3D volume, got {len(dims)}D shape {tuple(int(d) for d in shape)}")
    return dims  # type: ignore[return-value]


def _read(proxy) -> np.ndarray:
    """The data of a lazy nibabel image (scaled by the header's slope/intercept, if any) as 3D."""
    try:
        arr = np.asanyarray(proxy.dataobj)
    except Exception as e:  # truncated / corrupt compressed data
        raise ValueError(f"unreadable NIfTI data ({type(e).__name__}: {e})") from e
    return np.asarray(arr).reshape(_shape3d(arr.shape))


def read_volume(path: Path, labels: bool = False) -> np.ndarray:
    """The 3D array of a NIfTI file or a DICOM series folder (integers for a label volume); raises
    ``ValueError`` naming the file."""
    if path.is_dir():
        arr = read_dicom_series(path)[0]  # its errors name the folder and the file
        return _integer_labels(arr) if labels else arr
    try:
        arr = _read(_load_proxy(path))
        return _integer_labels(arr) if labels else arr
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _apply_orientation(lab: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    from nibabel.orientations import apply_orientation

    return np.ascontiguousarray(apply_orientation(lab, ornt))


def _integer_labels(lab: np.ndarray) -> np.ndarray:
    """``lab`` as integers (float volumes holding whole numbers are common). Raises ``ValueError``."""
    if lab.dtype.kind in "biu":
        return lab
    if lab.dtype.kind == "f" and np.isfinite(lab).all() and np.array_equal(lab, np.round(lab)):
        return lab.astype(np.int64)
    raise ValueError(f"label volume must hold integer labels, got dtype {lab.dtype} with non-integer values")


def scale_to_uint8(vol: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``vol`` clipped to ``[lo, hi]`` and mapped linearly to 0..255 uint8 (all 0 when ``hi <= lo``);
    NaNs become 0."""
    arr = np.asarray(vol, dtype=np.float32)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - np.float32(lo)) / np.float32(hi - lo) * np.float32(255.0)
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.round(np.clip(out, 0, 255)).astype(np.uint8)


def _check_number_pair(name: str, value: object, expected: str) -> tuple[float, float]:
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) for v in value)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return float(value[0]), float(value[1])


class NiftiDataset:
    """2D slices of NIfTI image/label volume pairs (see the module docstring).

    Args:
        source: a folder with ``images/`` and ``labels/`` (or ``masks/``), or a sequence of
            ``(image path, label path)`` pairs.
        axis: 0, 1 or 2, the array axis to slice along (default 2).
        window: ``(level, width)`` for CT windowing, or None for percentile normalisation.
        percentiles: ``(low, high)`` percentiles of the volume mapped to 0 and 255 when ``window`` is
            None; default ``(0.5, 99.5)``. Giving both ``window`` and ``percentiles`` is an error.
        labels: label values to keep (others count as background), or None for all nonzero values.

    Attributes: ``bad_samples`` (skipped volume pairs, with reasons), ``skipped_empty_slices`` (slices
    of usable volumes with no object), ``num_volumes`` (usable volume pairs), ``names``.
    """

    def __init__(self, source: str | os.PathLike | Sequence[tuple[str | os.PathLike, str | os.PathLike]],
                 axis: int = 2, window: tuple[float, float] | None = None,
                 percentiles: tuple[float, float] | None = None, labels: Sequence[int] | None = None) -> None:
        if not (isinstance(axis, numbers.Integral) and not isinstance(axis, bool) and 0 <= axis <= 2):
            raise ValueError(f"axis: expected 0, 1 or 2, got {axis!r}")
        self.axis = int(axis)
        if window is not None and percentiles is not None:
            raise ValueError(f"give window={window!r} (CT) or percentiles={percentiles!r} (MR), not both")
        self.window = None if window is None else _check_number_pair("window", window, "(level, width) numbers")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError(f"window: expected (level, width) with width > 0, got {window!r}")
        self.percentiles = None
        if self.window is None:
            p = DEFAULT_PERCENTILES if percentiles is None else percentiles
            self.percentiles = _check_number_pair("percentiles", p, "(low, high) with 0 <= low < high <= 100")
            if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
                raise ValueError(f"percentiles: expected (low, high) with 0 <= low < high <= 100, got {p!r}")
        self.keep_labels = None if labels is None else self._check_labels(labels)

        self.bad_samples: list[BadSample] = []
        self.dropped_objects = 0  # label volumes have no empty objects; kept for a uniform interface
        self.skipped_empty_slices = 0
        self._volumes: list[_Volume] = []
        self._entries: list[_Entry] = []
        self._cache: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        if isinstance(source, (str, os.PathLike)):
            self.source: object = Path(source)
            pairs = self._folder_pairs(Path(source))
        elif isinstance(source, Sequence) and all(
                isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2
                and all(isinstance(x, (str, os.PathLike)) for x in p) for p in source):
            self.source = f"{len(source)} NIfTI pair{'' if len(source) == 1 else 's'}"
            pairs = [(Path(a), Path(b)) for a, b in source]
        else:
            raise TypeError(f"source: expected a folder path or a sequence of (image path, label path) pairs, "
                            f"got {type(source).__name__}")
        for image, label in pairs:
            self._scan(image, label)
        raise_if_no_samples(self.source, len(self._entries), self.bad_samples,
                            what=f"NIfTI slices with objects along axis {self.axis}")

    @staticmethod
    def _check_labels(labels: Sequence[int]) -> np.ndarray:
        ok = (isinstance(labels, Sequence) and not isinstance(labels, str) and len(labels) > 0
              and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v != 0 for v in labels))
        if not ok:
            raise ValueError(f"labels: expected a non-empty sequence of nonzero ints, got {labels!r}")
        return np.unique(np.asarray(labels, dtype=np.int64))

    def _bad(self, path: Path, reason: str) -> None:
        self.bad_samples.append(BadSample(str(path), reason))

    def _folder_pairs(self, root: Path) -> list[tuple[Path, Path]]:
        """(image, label) pairs of a dataset folder; images with no label file, and label files no
        image pairs with, go to ``bad_samples``."""
        if not root.is_dir():
            raise FileNotFoundError(f"NIfTI dataset folder not found: {root}")
        image_dir = root / "images"
        label_dir = next((root / n for n in ("labels", "masks") if (root / n).is_dir()), None)
        if not image_dir.is_dir() or label_dir is None:
            raise ValueError(f"{root}: expected images/ and labels/ (or masks/) folders inside, "
                             f"found {sorted(p.name for p in root.iterdir())}")
        labels = {nifti_stem(p): p for p in nifti_files(label_dir)}  # x.nii.gz sorts after (wins over) x.nii
        used: set[str] = set()
        pairs = []
        for image in volume_files(image_dir):
            stem = volume_stem(image)
            m = _NNUNET_CHANNEL.fullmatch(stem)
            key = stem if stem in labels else (m[1] if m and m[1] in labels else None)
            if key is None:
                alt = f" or {label_dir.name}/{m[1]}.nii.gz (nnU-Net naming)" if m else ""
                self._bad(image, f"no label file: expected {label_dir.name}/{stem}.nii.gz{alt}")
                continue
            used.add(key)
            pairs.append((image, labels[key]))
        for stem, label in sorted(labels.items(), key=lambda kv: natural_key(kv[1].name)):
            if stem not in used:
                self._bad(label, "no image with this name in images/")
        return pairs

    def _scan(self, image: Path, label: Path) -> None:
        """Index the slices of one volume pair that hold objects, or record why the pair is bad."""
        series = ornt = None
        try:
            if image.is_dir():
                series = scan_dicom_series(image)
                img_shape = series.shape
            else:
                img_proxy = _load_proxy(image)
                img_shape = _shape3d(img_proxy.shape)
        except ValueError as e:
            return self._bad(image, str(e).removeprefix(f"{image}: "))
        try:
            lab_proxy = _load_proxy(label)
            lab_shape = _shape3d(lab_proxy.shape)
            if series is not None:
                ornt = label_orientation(lab_proxy.affine, lab_shape, series)
                lab_shape = img_shape
        except ValueError as e:
            return self._bad(label, str(e))
        if img_shape != lab_shape:
            return self._bad(image, f"image shape {img_shape} differs from label {label} shape {lab_shape} "
                                    f"(they must match voxel for voxel)")
        if series is None and np.dtype(img_proxy.get_data_dtype()).kind not in "biuf":
            return self._bad(image, f"image must hold numbers, got dtype {img_proxy.get_data_dtype()}")
        try:
            lab = _integer_labels(_read(lab_proxy))
        except ValueError as e:
            return self._bad(label, str(e))
        lab = lab if ornt is None else _apply_orientation(lab, ornt)
        per_slice = self._slice_labels(lab)
        if not per_slice:
            what = "" if self.keep_labels is None else f" with one of the labels {self.keep_labels.tolist()}"
            return self._bad(label, f"label volume has no object{what} in its {lab.shape[self.axis]} slices "
                                    f"along axis {self.axis}")
        self.skipped_empty_slices += lab.shape[self.axis] - len(per_slice)
        v = len(self._volumes)
        self._volumes.append(_Volume(image, label, img_shape, ornt))
        self._entries.extend(_Entry(v, z, values) for z, values in per_slice)

    def _slice_labels(self, lab: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(slice index, label values present) for every slice along the axis with a kept object."""
        flat = np.moveaxis(lab, self.axis, 0).reshape(lab.shape[self.axis], -1)
        zs, idx = np.nonzero(flat)
        values = flat[zs, idx].astype(np.int64)
        if self.keep_labels is not None:
            keep = np.isin(values, self.keep_labels)
            zs, values = zs[keep], values[keep]
        if len(values) == 0:
            return []
        vmin = int(values.min())
        span = int(values.max()) - vmin + 1
        pairs = np.unique(zs.astype(np.int64) * span + (values - vmin))  # sorted by slice, then label
        slices, starts = np.unique(pairs // span, return_index=True)
        groups = np.split(pairs % span + vmin, starts[1:])
        return [(int(z), g) for z, g in zip(slices, groups)]

    @property
    def num_volumes(self) -> int:
        return len(self._volumes)

    @property
    def names(self) -> list[str]:
        return [self._name(e) for e in self._entries]

    @property
    def case_names(self) -> list[str]:
        """The case of each slice: its image volume (a split by case keeps a scan's slices on one side)."""
        return [str(self._volumes[e.volume].image) for e in self._entries]

    def _name(self, e: _Entry) -> str:
        return f"{self._volumes[e.volume].image}[axis={self.axis},z={e.z}]"

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        how = (f"window={self.window}" if self.window is not None else f"percentiles={self.percentiles}")
        nv = self.num_volumes
        return (f"NiftiDataset({self.source}, axis={self.axis}, {how}: {len(self)} slices from "
                f"{nv} volume{'' if nv == 1 else 's'}, {self.skipped_empty_slices} empty slices skipped, "
                f"{len(self.bad_samples)} bad)")

    def __getstate__(self) -> dict:  # DataLoader workers get the index, not the cached volume
        return {**self.__dict__, "_cache": None}

    def _intensity_range(self, vol: np.ndarray) -> tuple[float, float]:
        if self.window is not None:
            level, width = self.window
            return level - width / 2, level + width / 2
        finite = vol if np.issubdtype(vol.dtype, np.integer) else vol[np.isfinite(vol)]
        if finite.size == 0:
            return 0.0, 0.0
        lo, hi = np.percentile(finite, self.percentiles)
        return float(lo), float(hi)

    def _load(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 image and the label volume of pair ``v``; the last pair stays cached, so reading
        the slices of a volume in order reads it once."""
        if self._cache is not None and self._cache[0] == v:
            return self._cache[1]
        vol = self._volumes[v]
        img = read_volume(vol.image)
        lab = read_volume(vol.label, labels=True)
        lab = lab if vol.label_ornt is None else _apply_orientation(lab, vol.label_ornt)
        if img.shape != vol.shape or lab.shape != vol.shape:
            raise ValueError(f"{vol.image}: changed on disk since the dataset was opened")
        loaded = (scale_to_uint8(img, *self._intensity_range(img)), lab)
        self._cache = (v, loaded)
        return loaded

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self._entries):
            raise IndexError(f"sample index {i} out of range 0..{len(self._entries) - 1}")
        e = self._entries[i]
        img, lab = self._load(e.volume)
        gray = np.take(img, e.z, axis=self.axis)
        lab2d = np.take(lab, e.z, axis=self.axis)
        masks = lab2d[None] == e.labels.astype(lab2d.dtype)[:, None, None]
        if not masks.any(axis=(1, 2)).all():
            raise ValueError(f"{self._volumes[e.volume].label}: changed on disk since the dataset was opened")
        return Sample(np.repeat(gray[..., None], 3, axis=-1), masks, name=self._name(e))

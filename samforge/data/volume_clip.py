"""A 3D scan as a clip of slices for SAM 2 tracking (the MedSAM2 use), and its 3D mask written back.

``read_volume_clip`` reads a NIfTI file (``.nii``/``.nii.gz``, nibabel), a DICOM series folder (``.dcm`` files of
one series, or a folder holding one series folder: :mod:`samforge.data.dicom`, CT in HU, with the series' RAS
affine) or a MedSAM-style ``.npz`` (``imgs``: ``D x H x W``), slices it along ``axis`` and maps intensities to
uint8 RGB frames (CT ``window=(level, width)`` or MR percentiles, as ``NiftiDataset`` does).
``write_volume_mask`` puts a ``T x H x W`` label stack back in the volume's axis order and writes it atomically:
NIfTI with the input's affine and header (a DICOM input: the series' affine, as scanner coordinates), or ``.npz``
(``gts``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samforge.data.dicom import is_dicom_series, read_dicom_series, resolve_series_folder
from samforge.data.nifti_dataset import DEFAULT_PERCENTILES, nifti_stem, read_volume, scale_to_uint8
from samforge.utils.atomic import atomic_path, atomic_write_bytes

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npz")


@dataclass
class VolumeClip:
    frames: np.ndarray  # T x H x W x 3 uint8: the slices along `axis`, in order
    axis: int  # the volume axis the slices were taken along
    shape: tuple[int, int, int]  # the volume's shape
    path: Path
    affine: np.ndarray | None = None  # NIfTI and DICOM only
    header: Any = None  # NIfTI only


def is_volume_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a volume: a ``.nii``/``.nii.gz``/``.npz`` file name, or a folder holding a DICOM
    series (directly or as its one subfolder)."""
    name = Path(path).name.lower()
    if Path(path).is_dir():
        return is_dicom_series(path) or any(is_dicom_series(p) for p in Path(path).iterdir() if p.is_dir())
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def _intensities_to_uint8(vol: np.ndarray, window: tuple[float, float] | None,
                          percentiles: tuple[float, float] | None) -> np.ndarray:
    if window is not None and percentiles is not None:
        raise ValueError(f"give window={window!r} (CT) or percentiles={percentiles!r} (MR), not both")
    if vol.dtype == np.uint8 and window is None and percentiles is None:
        return vol  # already display values (MedSAM npz files are stored so)
    if window is not None:
        level, width = (float(v) for v in window)
        if width <= 0:
            raise ValueError(f"window: expected (level, width) with width > 0, got {window!r}")
        return scale_to_uint8(vol, level - width / 2, level + width / 2)
    lo_p, hi_p = percentiles or DEFAULT_PERCENTILES
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles: expected (low, high) with 0 <= low < high <= 100, got {percentiles!r}")
    finite = vol[np.isfinite(vol)]
    if finite.size == 0:
        return np.zeros(vol.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [lo_p, hi_p])
    return scale_to_uint8(vol, float(lo), float(hi))


def read_volume_clip(path: str | os.PathLike, axis: int = 2, window: tuple[float, float] | None = None,
                     percentiles: tuple[float, float] | None = None) -> VolumeClip:
    """A volume file (or DICOM series folder) as uint8 RGB slices along ``axis`` (0, 1 or 2). Raises
    ``ValueError`` naming the file when it is unreadable or not 3-D."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"volume {path} does not exist")
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or not 0 <= axis <= 2:
        raise ValueError(f"axis: expected 0, 1 or 2, got {axis!r}")
    affine = header = None
    if path.is_dir():
        path = resolve_series_folder(path)
        vol, series = read_dicom_series(path)
        affine = series.affine
    elif nifti_stem(path) is not None:
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception as e:  # noqa: BLE001 - nibabel raises several types
            raise ValueError(f"unreadable NIfTI file {path}: {e}") from e
        if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
            raise ValueError(f"{path}: expected a 3-D volume, got shape {tuple(img.shape)}")
        vol = read_volume(path)
        affine, header = img.affine, img.header
    elif path.name.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                if "imgs" not in data:
                    raise ValueError(f"{path}: a volume .npz needs an 'imgs' array, found {sorted(data.files)}")
                vol = data["imgs"]
        except (OSError, ValueError) as e:
            raise ValueError(f"unreadable volume {path}: {e}") from e
        if vol.ndim == 4 and vol.shape[-1] in (1, 3):  # D x H x W x C: the first channel as intensity
            vol = vol[..., 0]
        if vol.ndim != 3:
            raise ValueError(f"{path}: expected a 3-D volume 'imgs' (D x H x W), got shape {vol.shape}")
    else:
        raise ValueError(f"{path}: expected a volume file ending in {', '.join(VOLUME_SUFFIXES)}")
    if min(vol.shape) == 0:
        raise ValueError(f"{path}: the volume is empty (shape {vol.shape})")
    grey = _intensities_to_uint8(np.asarray(vol), window, percentiles)
    slices = np.moveaxis(grey, axis, 0)
    frames = np.repeat(slices[..., None], 3, axis=-1)
    return VolumeClip(frames=np.ascontiguousarray(frames), axis=int(axis), shape=tuple(vol.shape), path=path,
                      affine=affine, header=header)


def write_volume_mask(labels: np.ndarray, clip: VolumeClip, path: str | os.PathLike) -> Path:
    """Write a ``T x H x W`` label stack (the clip's slice order) as a volume shaped like the input: NIfTI
    (``.nii``/``.nii.gz``, the input's affine; needs a NIfTI or DICOM input) or ``.npz`` (``gts``). Atomic."""
    path = Path(path)
    labels = np.asarray(labels)
    expected = (clip.frames.shape[0], *clip.frames.shape[1:3])
    if labels.shape != expected:
        raise ValueError(f"labels must be T x H x W = {expected} (the clip's slices), got {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    vol = np.moveaxis(labels, 0, clip.axis)
    assert vol.shape == clip.shape
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    vol = vol.astype(dtype)
    if nifti_stem(path) is not None:
        if clip.affine is None:
            raise ValueError(f"{path}: a NIfTI mask needs a NIfTI input (or a DICOM series) to take its affine "
                             f"from ({clip.path})")
        import nibabel as nib

        if clip.header is not None:
            header = clip.header.copy()
            header.set_data_dtype(dtype)
            header["scl_slope"], header["scl_inter"] = 1, 0  # labels are stored as they are
            image = nib.Nifti1Image(vol, clip.affine, header)
        else:  # a DICOM input: its affine, in scanner coordinates, as sform and qform
            image = nib.Nifti1Image(vol, clip.affine)
            image.set_sform(clip.affine, code="scanner")
            image.set_qform(clip.affine, code="scanner")
        data = image.to_bytes()
        atomic_write_bytes(path, gzip.compress(data) if path.name.lower().endswith(".gz") else data)
    elif path.suffix.lower() == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, gts=vol)
    else:
        raise ValueError(f"{path}: expected a mask file ending in .nii, .nii.gz or .npz")
    return path

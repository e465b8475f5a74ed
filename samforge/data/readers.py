"""One entry point for every dataset form the trainer reads: ``open_dataset(spec)``.

Accepted forms of ``spec``:

* ``synthetic``, ``synthetic:N``, ``synthetic:N:SIZE`` or ``synthetic:N:SIZE:SEED`` (SIZE is ``H`` or
  ``HxW``): the built-in synthetic scenes ``SEED .. SEED+N-1``, served on the fly (default N = 64,
  SIZE = 256, SEED = 0). Use another SEED range for held-out scenes. Write ``./synthetic`` for a folder
  of that name.
* ``synthetic-medical`` with the same ``:N:SIZE:SEED`` suffixes: grey, low-contrast medical-like slices
  with abutting organs (:func:`~samforge.data.synthetic_medical.make_medical_scene`), on the fly.
* ``synthetic-fundus[:N[:SIZE[:SEED]]][:rater=R]``: synthetic fundus photographs, the optic disc and cup drawn
  by 7 raters (:mod:`~samforge.data.synthetic_fundus`, default N = 16, SIZE = 256), on the fly.
* ``refuge:PATH[:rater=R][:part=P]``, or a folder holding ``Training-400/`` / ``Test-400/`` (or one such
  folder of ``<case>/<case>_seg_disc_K.png`` cases): REFUGE fundus photographs with several raters' disc and
  cup masks (:mod:`~samforge.data.refuge`); two objects per image (disc, cup). ``rater`` fuses the raters:
  ``majority`` (default), ``K`` (rater K alone), ``mean`` (a soft target for the loss) or ``all`` (each rater's
  masks a sample); ``part``: ``training`` (default), ``validation``, ``test`` or ``all``.
* a ``.json`` file: COCO instances (``images`` names the image folder; default: the JSON's folder),
* a ``.npz`` file, or a folder holding ``.npz`` files: MedSAM's format,
* a folder whose ``images/`` holds ``.nii`` / ``.nii.gz`` volumes or DICOM series folders (``images/<case>/*.dcm``),
  with ``labels/`` (or ``masks/``) of NIfTI label volumes named after them (``labels/<case>.nii.gz``): volumes
  sliced along axis 2 with percentile intensity normalisation (the defaults of
  :class:`~samforge.data.nifti_dataset.NiftiDataset`; for CT windowing, another axis or a subset of
  labels, construct ``NiftiDataset`` directly),
* a folder with ``images/`` and ``masks/`` (or ``labels/``): images with label maps or per-object PNGs.

Every dataset has ``__len__``, ``__getitem__(i) -> Sample``, ``names`` and ``bad_samples``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from samforge.data.bad_samples import summarize_bad_samples
from samforge.data.coco_dataset import CocoDataset
from samforge.data.mask_folder import MASK_DIR_NAMES, MaskFolderDataset
from samforge.data.nifti_dataset import NiftiDataset, volume_files
from samforge.data.npz_dataset import NpzDataset
from samforge.data.refuge import RefugeDataset, is_refuge_folder, open_refuge_spec
from samforge.data.synthetic_fundus import SyntheticFundusDataset, open_synthetic_fundus_spec
from samforge.data.synthetic_dataset import SyntheticDataset

__all__ = ["CocoDataset", "MaskFolderDataset", "NiftiDataset", "NpzDataset", "SyntheticDataset", "open_dataset",
           "summarize_bad_samples"]

SYNTHETIC_DEFAULT_N = 64
SYNTHETIC_DEFAULT_SIZE = 256
ACCEPTED_FORMS = ("'synthetic', 'synthetic:N', 'synthetic:N:SIZE' or 'synthetic:N:SIZE:SEED' (SIZE = H or HxW); "
                  "'synthetic-medical' with the same suffixes; "
                  "'synthetic-fundus[:N[:SIZE[:SEED]]][:rater=R]'; "
                  "'refuge:PATH[:rater=majority|mean|all|K][:part=training|validation|test|all]' or a folder "
                  "with Training-400/ or Test-400/, or of <case>/<case>_seg_disc_K.png folders (REFUGE); "
                  "a COCO .json file; "
                  "a .npz file or a folder of .npz files; "
                  "a folder with images/ of .nii/.nii.gz volumes or DICOM series folders, and labels/ (or masks/); "
                  "a folder with images/ and masks/ (or labels/)")
_SYNTHETIC = re.compile(r"synthetic(-medical)?(?::(\d+)(?::(\d+)(?:x(\d+))?(?::(\d+))?)?)?")
_SYNTHETIC_PREFIXES = ("synthetic", "synthetic-medical")

Dataset = (CocoDataset | MaskFolderDataset | NiftiDataset | NpzDataset | SyntheticDataset | RefugeDataset
           | SyntheticFundusDataset)


def _synthetic(spec: str) -> SyntheticDataset:
    m = _SYNTHETIC.fullmatch(spec)
    if m is None:
        raise ValueError(f"bad synthetic dataset spec {spec!r}: expected {ACCEPTED_FORMS}")
    n = int(m[2]) if m[2] else SYNTHETIC_DEFAULT_N
    h = int(m[3]) if m[3] else SYNTHETIC_DEFAULT_SIZE
    w = int(m[4]) if m[4] else h
    if n < 1 or min(h, w) < 32:
        raise ValueError(f"bad synthetic dataset spec {spec!r}: N must be >= 1 and the size >= 32")
    return SyntheticDataset(n, image_size=(h, w), seed=int(m[5]) if m[5] else 0,
                            kind="medical" if m[1] else "default")


def open_dataset(spec: str | os.PathLike, images: str | os.PathLike | None = None) -> Dataset:
    """Open the dataset ``spec`` names (see the module docstring for the accepted forms).

    Raises ``FileNotFoundError`` for a path that does not exist, ``ValueError`` for anything else
    it cannot read (an unknown form, or a dataset whose samples are all bad)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"dataset spec must be a str or path, got {type(spec).__name__}")
    if isinstance(spec, str) and (spec.startswith("refuge:") or spec.split(":")[0] == "synthetic-fundus"):
        if images is not None:
            raise ValueError(f"images={images!s} only applies to a COCO .json dataset, not {spec!r}")
        return open_refuge_spec(spec) if spec.startswith("refuge:") else open_synthetic_fundus_spec(spec)
    if isinstance(spec, str) and any(spec == p or spec.startswith(p + ":") for p in _SYNTHETIC_PREFIXES):
        if images is not None:
            raise ValueError(f"images={images!s} only applies to a COCO .json dataset, not {spec!r}")
        return _synthetic(spec)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path} (accepted: {ACCEPTED_FORMS})")
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".json":
        return CocoDataset(path, images_dir=images)
    if images is not None:
        raise ValueError(f"images={images!s} only applies to a COCO .json dataset, not {path}")
    if path.is_file() and suffix == ".npz":
        return NpzDataset(path)
    if path.is_dir():
        if not (path / "images").is_dir() and is_refuge_folder(path):  # a REFUGE root or part folder
            return RefugeDataset(path)
        if (path / "images").is_dir() and volume_files(path / "images"):
            return NiftiDataset(path)
        if (path / "images").is_dir() and any((path / n).is_dir() for n in MASK_DIR_NAMES):
            return MaskFolderDataset(path)
        if next(path.rglob("*.npz"), None) is not None:
            return NpzDataset(path)
    kind = "folder" if path.is_dir() else "file"
    raise ValueError(f"cannot tell what dataset the {kind} {path} is: expected {ACCEPTED_FORMS}")

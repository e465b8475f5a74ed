"""One interface for every sequence SAM 2 trains on: video clips, volumes sliced into clips, and images as
one-frame clips; and one opener, ``open_clip_dataset(spec)``.

A clip dataset has ``len()``, ``[i] -> Clip``, ``names`` and ``bad_samples`` (files it skipped, each a
:class:`~samforge.data.sample.BadSample` naming the file and the reason). A :class:`Clip` has ``frames``
(T x H x W x 3 uint8) and ``masks`` (T x K x H x W bool): object ``k`` is the same object on every frame
(``obj_ids[k]`` is its label value), and its mask is empty on frames where it is absent.

Accepted forms of ``spec``:

* ``synthetic-video[:N[:SIZE[:FRAMES[:SEED]]]]`` and DAVIS-layout folders (``JPEGImages/`` + ``Annotations/``):
  video clips (:mod:`samforge.data.davis_dataset`); every clip is checked when opened (readable, one size,
  an annotation per frame, at least one object).
* ``synthetic-medical-volume[:N[:SIZE[:DEPTH[:SEED]]]]`` (SIZE = ``H`` or ``HxW``; defaults 8 volumes, 128,
  16 slices, seed 0): :func:`~samforge.data.synthetic_medical_volume.make_medical_volume`, on the fly.
* a MedSAM ``.npz`` file or a folder of them (``imgs`` D x H x W or D x H x W x 3, ``gts`` D x H x W): each
  volume is a clip of its slices along ``axis`` (default 0); a 2D file (``imgs`` H x W) is a one-frame clip.
* a folder with ``images/`` of ``.nii``/``.nii.gz`` volumes or DICOM series folders (``images/<case>/*.dcm``) and
  ``labels/`` (or ``masks/``) of NIfTI labels: each pair (paired
  as :class:`~samforge.data.nifti_dataset.NiftiDataset` pairs them) is a clip of its slices along ``axis``
  (default 2) with its windowing (``window=(level, width)``) or percentile normalisation.
* anything :func:`~samforge.data.readers.open_dataset` reads (``synthetic[...]``, ``synthetic-medical[...]``,
  COCO ``.json``, ``images/`` + ``masks/`` folders): every image a one-frame clip.

Objects of a volume or video are its label values other than 0 (and DAVIS' void 255), over the whole clip.
"""

from __future__ import annotations

import numbers
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from samforge.data.bad_samples import raise_if_no_samples
from samforge.data.davis_dataset import DavisDataset, VideoClip, open_video_dataset
from samforge.data.nifti_dataset import NiftiDataset, volume_files
from samforge.data.npz_dataset import NpzDataset, to_uint8_rgb
from samforge.data.readers import ACCEPTED_FORMS, open_dataset
from samforge.data.sample import BadSample
from samforge.data.synthetic_medical_volume import _check_volume_args, make_medical_volume

__all__ = ["ACCEPTED_CLIP_FORMS", "Clip", "ImageClipDataset", "NiftiClipDataset", "NpzClipDataset",
           "SyntheticVolumeClipDataset", "VideoClipDataset", "open_clip_dataset"]

SYNTHETIC_VOLUME_DEFAULTS = {"n": 8, "size": 128, "depth": 16, "seed": 0}
ACCEPTED_CLIP_FORMS = ("'synthetic-video[:N[:SIZE[:FRAMES[:SEED]]]]'; a DAVIS-layout folder (JPEGImages/ + "
                       "Annotations/); 'synthetic-medical-volume[:N[:SIZE[:DEPTH[:SEED]]]]'; a MedSAM .npz file or "
                       "folder of them; a folder with images/ of NIfTI volumes and labels/; or any 2D dataset: "
                       + ACCEPTED_FORMS)
_SYNTHETIC_VOLUME = re.compile(r"synthetic-medical-volume(?::(\d+)(?::(\d+)(?:x(\d+))?(?::(\d+)(?::(\d+))?)?)?)?")


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class Clip:
    """A sequence of frames with per-frame masks of the same objects.

    Args:
        name: where the clip came from (file, folder or id), for messages.
        frames: T x H x W x 3 uint8 (or T x H x W uint8 grey, repeated to RGB on reading), or any sequence of
            length T whose items are such frames (read when asked for, e.g. the files of a video folder).
        obj_ids: the K objects' ids (label values), distinct ints.
        labels: T x H x W integer label maps (object ``obj_ids[k]`` where the label equals it), or
        masks: T x K x H x W bool (may overlap). Exactly one of ``labels`` / ``masks``.
        frame_names: T names (default ``"0" .. "T-1"``).

    ``frames`` and ``masks`` give everything as arrays; ``frame(t)``, ``object_masks(frames, objects)`` and
    ``presence`` read only what is asked for (a long volume is not expanded to T x K x H x W at once).
    """

    def __init__(self, name: str, frames: Any, obj_ids: Sequence[int], *, labels: np.ndarray | None = None,
                 masks: np.ndarray | None = None, frame_names: Sequence[str] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty str, got {name!r}")
        self.name = name
        if (labels is None) == (masks is None):
            raise ValueError(f"{name}: give labels (T x H x W) or masks (T x K x H x W), exactly one")
        if isinstance(obj_ids, (str, bytes)) or not isinstance(obj_ids, Sequence) or not all(
                _is_int(v) for v in obj_ids) or len(set(int(v) for v in obj_ids)) != len(obj_ids):
            raise ValueError(f"{name}: obj_ids: expected a sequence of distinct ints, got {obj_ids!r}")
        self.obj_ids = [int(v) for v in obj_ids]
        if labels is not None:
            if not isinstance(labels, np.ndarray) or labels.ndim != 3 or labels.dtype.kind not in "biu":
                raise ValueError(f"{name}: labels: expected a T x H x W integer array, got "
                                 f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}")
            shape = labels.shape
        else:
            if not isinstance(masks, np.ndarray) or masks.ndim != 4 or masks.dtype != bool:
                raise ValueError(f"{name}: masks: expected a T x K x H x W bool array, got "
                                 f"{getattr(masks, 'dtype', type(masks).__name__)} {getattr(masks, 'shape', '')}")
            if masks.shape[1] != len(self.obj_ids):
                raise ValueError(f"{name}: masks hold {masks.shape[1]} objects but obj_ids names {len(self.obj_ids)}")
            shape = masks.shape[:1] + masks.shape[2:]
        if shape[0] < 1 or min(shape[1:]) < 1:
            raise ValueError(f"{name}: expected at least one frame of at least 1 x 1 pixels, got T x H x W = {shape}")
        if isinstance(frames, np.ndarray):
            ok = frames.dtype == np.uint8 and (frames.shape == shape or frames.shape == shape + (3,))
            if not ok:
                raise ValueError(f"{name}: frames: expected a {shape[0]} x {shape[1]} x {shape[2]} (x 3) uint8 array "
                                 f"(the masks' T x H x W), got {frames.dtype} {frames.shape}")
        elif not (hasattr(frames, "__len__") and hasattr(frames, "__getitem__")):
            raise TypeError(f"{name}: frames: expected an array or a sequence of frames, got {type(frames).__name__}")
        if len(frames) != shape[0]:
            raise ValueError(f"{name}: {len(frames)} frames but {shape[0]} frames of masks")
        if frame_names is None:
            frame_names = [str(t) for t in range(shape[0])]
        elif len(frame_names) != shape[0]:
            raise ValueError(f"{name}: frame_names: expected {shape[0]} names, got {len(frame_names)}")
        self.frame_names = list(frame_names)
        self._frames = frames
        self._labels = labels
        self._masks = masks
        self._shape = shape
        self._presence: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self._shape[0])

    @property
    def num_objects(self) -> int:
        return len(self.obj_ids)

    @property
    def size(self) -> tuple[int, int]:
        return int(self._shape[1]), int(self._shape[2])

    def __repr__(self) -> str:
        return (f"Clip({self.name!r}: {self.num_frames} frames of {self.size[0]}x{self.size[1]}, "
                f"objects {self.obj_ids})")

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as H x W x 3 uint8 RGB."""
        if not _is_int(t) or not 0 <= t < self.num_frames:
            raise IndexError(f"{self.name}: frame index {t!r} out of range 0..{self.num_frames - 1}")
        f = np.asarray(self._frames[int(t)])
        if f.ndim == 2:
            f = np.repeat(f[..., None], 3, axis=-1)
        if f.dtype != np.uint8 or f.shape != self.size + (3,):
            raise ValueError(f"{self.name}: frame {self.frame_names[t]} is {f.dtype} {f.shape}, expected "
                             f"{self.size[0]} x {self.size[1]} x 3 uint8")
        return f

    @property
    def frames(self) -> np.ndarray:
        """All frames, T x H x W x 3 uint8."""
        return np.stack([self.frame(t) for t in range(self.num_frames)])

    @property
    def masks(self) -> np.ndarray:
        """All masks, T x K x H x W bool."""
        return self.object_masks(range(self.num_frames), range(self.num_objects))

    def object_masks(self, frame_indices: Sequence[int], obj_indices: Sequence[int]) -> np.ndarray:
        """len(frame_indices) x len(obj_indices) x H x W bool: the masks of objects ``obj_indices`` (positions in
        ``obj_ids``) on frames ``frame_indices`` (repeats allowed, any order)."""
        fi = [int(t) for t in frame_indices]
        oi = [int(k) for k in obj_indices]
        if any(not 0 <= t < self.num_frames for t in fi):
            raise IndexError(f"{self.name}: frame indices {fi} out of range 0..{self.num_frames - 1}")
        if any(not 0 <= k < self.num_objects for k in oi):
            raise IndexError(f"{self.name}: object indices {oi} out of range 0..{self.num_objects - 1}")
        if self._masks is not None:
            return self._masks[np.asarray(fi, dtype=np.int64)][:, np.asarray(oi, dtype=np.int64)]
        lab = self._labels[np.asarray(fi, dtype=np.int64)]
        ids = np.asarray([self.obj_ids[k] for k in oi], dtype=np.int64)
        return lab[:, None] == ids.astype(lab.dtype)[None, :, None, None] if len(ids) else np.zeros(
            (len(fi), 0) + self.size, dtype=bool)

    @property
    def presence(self) -> np.ndarray:
        """T x K bool: whether object k is visible (non-empty mask) on frame t."""
        if self._presence is None:
            if self._masks is not None:
                self._presence = self._masks.any(axis=(2, 3))
            else:
                ids = np.asarray(self.obj_ids, dtype=np.int64)
                lab = self._labels
                lo, hi = int(lab.min()), int(lab.max())
                if lo >= 0 and hi < 65536:  # one bincount over (frame, label) pairs
                    flat = np.arange(self.num_frames, dtype=np.int64)[:, None] * (hi + 1) + lab.reshape(
                        self.num_frames, -1)
                    counts = np.bincount(flat.ravel(), minlength=self.num_frames * (hi + 1)).reshape(
                        self.num_frames, hi + 1)
                    inside = (ids >= 0) & (ids <= hi)
                    self._presence = np.zeros((self.num_frames, len(ids)), dtype=bool)
                    self._presence[:, inside] = counts[:, ids[inside]] > 0
                else:
                    self._presence = np.stack([np.isin(ids, np.unique(f)) for f in lab]).reshape(
                        self.num_frames, len(ids))
        return self._presence


class _ClipDatasetBase:
    """Index checking, names and the bad-sample list shared by the clip datasets."""

    bad_samples: list
    _names: list
    is_volume = False  # clips are slices of 3D volumes (scored by 3D Dice), not video frames

    @property
    def names(self) -> list:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def _check_index(self, i: object) -> int:
        if not _is_int(i) or not 0 <= i < len(self._names):
            raise IndexError(f"clip index {i!r} out of range 0..{len(self._names) - 1}")
        return int(i)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} clips, {len(self.bad_samples)} bad)"


def _from_video_clip(clip: VideoClip) -> Clip:
    frames = clip.video if isinstance(clip.video, np.ndarray) else _LazyFrames(clip)
    return Clip(clip.name, frames, clip.obj_ids, labels=clip.labels, frame_names=clip.frame_names)


class _LazyFrames:
    """The frames of a DAVIS clip folder, read one at a time."""

    def __init__(self, clip: VideoClip) -> None:
        self.clip = clip

    def __len__(self) -> int:
        return self.clip.num_frames

    def __getitem__(self, t: int) -> np.ndarray:
        return self.clip.frame(t)


class VideoClipDataset(_ClipDatasetBase):
    """Video clips: a DAVIS-layout folder, a ``synthetic-video`` spec, or a dataset opened by
    :func:`~samforge.data.davis_dataset.open_video_dataset`. DAVIS clips are checked when opened (frames readable
    and of one size, an annotation PNG per frame of that size, at least one object); bad clips go to
    ``bad_samples``. DAVIS' void label (255) is background in the masks."""

    def __init__(self, source: str | os.PathLike | Any) -> None:
        if isinstance(source, (str, os.PathLike)):
            source = open_video_dataset(source)
        if not (hasattr(source, "names") and hasattr(source, "__getitem__") and hasattr(source, "__len__")):
            raise TypeError(f"source: expected a video dataset path/spec or a dataset of VideoClip, "
                            f"got {type(source).__name__}")
        self.videos = source
        self.bad_samples: list = list(getattr(source, "bad_samples", []))
        self._index: list = []
        names = source.names
        for i in range(len(source)):
            if isinstance(source, DavisDataset):
                where = str(source.images_dir / names[i])
                try:
                    clip = source[i]
                except (ValueError, FileNotFoundError) as e:
                    self.bad_samples.append(BadSample(where, str(e)))
                    continue
                if not clip.obj_ids:
                    self.bad_samples.append(BadSample(where, "no object in any annotation (all 0 or void 255)"))
                    continue
            self._index.append(i)
        self._names = [names[i] for i in self._index]
        raise_if_no_samples(getattr(source, "root", "video dataset"), len(self._index), self.bad_samples,
                            what="clips")

    def __getitem__(self, i: int) -> Clip:
        clip = self.videos[self._index[self._check_index(i)]]
        return _from_video_clip(clip)


class SyntheticVolumeClipDataset(_ClipDatasetBase):
    """Volumes ``seed .. seed + num_volumes - 1`` of
    :func:`~samforge.data.synthetic_medical_volume.make_medical_volume`, generated when asked for, as clips of
    their slices named ``synthetic-medical-volume:<seed>``."""

    is_volume = True

    def __init__(self, num_volumes: int, image_size: Sequence[int] = (128, 128), depth: int = 16, seed: int = 0,
                 num_organs: int | tuple[int, int] = 3) -> None:
        if not _is_int(num_volumes) or num_volumes < 1:
            raise ValueError(f"num_volumes: expected a positive int, got {num_volumes!r}")
        _check_volume_args(seed, depth, tuple(image_size) if isinstance(image_size, Sequence) else image_size,
                           num_organs)
        self.num_volumes, self.depth, self.seed = int(num_volumes), int(depth), int(seed)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_organs = num_organs
        self.bad_samples: list = []
        self._names = [f"synthetic-medical-volume:{self.seed + i}" for i in range(self.num_volumes)]

    def __getitem__(self, i: int) -> Clip:
        i = self._check_index(i)
        vol = make_medical_volume(self.seed + i, depth=self.depth, image_size=self.image_size,
                                  num_organs=self.num_organs)
        ids = [int(v) for v in np.unique(vol.labels) if v != 0]
        return Clip(self._names[i], vol.volume, ids, labels=vol.labels)


def _check_axis(axis: object) -> int:
    if not _is_int(axis) or not 0 <= axis <= 2:
        raise ValueError(f"axis: expected 0, 1 or 2, got {axis!r}")
    return int(axis)


class NpzClipDataset(_ClipDatasetBase):
    """MedSAM ``.npz`` volumes (one file, or every ``.npz`` under a folder) as clips of their slices along
    ``axis`` (default 0, MedSAM's D of ``imgs`` D x H x W). Intensities other than uint8 are scaled by the
    file's min/max (as :class:`~samforge.data.npz_dataset.NpzDataset`). A 2D file (``imgs`` H x W (x 3)) is a
    one-frame clip. Files that are unreadable, lack ``imgs``/``gts``, whose shapes differ, or hold no object
    go to ``bad_samples``, named."""

    is_volume = True

    def __init__(self, path: str | os.PathLike, axis: int = 0) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a .npz file or folder path, got {type(path).__name__}")
        self.axis = _check_axis(axis)
        index = NpzDataset(path)  # validates every file (names bad ones) and finds the objects
        self.path = index.path
        self.bad_samples: list = list(index.bad_samples)
        files: dict = {}
        for e in index._entries:
            files.setdefault(e.path, [set(), e.z is None])[0].update(int(v) for v in e.labels)
        self._files = [(p, sorted(ids), is_2d) for p, (ids, is_2d) in files.items()]
        self._names = [str(p) for p, _, _ in self._files]

    def __getitem__(self, i: int) -> Clip:
        path, ids, is_2d = self._files[self._check_index(i)]
        try:
            with np.load(path, allow_pickle=False) as z:
                imgs, gts = z["imgs"], z["gts"]
        except Exception as e:  # changed or broken since opening
            raise ValueError(f"{path}: unreadable npz ({type(e).__name__}: {e})") from e
        gts = gts.astype(np.int64) if gts.dtype.kind == "f" else gts
        if imgs.shape[:gts.ndim] != gts.shape:
            raise ValueError(f"{path}: imgs {imgs.shape} and gts {gts.shape} differ (changed on disk since opening)")
        frames = to_uint8_rgb(imgs, float(imgs.min()), float(imgs.max()), gray=imgs.ndim == gts.ndim)
        if is_2d:
            frames, gts = frames[None], gts[None]
        elif self.axis:
            frames, gts = np.moveaxis(frames, self.axis, 0), np.moveaxis(gts, self.axis, 0)
        return Clip(self._names[i], np.ascontiguousarray(frames), ids, labels=np.ascontiguousarray(gts))


class NiftiClipDataset(_ClipDatasetBase):
    """NIfTI image/label volume pairs (a folder with ``images/`` and ``labels/`` or ``masks/``, or a list of
    pairs) as clips of their slices along ``axis`` (default 2). Pairing, the checks (unreadable, not 3D, image
    and label shapes differ, no label file, no object: named in ``bad_samples``) and the intensity mapping
    (CT ``window=(level, width)`` or MR ``percentiles``) are :class:`~samforge.data.nifti_dataset.NiftiDataset`'s.
    ``labels=[...]`` keeps only those label values."""

    is_volume = True

    def __init__(self, source: Any, axis: int = 2, window: tuple[float, float] | None = None,
                 percentiles: tuple[float, float] | None = None, labels: Sequence[int] | None = None) -> None:
        self.slices = NiftiDataset(source, axis=_check_axis(axis), window=window, percentiles=percentiles,
                                   labels=labels)
        self.axis = self.slices.axis
        self.bad_samples: list = list(self.slices.bad_samples)
        vols = self.slices._volumes
        ids: list = [set() for _ in vols]
        for e in self.slices._entries:
            ids[e.volume].update(int(v) for v in e.labels)
        self._ids = [sorted(s) for s in ids]
        self._names = [str(v.image) for v in vols]

    def __getitem__(self, i: int) -> Clip:
        i = self._check_index(i)
        grey, lab = self.slices._load(i)  # windowed / normalised uint8, integer labels
        grey, lab = np.moveaxis(grey, self.axis, 0), np.moveaxis(lab, self.axis, 0)
        if self.slices.keep_labels is not None:
            lab = np.where(np.isin(lab, self.slices.keep_labels), lab, 0)
        return Clip(self._names[i], np.ascontiguousarray(grey), self._ids[i], labels=np.ascontiguousarray(lab))


class ImageClipDataset(_ClipDatasetBase):
    """A 2D dataset (anything :func:`~samforge.data.readers.open_dataset` opens, or a dataset of
    :class:`~samforge.data.sample.Sample`) as one-frame clips; objects are numbered 1..K per image."""

    def __init__(self, source: Any, images: str | os.PathLike | None = None) -> None:
        if isinstance(source, (str, os.PathLike)):
            source = open_dataset(source, images=images)
        elif images is not None:
            raise ValueError(f"images={images!s} only applies when source is a path or spec")
        if not (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
            raise TypeError(f"source: expected a 2D dataset spec/path or a dataset of Sample, "
                            f"got {type(source).__name__}")
        self.samples = source
        self.bad_samples: list = list(getattr(source, "bad_samples", []))
        self._names = list(getattr(source, "names", [f"image {i}" for i in range(len(source))]))

    @property
    def case_names(self) -> list:
        """The 2D dataset's cases (one per image unless it declares ``case_names``)."""
        from samforge.data.split import case_names

        return case_names(self.samples) if hasattr(self.samples, "names") else self.names

    @property
    def structures(self) -> tuple[str, ...] | None:
        """The 2D dataset's named structures (REFUGE: disc, cup; object id k is ``structures[k - 1]``), or None."""
        return getattr(self.samples, "structures", None)

    def __getitem__(self, i: int) -> Clip:
        s = self.samples[self._check_index(i)]
        if s.soft_masks is not None:  # never binarised silently
            raise ValueError(f"{s.name}: soft targets (rater=mean) are trained by SAM (v1) models only; for SAM 2 "
                             "use rater=majority, rater=K or rater=all")
        return Clip(s.name, s.image[None], list(range(1, len(s.masks) + 1)), masks=s.masks[None])


def _synthetic_volume(spec: str, num_organs: int | tuple[int, int]) -> SyntheticVolumeClipDataset:
    m = _SYNTHETIC_VOLUME.fullmatch(spec)
    if m is None:
        raise ValueError(f"bad synthetic volume spec {spec!r}: expected "
                         "'synthetic-medical-volume[:N[:SIZE[:DEPTH[:SEED]]]]' (SIZE = H or HxW)")
    d = SYNTHETIC_VOLUME_DEFAULTS
    n = int(m[1]) if m[1] else d["n"]
    h = int(m[2]) if m[2] else d["size"]
    w = int(m[3]) if m[3] else h
    depth = int(m[4]) if m[4] else d["depth"]
    seed = int(m[5]) if m[5] else d["seed"]
    if n < 1 or min(h, w) < 32 or depth < 1:
        raise ValueError(f"bad synthetic volume spec {spec!r}: N and DEPTH must be >= 1 and the size >= 32")
    return SyntheticVolumeClipDataset(n, image_size=(h, w), depth=depth, seed=seed, num_organs=num_organs)


def open_clip_dataset(spec: str | os.PathLike, *, axis: int | None = None, window: tuple[float, float] | None = None,
                      percentiles: tuple[float, float] | None = None, images: str | os.PathLike | None = None,
                      num_organs: int | tuple[int, int] = 3) -> _ClipDatasetBase:
    """Open the clip dataset ``spec`` names (see the module docstring for the forms).

    ``axis`` slices volumes (default 0 for ``.npz``, 2 for NIfTI); ``window`` / ``percentiles`` set NIfTI
    intensities; ``images`` is a COCO json's image folder; ``num_organs`` is for ``synthetic-medical-volume``.
    Raises ``FileNotFoundError`` for a missing path, ``ValueError`` for a form it cannot read or a dataset whose
    files are all bad (listing why), ``TypeError`` for a spec that is not a str or path."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"clip dataset spec must be a str or path, got {type(spec).__name__}")
    if axis is not None:
        _check_axis(axis)
    is_nifti_opt = window is not None or percentiles is not None

    def refuse(what: str, ok: bool) -> None:
        if not ok:
            raise ValueError(f"{what} does not apply to {spec!s}: expected a volume dataset (.npz or NIfTI) "
                             f"for axis, a NIfTI folder for window/percentiles, a COCO .json for images")

    if isinstance(spec, str):
        if spec == "synthetic-medical-volume" or spec.startswith("synthetic-medical-volume:"):
            refuse("axis/window/percentiles/images", axis is None and not is_nifti_opt and images is None)
            return _synthetic_volume(spec, num_organs)
        if spec == "synthetic-video" or spec.startswith("synthetic-video:"):
            refuse("axis/window/percentiles/images", axis is None and not is_nifti_opt and images is None)
            return VideoClipDataset(spec)
        if spec.split(":")[0] in ("synthetic", "synthetic-medical", "synthetic-fundus", "refuge"):
            refuse("axis/window/percentiles/images", axis is None and not is_nifti_opt and images is None)
            return ImageClipDataset(spec)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"clip dataset not found: {path} (accepted: {ACCEPTED_CLIP_FORMS})")
    if path.is_dir() and (path / "JPEGImages").is_dir() and (path / "Annotations").is_dir():
        refuse("axis/window/percentiles/images", axis is None and not is_nifti_opt and images is None)
        return VideoClipDataset(path)
    if path.is_dir() and (path / "images").is_dir() and volume_files(path / "images"):
        refuse("images", images is None)
        return NiftiClipDataset(path, axis=2 if axis is None else axis, window=window, percentiles=percentiles)
    is_npz = (path.is_file() and path.suffix.lower() == ".npz") or (
        path.is_dir() and not (path / "images").is_dir() and next(path.rglob("*.npz"), None) is not None)
    if is_npz:
        refuse("window/percentiles/images", not is_nifti_opt and images is None)
        return NpzClipDataset(path, axis=0 if axis is None else axis)
    refuse("axis/window/percentiles", axis is None and not is_nifti_opt)
    try:
        return ImageClipDataset(path, images=images)
    except ValueError as e:
        if str(e).startswith("cannot tell what dataset"):
            kind = "folder" if path.is_dir() else "file"
            raise ValueError(f"cannot tell what clip dataset the {kind} {path} is: expected {ACCEPTED_CLIP_FORMS}") \
                from e
        raise

"""Video clips with per-frame object annotations in the DAVIS layout: reading, writing, and one opener.

Layout (DAVIS 2017; ``480p/`` or ``Full-Resolution/`` between the top folders and the clips is found too)::

    ROOT/JPEGImages/<clip>/00000.jpg 00001.jpg ...      frames (JPEG or PNG)
    ROOT/Annotations/<clip>/00000.png 00001.png ...     one label PNG per frame, same stem: palette (or grey)
                                                        values, 0 background, k for object k, 255 void

``open_video_dataset(spec)`` opens such a folder, or ``synthetic-video[:N[:SIZE[:FRAMES[:SEED]]]]`` (the
built-in clips of :mod:`samforge.data.synthetic_video`, SIZE = ``H`` or ``HxW``). Bad files are named in the
errors (unreadable, wrong size, missing annotation, an RGB annotation).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from samforge.utils.atomic import atomic_path

__all__ = ["VOID_LABEL", "DavisDataset", "VideoClip", "davis_palette", "open_video_dataset", "read_annotation",
           "write_davis_clip"]

VOID_LABEL = 255
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
RESOLUTION_DIRS = ("480p", "Full-Resolution", "1080p")
SYNTHETIC_VIDEO_DEFAULTS = {"n": 8, "size": 256, "frames": 16, "seed": 0}
ACCEPTED_VIDEO_FORMS = ("'synthetic-video[:N[:SIZE[:FRAMES[:SEED]]]]' (SIZE = H or HxW), or a DAVIS-layout "
                        "folder with JPEGImages/<clip>/ frames and Annotations/<clip>/ label PNGs")
_SYNTHETIC_VIDEO = re.compile(r"synthetic-video(?::(\d+)(?::(\d+)(?:x(\d+))?(?::(\d+)(?::(\d+))?)?)?)?")


@dataclass
class VideoClip:
    """One clip with its ground truth. ``video`` is what ``SAM2VideoPredictor.init_state`` takes (a folder of
    frames, read lazily, or a ``T x H x W x 3`` uint8 array); ``labels`` are ``T x H x W`` label maps
    (0 background, ``VOID_LABEL`` void, otherwise an object id of ``obj_ids``)."""

    name: str
    video: Union[Path, np.ndarray]
    labels: np.ndarray
    obj_ids: list
    frame_names: list

    @property
    def num_frames(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> tuple:
        return int(self.labels.shape[1]), int(self.labels.shape[2])

    def mask(self, obj_id: int) -> np.ndarray:
        """``T x H x W`` bool: where object ``obj_id`` is, on every frame."""
        if obj_id not in self.obj_ids:
            raise ValueError(f"clip {self.name}: no object {obj_id!r}; its objects are {self.obj_ids}")
        return self.labels == obj_id

    def void(self) -> np.ndarray | None:
        """``T x H x W`` bool void pixels (label 255), or None when there are none."""
        v = self.labels == VOID_LABEL
        return v if v.any() else None

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as ``H x W x 3`` uint8 RGB."""
        if not isinstance(t, (int, np.integer)) or not 0 <= t < self.num_frames:
            raise IndexError(f"clip {self.name}: frame index {t!r} out of range 0..{self.num_frames - 1}")
        if isinstance(self.video, np.ndarray):
            return self.video[t]
        return _read_rgb(self.video / self.frame_names[t])


def davis_palette() -> np.ndarray:
    """The 256 x 3 uint8 colour table of DAVIS (and PASCAL VOC) annotation PNGs: label bits spread over the
    high bits of R, G and B."""
    labels = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for ch in range(3):
            pal[:, ch] |= ((labels >> (3 * bit + ch)) & 1) << (7 - bit)
    return pal.astype(np.uint8)


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"unreadable frame {path}: {e}") from e


def read_annotation(path: Union[str, Path]) -> np.ndarray:
    """One annotation PNG as an ``H x W`` integer label map (uint8, or uint16 for 16-bit files). Palette,
    grey and 1-bit PNGs hold the labels themselves; an RGB(A) picture is refused (its colours are not ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
                raise ValueError(f"annotation {path} is a {mode} picture: expected a palette (P) or grey-level PNG "
                                 "whose values are object ids (0 background)")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"unreadable annotation {path}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(f"annotation {path}: expected a single-channel label map, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer) or (arr.size and arr.min() < 0) or (arr.size and arr.max() > 65535):
        raise ValueError(f"annotation {path}: expected non-negative integer labels, got {arr.dtype}")
    return arr.astype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)


def _frame_files(folder: Path) -> list:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                  key=lambda p: _natural_key(p.name))


def _resolve_dirs(root: Path) -> tuple:
    images, annotations = root / "JPEGImages", root / "Annotations"
    for d in (images, annotations):
        if not d.is_dir():
            raise ValueError(f"{root} is not a DAVIS-layout folder: {d} is missing (expected JPEGImages/<clip>/ "
                             "frames and Annotations/<clip>/ label PNGs)")
    for res in RESOLUTION_DIRS:  # DAVIS 2017 puts the resolution between the top folders and the clips
        if (images / res).is_dir() and (annotations / res).is_dir() and not _frame_files(images / res):
            return images / res, annotations / res
    return images, annotations


class DavisDataset:
    """The annotated clips of a DAVIS-layout folder (all of them, or those named in ``clips``), read when
    asked for. Every frame needs an annotation PNG of the same stem and size. ``clip[i]`` -> :class:`VideoClip`
    whose ``video`` is the clip's frame folder."""

    def __init__(self, root: Union[str, os.PathLike], clips: Sequence[str] | None = None) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root: expected a folder path, got {type(root).__name__}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"DAVIS folder not found: {self.root}")
        self.images_dir, self.annotations_dir = _resolve_dirs(self.root)
        found = sorted((d.name for d in self.images_dir.iterdir() if d.is_dir()), key=_natural_key)
        if clips is None:
            names = found
        else:
            if isinstance(clips, str) or not all(isinstance(c, str) for c in clips):
                raise TypeError(f"clips: expected a list of clip names, got {clips!r}")
            missing = [c for c in clips if c not in found]
            if missing:
                raise ValueError(f"clips not found in {self.images_dir}: {missing}")
            names = list(clips)
        if not names:
            raise ValueError(f"no clips in {self.images_dir}: expected one folder of frames per clip")
        self.names = names
        self.bad_samples: list = []

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> VideoClip:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.names):
            raise IndexError(f"clip index {i!r} out of range 0..{len(self.names) - 1}")
        return read_davis_clip(self.images_dir / self.names[i], self.annotations_dir / self.names[i])


def read_davis_clip(frames_dir: Union[str, Path], annotations_dir: Union[str, Path]) -> VideoClip:
    """One clip: its frame folder and its annotation folder (one PNG per frame, same stem and size)."""
    frames_dir, annotations_dir = Path(frames_dir), Path(annotations_dir)
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"frame folder not found: {frames_dir}")
    if not annotations_dir.is_dir():
        raise FileNotFoundError(f"annotation folder not found: {annotations_dir} (for the frames in {frames_dir})")
    files = _frame_files(frames_dir)
    if not files:
        raise ValueError(f"no frames in {frames_dir}: expected files ending in {', '.join(FRAME_SUFFIXES)}")
    ann_files = [annotations_dir / (p.stem + ".png") for p in files]
    missing = [p.name for p in ann_files if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{annotations_dir}: no annotation PNG for {len(missing)} of {len(files)} frames ({shown})")
    size = None
    for p in files:  # headers only: every frame readable and of one size
        try:
            with Image.open(p) as im:
                s = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"unreadable frame {p}: {e}") from e
        if size is None:
            size = s
        elif s != size:
            raise ValueError(f"frame {p} is {s[0]}x{s[1]} but {files[0].name} is {size[0]}x{size[1]}: all frames of a "
                             "clip must have one size")
    labels = []
    for p in ann_files:
        lab = read_annotation(p)
        if lab.shape != (size[1], size[0]):
            raise ValueError(f"annotation {p} is {lab.shape[1]}x{lab.shape[0]} but the frames are {size[0]}x{size[1]}")
        labels.append(lab)
    dtype = np.uint16 if any(lab.dtype == np.uint16 for lab in labels) else np.uint8
    stack = np.stack([lab.astype(dtype) for lab in labels])
    ids = [int(v) for v in np.unique(stack) if v != 0 and v != VOID_LABEL]
    return VideoClip(name=frames_dir.name, video=frames_dir, labels=stack, obj_ids=ids,
                     frame_names=[p.name for p in files])


def write_davis_clip(root: Union[str, os.PathLike], name: str, frames: np.ndarray, labels: np.ndarray,
                     jpeg_quality: int = 95) -> Path:
    """Write a clip as ``root/JPEGImages/<name>/00000.jpg ...`` and ``root/Annotations/<name>/00000.png ...``.

    ``frames``: ``T x H x W x 3`` uint8; ``labels``: ``T x H x W`` integer label maps in 0..255 (0 background),
    or ``T x K x H x W`` bool masks, pairwise disjoint (object k gets value k + 1). Annotations are palette
    PNGs with the DAVIS colours. Every file is written atomically; returns the frame folder."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root: expected a folder path, got {type(root).__name__}")
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"name: expected a clip name without path separators, got {name!r}")
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError("frames: expected a T x H x W x 3 uint8 array, got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")
    if frames.shape[0] == 0:
        raise ValueError("frames: the clip has no frames")
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels: expected a numpy array, got {type(labels).__name__}")
    if labels.ndim == 4 and labels.dtype == bool:
        if labels.shape[1] > 254:
            raise ValueError(f"labels: at most 254 objects fit a palette PNG, got {labels.shape[1]}")
        if (labels.sum(axis=1) > 1).any():
            raise ValueError("labels: the T x K x H x W masks overlap; expected pairwise disjoint masks")
        lab = np.zeros(labels.shape[:1] + labels.shape[2:], dtype=np.uint8)
        for k in range(labels.shape[1]):
            lab[labels[:, k]] = k + 1
        labels = lab
    if (labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer)
            or (labels.size and (labels.min() < 0 or labels.max() > 255))):
        raise ValueError("labels: expected T x H x W integer labels in 0..255 or T x K x H x W bool masks, got "
                         f"{labels.dtype} {labels.shape}")
    if labels.shape != frames.shape[:3]:
        raise ValueError(f"labels: expected shape {frames.shape[:3]} (the frames' T x H x W), got {labels.shape}")
    if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality: expected an int in 1..100, got {jpeg_quality!r}")
    frame_dir, ann_dir = Path(root) / "JPEGImages" / name, Path(root) / "Annotations" / name
    frame_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    palette = davis_palette().reshape(-1).tolist()
    for t in range(frames.shape[0]):
        with atomic_path(frame_dir / f"{t:05d}.jpg") as tmp:
            Image.fromarray(frames[t]).save(tmp, format="JPEG", quality=jpeg_quality)
        lab_t = np.ascontiguousarray(labels[t], dtype=np.uint8)
        ann = Image.frombytes("P", (lab_t.shape[1], lab_t.shape[0]), lab_t.tobytes())
        ann.putpalette(palette)
        with atomic_path(ann_dir / f"{t:05d}.png") as tmp:
            ann.save(tmp, format="PNG")
    return frame_dir


def _synthetic_video(spec: str) -> Any:
    from samforge.data.synthetic_video import SyntheticVideoDataset  # here: synthetic_video imports this module

    m = _SYNTHETIC_VIDEO.fullmatch(spec)
    if m is None:
        raise ValueError(f"bad synthetic video spec {spec!r}: expected {ACCEPTED_VIDEO_FORMS}")
    d = SYNTHETIC_VIDEO_DEFAULTS
    n = int(m[1]) if m[1] else d["n"]
    h = int(m[2]) if m[2] else d["size"]
    w = int(m[3]) if m[3] else h
    frames = int(m[4]) if m[4] else d["frames"]
    seed = int(m[5]) if m[5] else d["seed"]
    if n < 1 or min(h, w) < 32 or frames < 1:
        raise ValueError(f"bad synthetic video spec {spec!r}: N and FRAMES must be >= 1 and the size >= 32")
    return SyntheticVideoDataset(n, num_frames=frames, image_size=(h, w), seed=seed)


def open_video_dataset(spec: Union[str, os.PathLike]) -> Any:
    """A :class:`DavisDataset` for a DAVIS-layout folder, or a ``SyntheticVideoDataset`` for
    ``synthetic-video[:N[:SIZE[:FRAMES[:SEED]]]]`` (defaults 8 clips, 256, 16 frames, seed 0). Both have
    ``names``, ``len()`` and ``[i] -> VideoClip``."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"video dataset spec must be a str or path, got {type(spec).__name__}")
    if isinstance(spec, str) and (spec == "synthetic-video" or spec.startswith("synthetic-video:")):
        return _synthetic_video(spec)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"video dataset not found: {path} (accepted: {ACCEPTED_VIDEO_FORMS})")
    if not path.is_dir():
        raise ValueError(f"cannot read the file {path} as a video dataset: expected {ACCEPTED_VIDEO_FORMS}")
    return DavisDataset(path)

"""Video frames for SAM 2 tracking, read lazily: a folder of JPEG/PNG frames, a video file, or an array.

Frames are preprocessed as the official ``load_video_frames`` does (PIL resize to ``S x S``, ``/ 255``, ImageNet
mean/std), so features are identical, but only when a frame is used: a 1000-frame 1024 clip held as float32
would take 12 GB, which is where the official predictor runs out of memory. Video files are decoded with PyAV
(``pip install av``: FFmpeg's own bindings with wheels for every platform; the official reader, decord, has no
wheels for recent Pythons), sequentially and with bounded memory (see ``_VideoFileFrames``).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from samforge.predict.sam2_transforms import IMAGENET_MEAN, IMAGENET_STD

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
# threads decoding and resizing frames ahead (PIL releases the GIL): one per two cores, at most 4
PREFETCH_WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))


def _natural_key(name: str) -> tuple:
    """Frames sort by the numbers in their names ("2.jpg" before "10.jpg"), then by name."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """The JPEG/PNG frames of a folder, in frame order (numeric stems as the official reader sorts them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist or is not a folder")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    if not files:
        raise ValueError(f"no frames in {folder}: expected image files ending in {', '.join(FRAME_SUFFIXES)}")
    return sorted(files, key=lambda p: _natural_key(p.name))


def _normalization_lut() -> np.ndarray:
    """``3 x 256`` float32: the normalised value of each uint8 level per channel, computed exactly as the
    official loader does it per pixel (``float32(v / 255.0)`` in float64 first, then ``(x - mean) / std``)."""
    levels = torch.from_numpy(np.arange(256) / 255.0).float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None]
    return ((levels[None, :] - mean) / std).numpy()


_LUT = _normalization_lut()


def normalize_frame(rgb: np.ndarray | Image.Image, image_size: int) -> torch.Tensor:
    """An ``H x W x 3`` uint8 frame -> ``3 x S x S`` float32, resized and normalised as the official loader
    (bit-identical; a per-level lookup instead of float64 arithmetic on every pixel)."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    arr = np.asarray(img.convert("RGB").resize((image_size, image_size)))
    out = np.empty((3, image_size, image_size), dtype=np.float32)
    for c in range(3):
        np.take(_LUT[c], arr[..., c], out=out[c])
    return torch.from_numpy(out)


class VideoFrames(Sequence[torch.Tensor]):
    """A clip's frames, preprocessed on access and kept in a small LRU cache.

    ``frames[i]`` is ``3 x S x S`` float32 on ``device``. ``video_height`` / ``video_width`` are the original
    size. ``cache_size`` preprocessed frames are kept (``None``: all, i.e. the official eager behaviour).
    """

    def __init__(self, source: Any, image_size: int, device: torch.device | str = "cpu",
                 cache_size: int | None = 8) -> None:
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if cache_size is not None and (not isinstance(cache_size, int) or cache_size < 1):
            raise ValueError(f"cache_size must be None or an int >= 1, got {cache_size!r}")
        self.image_size = image_size
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._reader = _reader_for(source)
        self.video_height, self.video_width = self._reader.size
        self.names = self._reader.names

    def __len__(self) -> int:
        return len(self._reader)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"frame index must be an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"frame index {index} out of range for a clip of {n} frames")
        index = int(index) % n
        with self._lock:
            frame = self._cache.get(index)
            if frame is not None:
                self._cache.move_to_end(index)
                return frame
            pending = self._pending.pop(index, None)
        frame = pending.result() if pending is not None else self._load(index)
        with self._lock:
            self._cache[index] = frame
            while self.cache_size is not None and len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return frame

    def _load(self, index: int) -> torch.Tensor:
        return normalize_frame(self._reader.read(index), self.image_size).to(self.device)

    def prefetch(self, indices: int | Sequence[int]) -> None:
        """Start preprocessing frames in a background thread (indices out of range, cached or already
        pending are ignored). Frames of a video file are decoded in order, so only folders and arrays
        are read ahead."""
        if isinstance(self._reader, _VideoFileFrames):
            return
        for index in [indices] if isinstance(indices, (int, np.integer)) else indices:
            with self._lock:
                if not 0 <= index < len(self) or index in self._cache or index in self._pending:
                    continue
                if len(self._pending) >= 2 * PREFETCH_WORKERS:
                    return
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=PREFETCH_WORKERS, thread_name_prefix="samforge-frames")
                self._pending[int(index)] = self._pool.submit(self._load, int(index))

    def rgb(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``H x W x 3`` uint8 at the video's own resolution (for overlays)."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame index {index} out of range for a clip of {len(self)} frames")
        return np.asarray(self._reader.read(index).convert("RGB"))


class _FolderFrames:
    def __init__(self, folder: Path) -> None:
        self.files = list_frame_files(folder)
        self.names = [p.name for p in self.files]
        sizes = {}
        for p in self.files:  # headers only: every frame readable and the same size, named when not
            try:
                with Image.open(p) as im:
                    sizes[p] = im.size
            except Exception as e:  # noqa: BLE001 - PIL raises several types for bad files
                raise ValueError(f"unreadable frame {p}: {e}") from e
        w, h = sizes[self.files[0]]
        for p, s in sizes.items():
            if s != (w, h):
                raise ValueError(f"frame {p} is {s[0]}x{s[1]} but {self.files[0].name} is {w}x{h}: "
                                 "all frames of a clip must have one size")
        self.size = (h, w)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> Image.Image:
        try:
            with Image.open(self.files[index]) as im:
                return im.convert("RGB")
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"unreadable frame {self.files[index]}: {e}") from e


class _ArrayFrames:
    def __init__(self, frames: np.ndarray) -> None:
        if frames.ndim == 3:  # T x H x W grey
            frames = np.repeat(frames[..., None], 3, axis=-1)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError("an array clip must be uint8 T x H x W x 3 (or T x H x W), got "
                             f"{frames.dtype} of shape {frames.shape}")
        if frames.shape[0] == 0:
            raise ValueError(f"the clip has no frames (array of shape {frames.shape})")
        self.frames = frames
        self.size = frames.shape[1:3]
        self.names = [f"{i:05d}" for i in range(len(frames))]

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, index: int) -> Image.Image:
        return Image.fromarray(self.frames[index])


class _VideoFileFrames:
    """A video file decoded with PyAV, sequentially. A first pass counts the frames (and finds an unreadable
    file at once); reads then decode forward from where the last one stopped, and a read behind it decodes
    again from the start, keeping the ``chunk`` frames before the target so that a reverse pass re-decodes
    once per chunk. Memory is bounded by the chunk (uint8 at video resolution), whatever the length."""

    def __init__(self, path: Path, chunk: int = 64) -> None:
        try:
            import av  # noqa: F401
        except ImportError as e:
            raise ImportError("reading video files needs PyAV: pip install av (or give a folder of frames)") from e
        self.path, self.chunk = path, chunk
        self._container = None
        self._iter = None
        self._next = 0  # index of the frame the open decoder gives next
        self._recent: OrderedDict[int, np.ndarray] = OrderedDict()
        count, size = 0, None
        for frame in self._decode_from_start():
            size = size or frame.shape[:2]
            count += 1
        self._close()
        if count == 0:
            raise ValueError(f"video {path} has no frames")
        self.size, self._count = size, count
        self.names = [f"{i:05d}" for i in range(count)]

    def _decode_from_start(self):
        """A fresh decoder (the previous one closed) as a generator of ``H x W x 3`` uint8 frames."""
        import av

        self._close()
        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise ValueError(f"unreadable video {self.path}: {e}") from e
        container = self._container

        def frames():
            try:
                for f in container.decode(video=0):
                    yield f.to_ndarray(format="rgb24")
            except av.error.FFmpegError as e:
                raise ValueError(f"unreadable video {self.path}: {e}") from e

        return frames()

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._iter = None, None

    def __len__(self) -> int:
        return self._count

    def read(self, index: int) -> Image.Image:
        if index in self._recent:
            return Image.fromarray(self._recent[index])
        if self._iter is None or index < self._next:
            self._iter = self._decode_from_start()
            self._next = 0
        while self._next <= index:
            try:
                frame = next(self._iter)
            except StopIteration as e:
                raise ValueError(f"video {self.path} ended before frame {index}") from e
            if self._next > index - self.chunk:
                self._recent[self._next] = frame
                while len(self._recent) > self.chunk:
                    self._recent.popitem(last=False)
            self._next += 1
        return Image.fromarray(self._recent[index])


def _reader_for(source: Any):
    if isinstance(source, np.ndarray):
        return _ArrayFrames(source)
    if isinstance(source, (list, tuple)) and source and all(isinstance(f, np.ndarray) for f in source):
        return _ArrayFrames(np.stack(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _FolderFrames(path)
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            return _VideoFileFrames(path)
        if path.is_file():
            raise ValueError(f"{path} is not a video: expected a folder of frames or a file ending in "
                             f"{', '.join(VIDEO_SUFFIXES)}")
        raise FileNotFoundError(f"video {path} does not exist")
    raise TypeError("video_path must be a folder of frames, a video file, or a uint8 T x H x W x 3 array; got "
                    f"{type(source).__name__}")

"""MedSAM's ``.npz`` format: arrays ``imgs`` and ``gts`` (instance / class labels, 0 = background).

* 2D: ``imgs`` HxW or HxWx3, ``gts`` HxW; one sample per file, named after the file.
* 3D: ``imgs`` DxHxW (or DxHxWx3), ``gts`` DxHxW; every slice with at least one object is a sample,
  named ``file.npz[z]``. Slices without objects are not samples (and not bad ones either).

Intensities other than uint8 are scaled to 0-255 by the min/max of the whole file (MedSAM's
preprocessing); grayscale is repeated to three channels. Each distinct nonzero value of a slice's
``gts`` is one object, in increasing label order.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samforge.data.bad_samples import natural_key, raise_if_no_samples
from samforge.data.sample import BadSample, Sample


@dataclass
class _Entry:
    path: Path
    z: int | None  # slice of a 3D volume, None for a 2D file
    labels: np.ndarray


def _imgs_shape(path: Path, z) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``imgs`` from its .npy header, without decompressing the array."""
    with zipfile.ZipFile(path) as zf, zf.open("imgs.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            return shape, dtype
        if version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            return shape, dtype
    arr = z["imgs"]  # an unusual header version: read the array itself
    return arr.shape, arr.dtype


def _check_shapes(img_shape: tuple[int, ...], gts_shape: tuple[int, ...]) -> str | None:
    """Why ``imgs``/``gts`` shapes do not fit together, or None if they do."""
    if len(gts_shape) not in (2, 3):
        return f"gts must be HxW or DxHxW, got shape {gts_shape}"
    if img_shape not in (gts_shape, gts_shape + (1,), gts_shape + (3,)):
        what = "HxW or HxWx3" if len(gts_shape) == 2 else "DxHxW or DxHxWx3"
        return f"imgs shape {img_shape} does not match gts {gts_shape}: expected imgs {what} with the same sizes"
    return None


def to_uint8_rgb(imgs: np.ndarray, lo: float, hi: float, gray: bool) -> np.ndarray:
    """Scale ``imgs`` to uint8 by ``lo``/``hi`` (unless it already is uint8) and make it RGB: repeat a
    grayscale array (``gray``) to three channels, or a channels-last one with one channel."""
    if imgs.dtype != np.uint8:
        arr = imgs.astype(np.float64)
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        imgs = np.round(np.clip(arr, 0, 255)).astype(np.uint8)
    if not gray:
        if imgs.shape[-1] == 3:
            return imgs.copy()  # never hand out a view of the cached volume
        imgs = imgs[..., 0]
    return np.repeat(imgs[..., None], 3, axis=-1)


class NpzDataset:
    """One ``.npz`` file, or every ``.npz`` under a folder (recursively, in natural name order).
    Opening reads each file's ``gts`` once and ``imgs``' header; bad files go to ``bad_samples``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"npz file or folder not found: {self.path}")
        if self.path.is_dir():
            files = sorted(self.path.rglob("*.npz"), key=lambda p: natural_key(str(p.relative_to(self.path))))
        elif self.path.suffix.lower() == ".npz":
            files = [self.path]
        else:
            raise ValueError(f"expected a .npz file or a folder of .npz files, got {self.path}")
        self.bad_samples: list[BadSample] = []
        self.dropped_objects = 0  # label maps have no empty objects; kept for a uniform interface
        self._entries: list[_Entry] = []
        self._cache: tuple[Path, tuple] | None = None
        for f in files:
            reason = self._scan(f)
            if reason is not None:
                self.bad_samples.append(BadSample(str(f), reason))
        raise_if_no_samples(self.path, len(self._entries), self.bad_samples, what=".npz samples")

    def _scan(self, path: Path) -> str | None:
        """Add the file's samples; return why it is bad, or None."""
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("imgs", "gts") if k not in z.files]
                if missing:
                    return f"missing array(s) {missing}: a MedSAM npz has 'imgs' and 'gts', found {z.files}"
                gts = z["gts"]
                img_shape, img_dtype = _imgs_shape(path, z)
        except Exception as e:  # not a zip, truncated, pickled objects, bad header: all mean unreadable
            return f"unreadable npz ({type(e).__name__}: {e})"
        if img_dtype.kind not in "biuf":
            return f"imgs must be numeric, got dtype {img_dtype}"
        if gts.dtype.kind == "f" and np.array_equal(gts, np.round(gts)):
            gts = gts.astype(np.int64)
        if gts.dtype.kind not in "biu":
            return f"gts must hold integer labels, got dtype {gts.dtype}"
        reason = _check_shapes(tuple(img_shape), gts.shape)
        if reason is not None:
            return reason
        if gts.ndim == 2:
            labels = np.unique(gts[gts != 0]).astype(np.int64)
            if len(labels) == 0:
                return "gts has no object (all background)"
            self._entries.append(_Entry(path, None, labels))
            return None
        flat = gts.reshape(len(gts), -1)
        zs, idx = np.nonzero(flat)
        if len(zs) == 0:
            return f"gts has no object in any of its {len(gts)} slices"
        values = flat[zs, idx].astype(np.int64)
        span = int(values.max()) - int(values.min()) + 1
        pairs = np.unique(zs.astype(np.int64) * span + (values - values.min()))  # sorted by slice, then label
        for z in np.unique(pairs // span):
            sel = pairs[pairs // span == z]
            self._entries.append(_Entry(path, int(z), sel % span + values.min()))
        return None

    @property
    def names(self) -> list[str]:
        return [self._name(e) for e in self._entries]

    @property
    def case_names(self) -> list[str]:
        """The case of each sample: its file (a split by case keeps a volume's slices on one side)."""
        return [str(e.path) for e in self._entries]

    @staticmethod
    def _name(e: _Entry) -> str:
        return str(e.path) if e.z is None else f"{e.path}[{e.z}]"

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict:  # DataLoader workers get the index, not the cached volume
        return {**self.__dict__, "_cache": None}

    def _load(self, path: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``imgs``, ``gts`` and the intensity range of one file; the last file stays cached, so reading
        the slices of a volume in order decompresses it once."""
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1]
        try:
            with np.load(path, allow_pickle=False) as z:
                imgs, gts = z["imgs"], z["gts"]
        except Exception as err:  # see _scan
            raise ValueError(f"{path}: unreadable npz ({type(err).__name__}: {err})") from err
        if _check_shapes(imgs.shape, gts.shape) is not None:
            raise ValueError(f"{path}: changed on disk since the dataset was opened")
        loaded = (imgs, gts, float(imgs.min()), float(imgs.max()))
        self._cache = (path, loaded)
        return loaded

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self._entries):
            raise IndexError(f"sample index {i} out of range 0..{len(self._entries) - 1}")
        e = self._entries[i]
        imgs, gts, lo, hi = self._load(e.path)
        image = imgs if e.z is None else imgs[e.z]
        image = to_uint8_rgb(image, lo, hi, gray=imgs.ndim == gts.ndim)  # min/max of the whole volume
        if e.z is not None:
            gts = gts[e.z]
        masks = gts[None] == e.labels.astype(gts.dtype)[:, None, None]
        if not masks.any(axis=(1, 2)).all():
            raise ValueError(f"{e.path}: changed on disk since the dataset was opened")
        return Sample(image, masks, name=self._name(e))

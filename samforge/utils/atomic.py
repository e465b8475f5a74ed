"""Atomic file writes: write to a temporary file beside the target, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; on success it replaces ``path``.

    The caller writes the complete file to the yielded path. If the block raises, the
    temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flush the bytes the caller wrote to disk
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (readers see the old file or the new one)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes expected bytes, got {type(data).__name__}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def save_png(array: np.ndarray, path: PathLike) -> None:
    """Save a uint8 array of shape HxW, HxWx3 or HxWx4 as a PNG, atomically."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"save_png expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expected dtype uint8, got {array.dtype}")
    ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if not ok or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"save_png expected shape HxW, HxWx3 or HxWx4 with H, W > 0, got {array.shape}"
        )
    image = Image.fromarray(np.ascontiguousarray(array))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")

"""Atomic file writes: write to a temporary file beside the target, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np
from PIL import Image

PathLike = Union[str, "os.PathLike[str]"]
# the temporary name atomic_path gives ``name``: ".<name>.tmp-<pid>-<8 hex digits>"
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)-(?P<hex>[0-9a-f]{8})$")
_IMPORTED = time.time()  # a temporary of this process older than this is from an earlier process with our pid


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; on success it replaces ``path``.

    The caller writes the complete file to the yielded path. If the block raises, the
    temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    tmp = target.with_name(temporary_name(target.name))
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # flush the bytes the caller wrote to disk
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def temporary_name(name: str) -> str:
    """The name of a temporary file for ``name`` (matched by ``TEMP_NAME``): hidden, with this process's id."""
    return f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def process_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, killed and not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    except OverflowError:  # no process has such an id
        return False
    with contextlib.suppress(OSError, IndexError):  # Linux: state "Z" in /proc/<pid>/stat
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def remove_stale_temporaries(folders: PathLike | Iterable[PathLike], names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporaries that :func:`atomic_path` left in ``folders`` when its process was killed; returns
    them. Only files named exactly as it names them (``TEMP_NAME``) are touched, only of ``names`` when given,
    and never those of a process still running (nor this process's own, unless older than it)."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    if isinstance(names, (str, bytes)):
        raise TypeError(f"names must be a list of file names (or None), got the single string {names!r}")
    wanted = None if names is None else set(names)
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = TEMP_NAME.match(entry.name)
            if m is None or (wanted is not None and m["name"] not in wanted) or not entry.is_file():
                continue
            pid = int(m["pid"])
            try:
                stale = (entry.stat().st_mtime < _IMPORTED) if pid == os.getpid() else not process_alive(pid)
                if stale:
                    entry.unlink()
                    removed.append(entry)
            except FileNotFoundError:  # its writer finished or removed it meanwhile
                continue
    return removed


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

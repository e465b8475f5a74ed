"""The annotator's image folder: a fixed list of file names (the only image files the server serves),
their sizes, thumbnails, and the bytes a browser shows.

Names are looked up in the list made when the folder is scanned, never joined onto a path from a
request, so ``../`` or an absolute path in a URL cannot reach another file. Symbolic links that lead
out of the folder are left out of the list.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from samforge.data.bad_samples import natural_key
from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb

BROWSER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # shown as they are when RGB or grey
BROWSER_MODES = ("RGB", "L")
EXIF_ORIENTATION = 0x0112
MAX_THUMBNAILS = 4096


@dataclass(frozen=True)
class ImageEntry:
    name: str  # file name inside the folder (the id used in URLs)
    path: Path
    height: int
    width: int
    as_is: bool  # the browser can show the file itself and sees what the model sees

    @property
    def stem(self) -> str:
        return Path(self.name).stem


class ImageFolder:
    """The images at the top level of ``root`` (sorted naturally by name; hidden files, folders, other
    suffixes and unreadable images are skipped and listed in ``skipped``)."""

    def __init__(self, root: str | Path) -> None:
        if not isinstance(root, (str, Path)):
            raise TypeError(f"root must be a folder path (str or Path), got {type(root).__name__}")
        self.root = Path(root).resolve()
        if not self.root.exists():
            raise FileNotFoundError(f"images folder not found: {root}")
        if not self.root.is_dir():
            raise ValueError(f"IMAGES_DIR must be a folder of images, got the file {root}")
        self.skipped: list[tuple[str, str]] = []
        entries: list[ImageEntry] = []
        stems: dict[str, str] = {}
        for p in sorted(self.root.iterdir(), key=lambda p: natural_key(p.name)):
            if p.name.startswith(".") or p.is_dir():
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                self.skipped.append((p.name, f"not an image (images end in {', '.join(IMAGE_SUFFIXES)})"))
                continue
            if not p.resolve().is_relative_to(self.root):
                self.skipped.append((p.name, "a link to a file outside the folder"))
                continue
            if p.stem in stems:
                self.skipped.append((p.name, f"same name stem as {stems[p.stem]} (labels are saved per stem)"))
                continue
            try:
                with Image.open(p) as im:
                    w, h = im.size
                    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                    as_is = (p.suffix.lower() in BROWSER_SUFFIXES and im.mode in BROWSER_MODES
                             and orientation in (None, 1))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                self.skipped.append((p.name, f"unreadable image ({type(e).__name__}: {e})"))
                continue
            stems[p.stem] = p.name
            entries.append(ImageEntry(p.name, p, int(h), int(w), as_is))
        if not entries:
            raise ValueError(f"no readable images in {root}: expected files ending in {', '.join(IMAGE_SUFFIXES)}"
                             + (f"; skipped: {'; '.join(f'{n}: {why}' for n, why in self.skipped[:5])}"
                                if self.skipped else " (the folder is empty)"))
        self.entries = entries
        self._by_name = {e.name: e for e in entries}
        self._index = {e.name: i for i, e in enumerate(entries)}
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def get(self, name: str) -> ImageEntry:
        """The entry named ``name``; ``KeyError`` (saying which names exist) if it is not in the list."""
        if not isinstance(name, str) or name not in self._by_name:
            raise KeyError(f"no image named {name!r} in {self.root} ({len(self.entries)} images)")
        return self._by_name[name]

    def neighbour(self, name: str, step: int) -> str | None:
        """The name ``step`` places after ``name`` in the list (before, if negative), or None past the ends."""
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        i = self._index[self.get(name).name] + step
        return self.entries[i].name if 0 <= i < len(self.entries) else None

    def read(self, name: str) -> np.ndarray:
        """The image as the model sees it: ``H x W x 3`` uint8 RGB."""
        return read_image_rgb(self.get(name).path)

    def display_bytes(self, name: str) -> tuple[bytes | Path, str]:
        """(the file, or PNG bytes of what the model sees, media type) for the browser."""
        entry = self.get(name)
        if entry.as_is:
            suffix = entry.path.suffix.lower().lstrip(".")
            media = {"jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(suffix, f"image/{suffix}")
            return entry.path, media
        buf = io.BytesIO()
        Image.fromarray(self.read(name)).save(buf, format="PNG")
        return buf.getvalue(), "image/png"

    def thumbnail(self, name: str, size: int = 128) -> bytes:
        """A JPEG whose longer side is ``size`` pixels (kept in memory once made)."""
        if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 512:
            raise ValueError(f"thumbnail size must be an int in [16, 512], got {size!r}")
        key = (self.get(name).name, size)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        im = Image.fromarray(self.read(name))
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > MAX_THUMBNAILS:
                self._thumbs.popitem(last=False)
        return data

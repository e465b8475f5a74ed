"""A folder of images with instance masks: ``root/images/<stem>.<ext>`` beside either

* ``root/masks/<stem>.png``: a label map, one value per instance, 0 = background (8- or 16-bit grey or
  palette; in an RGB(A) label image each distinct colour is an instance, black or transparent = background);
  also named ``<stem>_mask.png``, ``<stem>_seg.png``, ``<stem>_label.png`` or ``<stem>_gt.png``,
* ``root/masks/<stem>/*.png``: one binary PNG per object (nonzero = object), in natural name order.

``labels/`` is accepted in place of ``masks/``. This is what ``samforge synth`` writes. A mask file that pairs
with no image is reported (by name) as a bad sample.

Stored prompts (``root/annotations/<stem>.json`` or ``root/dataset_info.json``, see
:mod:`samforge.data.stored_prompts`) come with each sample as ``Sample.prompts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from samforge.data.bad_samples import natural_key, raise_if_no_samples
from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb
from samforge.data.sample import BadSample, Sample
from samforge.data.stored_prompts import (ANNOTATIONS_DIR, DATASET_INFO, match_prompts, read_annotation_file,
                                          read_dataset_info)

MASK_DIR_NAMES = ("masks", "labels")
MASK_NAME_SUFFIXES = ("", "_mask", "_seg", "_label", "_gt")  # masks/<stem><suffix>.png pairs with images/<stem>.*
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")  # lossless only: a JPEG label map is not a label map


@dataclass
class _Entry:
    image: Path
    mask: Path  # a label file, or the folder of per-object files
    labels: np.ndarray | None  # label values (or packed RGB colours) kept, for a label file
    object_files: list[Path] | None  # non-empty object files, for a per-object folder
    prompts: list | None = None  # a StoredPrompt or None per object, when the dataset stores prompts for the image


def read_label_map(path: Path) -> np.ndarray:
    """A mask file as an HxW integer array (0 = background). RGB(A) colours are packed into one
    integer per pixel (transparent pixels count as background). Raises ``ValueError`` if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA"):
                rgba = np.asarray(im.convert("RGBA")).astype(np.uint32)
                lab = (rgba[..., 0] << 16) | (rgba[..., 1] << 8) | rgba[..., 2]
                lab[rgba[..., 3] == 0] = 0
                return lab
            if mode == "LA":
                return np.asarray(im.getchannel("L"))
            if mode in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B"):
                arr = np.asarray(im)
                return arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder == ">" else arr
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, EOFError, struct.error) on bad files
        raise ValueError(f"unreadable mask ({type(e).__name__}: {e})") from e
    raise ValueError(f"unsupported mask mode {mode!r}: expected 8/16-bit grey, palette or RGB labels")


def labels_present(lab: np.ndarray) -> np.ndarray:
    """Sorted nonzero values occurring in a label map."""
    flat = lab.ravel()
    if flat.dtype.kind == "b":
        return np.array([1], dtype=np.int64) if flat.any() else np.zeros(0, dtype=np.int64)
    if flat.dtype.kind == "u" and flat.dtype.itemsize <= 2:
        values = np.flatnonzero(np.bincount(flat))
    else:
        values = np.unique(flat)
    return values[values != 0].astype(np.int64)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header; the file is checked for truncation where the format allows
    (PNG chunk CRCs). Raises ``ValueError`` if the file is not a readable image."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.verify()
    except Exception as e:  # see read_label_map
        raise ValueError(f"unreadable image ({type(e).__name__}: {e})") from e
    return h, w


def _image_stem(mask_stem: str) -> str:
    """The image name a mask file's name asks for: ``case1_mask`` -> ``case1``."""
    return next((mask_stem[: -len(n)] for n in MASK_NAME_SUFFIXES if n and mask_stem.endswith(n) and len(mask_stem)
                 > len(n)), mask_stem)


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in suffixes), key=lambda p: natural_key(p.name))


class MaskFolderDataset:
    """Images and instance masks in a folder (see the module docstring). Opening scans every image
    header and reads every mask once; unusable samples go to ``bad_samples`` and are skipped, empty
    per-object masks are dropped and counted in ``dropped_objects``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        image_dir = self.root / "images"
        mask_dir = next((self.root / n for n in MASK_DIR_NAMES if (self.root / n).is_dir()), None)
        if not image_dir.is_dir() or mask_dir is None:
            raise ValueError(f"{self.root}: expected images/ and masks/ (or labels/) folders inside, "
                             f"found {sorted(p.name for p in self.root.iterdir())}")
        self.mask_dir = mask_dir
        info = self.root / DATASET_INFO
        self._info = read_dataset_info(info) if info.is_file() else {}  # stored prompts by image stem
        self.bad_samples: list[BadSample] = []
        self.dropped_objects = 0
        self._entries: list[_Entry] = []
        self._paired: dict[str, Path] = {}  # image stem -> the mask file or folder it pairs with
        seen: dict[str, Path] = {}
        for image in _files(image_dir, IMAGE_SUFFIXES):
            if image.stem in seen:
                self._bad(image, f"another image has the same name stem: {seen[image.stem].name}")
                continue
            seen[image.stem] = image
            entry = self._scan(image)
            if entry is not None:
                self._entries.append(entry)
        for m in sorted(mask_dir.iterdir(), key=lambda p: natural_key(p.name)):  # masks nobody reads: say so
            if m.name.startswith(".") or not (m.is_dir() or m.suffix.lower() in MASK_SUFFIXES):
                continue
            stem = m.name if m.is_dir() else m.stem
            base = next((stem[: len(stem) - len(n)] for n in MASK_NAME_SUFFIXES
                         if stem.endswith(n) and stem[: len(stem) - len(n)] in seen), None)
            paired = self._paired.get(base) if base is not None else None
            if base is None:
                self._bad(m, f"no image with this name in images/: expected images/{_image_stem(stem)}.* "
                             f"({', '.join(IMAGE_SUFFIXES)})")
            elif paired is not None and paired != m:
                self._bad(m, f"not used: {seen[base].name} pairs with {mask_dir.name}/{paired.name}")
        for stem in sorted(set(self._info) - set(seen), key=natural_key):
            self._bad(info, f"stored prompts for {stem!r}, which is not an image in images/")
        raise_if_no_samples(self.root, len(self._entries), self.bad_samples, what=f"images in {image_dir}")

    def _bad(self, path: Path, reason: str) -> None:
        self.bad_samples.append(BadSample(str(path), reason))

    def _scan(self, image: Path) -> _Entry | None:
        try:
            hw = image_size(image)
        except ValueError as e:
            return self._bad(image, str(e))
        label_file = next((f for f in (self.mask_dir / (image.stem + n + s) for n in MASK_NAME_SUFFIXES
                                       for s in MASK_SUFFIXES) if f.is_file()), None)
        if label_file is not None:
            self._paired[image.stem] = label_file
            try:
                lab = read_label_map(label_file)
            except ValueError as e:
                return self._bad(label_file, str(e))
            if lab.shape != hw:
                return self._bad(label_file, f"mask size {lab.shape[1]}x{lab.shape[0]} (WxH) differs from "
                                             f"image {image.name} {hw[1]}x{hw[0]}")
            labels = labels_present(lab)
            if len(labels) == 0:
                return self._bad(label_file, "mask has no object (all background)")
            return self._with_prompts(_Entry(image, label_file, labels, None), hw)
        folder = self.mask_dir / image.stem
        if not folder.is_dir():
            where = f"{self.mask_dir.name}/{image.stem}"
            return self._bad(image, f"no mask: expected {where}.png (or {image.stem}_mask.png, _seg, _label, _gt) "
                                    f"or {where}/*.png")
        self._paired[image.stem] = folder
        kept = []
        for f in _files(folder, MASK_SUFFIXES):
            try:
                m = read_label_map(f)
            except ValueError as e:
                return self._bad(f, str(e))
            if m.shape != hw:
                return self._bad(f, f"mask size {m.shape[1]}x{m.shape[0]} (WxH) differs from "
                                    f"image {image.name} {hw[1]}x{hw[0]}")
            if m.any():
                kept.append(f)
            else:
                self.dropped_objects += 1
        if not kept:
            return self._bad(folder, "no non-empty object mask in the folder")
        return self._with_prompts(_Entry(image, folder, None, kept), hw)

    def _with_prompts(self, entry: _Entry, hw: tuple[int, int]) -> _Entry | None:
        """``entry`` with its stored prompts (``annotations/<stem>.json``, else ``dataset_info.json``), or None
        (a bad sample) when they are malformed."""
        stem = entry.image.stem
        per_image = self.root / ANNOTATIONS_DIR / f"{stem}.json"
        try:
            if per_image.is_file():
                objects, where = read_annotation_file(per_image), str(per_image)
            elif stem in self._info:
                objects, where = self._info[stem], f"{self.root / DATASET_INFO}: {stem}"
            else:
                return entry
            values = None if entry.labels is None else [int(v) for v in entry.labels]
            files = None if entry.object_files is None else [f.name for f in entry.object_files]
            prompts = match_prompts(objects, where, hw, values=values, files=files)
        except ValueError as e:
            return self._bad(per_image if per_image.is_file() else self.root / DATASET_INFO, str(e))
        entry.prompts = prompts if any(p is not None for p in prompts) else None
        return entry

    @property
    def has_stored_prompts(self) -> bool:
        """Whether any sample comes with stored prompts (``Sample.prompts``)."""
        return any(e.prompts is not None for e in self._entries)

    @property
    def names(self) -> list[str]:
        return [str(e.image) for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self._entries):
            raise IndexError(f"sample index {i} out of range 0..{len(self._entries) - 1}")
        e = self._entries[i]
        image = read_image_rgb(e.image)
        try:
            if e.labels is not None:
                lab = read_label_map(e.mask)
                masks = lab[None] == e.labels.astype(lab.dtype)[:, None, None]
            else:
                masks = np.stack([read_label_map(f) != 0 for f in e.object_files])
        except ValueError as err:
            raise ValueError(f"{e.mask}: {err}") from err
        if masks.shape[1:] != image.shape[:2] or not masks.any(axis=(1, 2)).all():
            raise ValueError(f"{e.mask}: changed on disk since the dataset was opened "
                             f"(size or objects no longer match {e.image})")
        return Sample(image, masks, name=str(e.image), prompts=None if e.prompts is None else list(e.prompts))

"""A COCO instances JSON (polygons, compressed or uncompressed RLE) with its image folder, decoded
with pycocotools. One sample per image; its objects are its non-crowd annotations, in file order.

Images are looked up relative to ``images_dir`` (default: the JSON's folder), first as ``file_name``
is written, then by its base name. ``iscrowd`` annotations are skipped (counted in ``crowd_skipped``).
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from samforge.data.bad_samples import raise_if_no_samples
from samforge.data.image_io import read_image_rgb
from samforge.data.mask_folder import image_size
from samforge.data.sample import BadSample, Sample


@dataclass
class _Entry:
    image: Path
    rles: list[dict]  # compressed RLEs of the non-empty objects


def _is_id(v: object) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def to_rle(segmentation: object, h: int, w: int) -> dict | None:
    """A COCO segmentation as a compressed RLE of an ``h x w`` image; None when it covers nothing
    (e.g. only degenerate polygons). Raises ``ValueError`` for a malformed or mis-sized one."""
    seg = segmentation
    if isinstance(seg, list):
        for poly in seg:
            if (not isinstance(poly, list) or len(poly) % 2
                    or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in poly)):
                raise ValueError("polygon must be a flat list of x, y numbers")
        polys = [p for p in seg if len(p) >= 6]  # fewer than 3 points has no area
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w)) if polys else None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise ValueError(f"RLE size {seg['size']} (HxW) differs from the image's [{h}, {w}]")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed
            if not all(isinstance(c, numbers.Integral) and c >= 0 for c in counts) or sum(counts) != h * w:
                raise ValueError(f"uncompressed RLE counts must be non-negative ints summing to {h}x{w}")
            return mask_utils.frPyObjects(seg, h, w)
        if isinstance(counts, (str, bytes)):
            return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unsupported segmentation: expected polygons or an RLE dict, got {type(seg).__name__}")


class CocoDataset:
    """COCO instances annotations as samples (see the module docstring). Opening reads the JSON, every
    image header and converts every annotation to RLE once; images that are missing, unreadable, of a
    different size than the JSON says, or left without any non-empty object go to ``bad_samples``;
    empty annotations are dropped and counted in ``dropped_objects``."""

    def __init__(self, json_path: str | Path, images_dir: str | Path | None = None) -> None:
        self.json_path = Path(json_path)
        if not self.json_path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.json_path}")
        self.images_dir = Path(images_dir) if images_dir is not None else self.json_path.parent
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"COCO images folder not found: {self.images_dir}")
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.json_path}: not valid JSON ({e})") from e
        if (not isinstance(data, dict) or not isinstance(data.get("images"), list)
                or not isinstance(data.get("annotations"), list)):
            raise ValueError(f"{self.json_path}: not a COCO instances file: expected an object with "
                             f"'images' and 'annotations' lists")
        self.bad_samples: list[BadSample] = []
        self.dropped_objects = 0
        self.crowd_skipped = 0
        self._entries: list[_Entry] = []
        image_ids = {img.get("id") for img in data["images"] if isinstance(img, dict) and _is_id(img.get("id"))}
        anns: dict = {}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or not _is_id(ann.get("image_id")) or ann["image_id"] not in image_ids:
                ann_id = ann.get("id") if isinstance(ann, dict) else None
                self._bad(self.json_path, f"annotation {ann_id}: no image with its image_id in 'images'")
            elif ann.get("iscrowd", 0):
                self.crowd_skipped += 1
            else:
                anns.setdefault(ann["image_id"], []).append(ann)
        for img in data["images"]:
            self._scan(img, anns.get(img.get("id"), []) if isinstance(img, dict) and _is_id(img.get("id")) else [])
        raise_if_no_samples(self.json_path, len(self._entries), self.bad_samples, what="images")

    def _bad(self, path: Path, reason: str) -> None:
        self.bad_samples.append(BadSample(str(path), reason))

    def resolve(self, file_name: str) -> Path | None:
        """The image file for a ``file_name`` of the JSON, or None if it cannot be found."""
        for candidate in (self.images_dir / file_name, self.images_dir / Path(file_name).name):
            if candidate.is_file():
                return candidate
        return None

    def _scan(self, img: object, anns: list[dict]) -> None:
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str):
            return self._bad(self.json_path, f"image entry without a file_name: {str(img)[:80]}")
        path = self.resolve(img["file_name"])
        if path is None:
            return self._bad(self.images_dir / img["file_name"],
                             f"image file not found (image id {img.get('id')}; also looked for its base name "
                             f"in {self.images_dir})")
        try:
            h, w = image_size(path)
        except ValueError as e:
            return self._bad(path, str(e))
        if (img.get("height"), img.get("width")) not in ((None, None), (h, w)):
            return self._bad(path, f"size mismatch: the JSON says {img.get('width')}x{img.get('height')} (WxH), "
                                   f"the file is {w}x{h}")
        rles = []
        for ann in anns:
            try:
                rle = to_rle(ann.get("segmentation"), h, w)
            except (ValueError, TypeError) as e:
                return self._bad(path, f"annotation {ann.get('id')}: {e}")
            if rle is None or int(mask_utils.area(rle)) == 0:
                self.dropped_objects += 1
            else:
                rles.append(rle)
        if not rles:
            return self._bad(path, f"no non-empty object ({len(anns)} non-crowd annotations)")
        self._entries.append(_Entry(path, rles))

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
        masks = np.ascontiguousarray(mask_utils.decode(e.rles).transpose(2, 0, 1)).astype(bool)
        if masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"{e.image}: changed on disk since the dataset was opened (size no longer "
                             f"matches {self.json_path})")
        return Sample(image, masks, name=str(e.image))

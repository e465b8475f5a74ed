"""Prompts stored with a dataset: the clicks and boxes a person (or a protocol) recorded for each object, read so
that training (``prompts.source=stored``) and evaluation (``samforge evaluate --prompts stored``) use them instead
of simulated ones.

Two places, in a folder dataset's root (beside ``images/`` and ``masks/``); a per-image file wins over the
dataset-level one for its image:

* ``annotations/<image stem>.json``: ``{"objects": [OBJECT, ...]}`` (or just the list ``[OBJECT, ...]``);
* ``dataset_info.json``: ``{"images": {"<image stem or file name>": {"objects": [OBJECT, ...]}, ...}}``; the value
  may also be the bare list, the key ``"prompts"`` may stand for ``"images"``, and ``"images"`` may be a list of
  ``{"image": "<file name>", "objects": [...]}`` (``"file_name"`` or ``"name"`` for ``"image"``).

An OBJECT, coordinates in pixels of the original image, x to the right, y down::

    {"mask_value": 2,                         # which object: its value in the label map masks/<stem>.png,
                                              # or "mask": "<file>" in a per-object folder masks/<stem>/;
                                              # without either, objects pair in order (label values increasing,
                                              # per-object files in natural name order)
     "points": [[x, y], ...],                 # optional ("point_coords" too, or "point": [x, y])
     "point_labels": [1, 0, ...],             # optional, default all 1; 1 = on the object, 0 = background
                                              # ("labels" too)
     "box": [x0, y0, x1, y1]}                 # optional, XYXY ("box_xyxy" too; "bbox": [x, y, w, h] as in COCO)

An object needs points or a box (or both). An object with neither (e.g. an annotator's file that holds only masks)
carries no prompt. A malformed entry is an error naming the file, the object and the field.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ANNOTATIONS_DIR = "annotations"
DATASET_INFO = "dataset_info.json"
_VALUE_KEYS = ("mask_value", "label_value", "value")
_FILE_KEYS = ("mask", "mask_file")


@dataclass(frozen=True)
class StoredPrompt:
    """One object's stored prompt: ``points`` N x 2 float64 (x, y) with ``labels`` N int64 (1 object, 0 background),
    and/or ``box`` 4 float64 XYXY; pixels of the original image."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points is None and self.box is None:
            raise ValueError("a stored prompt needs points or a box, got neither")
        if (self.points is None) != (self.labels is None):
            raise ValueError("stored prompt: points and labels come together")
        if self.points is not None and (self.points.ndim != 2 or self.points.shape[1] != 2 or len(self.points) == 0
                                        or self.labels.shape != (len(self.points),)):
            raise ValueError(f"stored prompt: expected N x 2 points with N labels, got {self.points.shape} and "
                             f"{self.labels.shape}")
        if self.box is not None and self.box.shape != (4,):
            raise ValueError(f"stored prompt: expected a box of 4 numbers, got shape {self.box.shape}")

    def scaled(self, sx: float, sy: float) -> "StoredPrompt":
        """The prompt with x scaled by ``sx`` and y by ``sy`` (an image resized by those factors)."""
        f = np.array([sx, sy])
        return StoredPrompt(None if self.points is None else self.points * f, self.labels,
                            None if self.box is None else self.box * np.tile(f, 2))


def _numbers(value: Any, where: str, field: str, shape: str) -> np.ndarray:
    arr = np.asarray(value, dtype=object)
    ok = arr.size > 0 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)
                              for v in arr.ravel())
    if not ok:
        raise ValueError(f"{where}: {field}: expected {shape} of finite numbers, got {value!r}")
    return arr.astype(np.float64)


def _first(obj: dict, keys: Sequence[str]) -> tuple[str | None, Any]:
    for k in keys:
        if k in obj:
            return k, obj[k]
    return None, None


def parse_object(obj: Any, where: str, image_hw: tuple[int, int]) -> StoredPrompt | None:
    """One OBJECT entry (see the module docstring) as a :class:`StoredPrompt` checked against the image size
    ``(H, W)``; None when it holds no prompt. Raises ``ValueError`` naming ``where`` and the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object (a JSON dict with points and/or a box), got {obj!r}")
    h, w = image_hw
    points = labels = box = None
    key, value = _first(obj, ("points", "point_coords"))
    if key is None and "point" in obj:
        key, value = "point", [obj["point"]]
    if key is not None:
        points = _numbers(value, where, key, "a list of [x, y] pairs")
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"{where}: {key}: expected a list of [x, y] pairs, got {value!r}")
        lkey, lvalue = _first(obj, ("point_labels", "labels"))
        if lkey is None:
            labels = np.ones(len(points), dtype=np.int64)
        else:
            if (not isinstance(lvalue, list) or len(lvalue) != len(points)
                    or not all(v in (0, 1) and not isinstance(v, bool) for v in lvalue)):
                raise ValueError(f"{where}: {lkey}: expected {len(points)} labels, each 1 (object) or 0 "
                                 f"(background), got {lvalue!r}")
            labels = np.asarray(lvalue, dtype=np.int64)
        outside = (points[:, 0] < 0) | (points[:, 0] > w) | (points[:, 1] < 0) | (points[:, 1] > h)
        if outside.any():
            raise ValueError(f"{where}: {key}: point {points[outside][0].tolist()} lies outside the {w}x{h} (WxH) "
                             "image")
    key, value = _first(obj, ("box", "box_xyxy", "bbox"))
    if key is not None:
        box = _numbers(value, where, key, "4 numbers")
        if box.shape != (4,):
            raise ValueError(f"{where}: {key}: expected 4 numbers, got {value!r}")
        if key == "bbox":  # COCO: x, y, width, height
            box = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
        if not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
            raise ValueError(f"{where}: {key}: expected x0 < x1 and y0 < y1 inside the {w}x{h} (WxH) image, got "
                             f"{value!r}" + (" (bbox is [x, y, width, height])" if key == "bbox" else ""))
    if points is None and box is None:
        return None
    return StoredPrompt(points, labels, box)


def _objects_of(entry: Any, where: str) -> list:
    objects = entry.get("objects") if isinstance(entry, dict) else entry
    if not isinstance(objects, list):
        raise ValueError(f"{where}: expected {{\"objects\": [...]}} or a list of objects, got "
                         f"{type(entry).__name__}")
    return objects


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({type(e).__name__}: {e})") from e


def read_dataset_info(path: str | Path) -> dict[str, list]:
    """``dataset_info.json`` as ``{image stem: [OBJECT, ...]}`` (entries unparsed; file names become stems).
    Raises ``ValueError`` naming the file and the entry that is malformed."""
    path = Path(path)
    doc = _load_json(path)
    images = doc.get("images", doc.get("prompts")) if isinstance(doc, dict) else None
    if isinstance(images, dict):
        items = list(images.items())
    elif isinstance(images, list):
        items = []
        for i, entry in enumerate(images):
            name = _first(entry, ("image", "file_name", "name"))[1] if isinstance(entry, dict) else None
            if not isinstance(name, str):
                raise ValueError(f"{path}: images[{i}]: expected {{\"image\": \"<file name>\", \"objects\": [...]}}, "
                                 f"got {entry!r}")
            items.append((name, entry))
    else:
        raise ValueError(f"{path}: expected {{\"images\": {{\"<image name>\": {{\"objects\": [...]}}}}}} (or a list "
                         f"of {{\"image\", \"objects\"}}), got {type(doc).__name__} with keys "
                         f"{sorted(doc) if isinstance(doc, dict) else '-'}")
    out: dict[str, list] = {}
    for name, entry in items:
        out[Path(name).stem] = _objects_of(entry, f"{path}: {name}")
    return out


def read_annotation_file(path: str | Path) -> list:
    """A per-image ``annotations/<stem>.json`` as its list of OBJECT entries (unparsed)."""
    path = Path(path)
    return _objects_of(_load_json(path), str(path))


def match_prompts(objects: list, where: str, image_hw: tuple[int, int], values: Sequence[int] | None = None,
                  files: Sequence[str] | None = None) -> list[StoredPrompt | None]:
    """One prompt (or None) per object of a sample, in the sample's object order. ``values``: the label values of
    a label map's objects; ``files``: the file names of a per-object folder's. Entries pair by ``mask_value`` /
    ``mask`` when they say, else in order. Raises ``ValueError`` naming ``where``, the entry and the field."""
    count = len(values) if values is not None else len(files or ())
    out: list[StoredPrompt | None] = [None] * count
    for k, obj in enumerate(objects):
        at = f"{where}: object {k}"
        prompt = parse_object(obj, at, image_hw)
        if prompt is None:  # e.g. an entry that only describes a mask: nothing to pair
            continue
        vkey, value = _first(obj, _VALUE_KEYS)
        fkey, file = _first(obj, _FILE_KEYS)
        if vkey is not None:
            if values is None or not isinstance(value, int) or value not in values:
                have = f"the label values {list(values)}" if values is not None else "per-object files (use \"mask\")"
                raise ValueError(f"{at}: {vkey}={value!r} names no object of the mask: it has {have}")
            index = list(values).index(value)
        elif fkey is not None:
            names = [str(f) for f in files] if files is not None else []
            index = next((i for i, n in enumerate(names) if file in (n, Path(n).stem)), None)
            if index is None:
                raise ValueError(f"{at}: {fkey}={file!r} names no object file: the folder has {names}")
        else:
            if k >= count:
                raise ValueError(f"{where}: {len(objects)} stored objects for {count} object(s) in the mask: give "
                                 "each a mask_value (label map) or mask (per-object file) to say which is which")
            index = k
        if out[index] is not None:
            raise ValueError(f"{at}: a second prompt for the same object ({vkey or fkey or 'position'} {index})")
        out[index] = prompt
    return out

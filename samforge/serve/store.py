"""The annotator's saved work: one JSON file per image, written atomically after every change, and the
export of everything to a dataset the trainer reads.

``LABELS_DIR/annotations/<image stem>.json``::

    {"version": 1, "file_name": "a.png", "height": H, "width": W, "done": false, "next_id": 3,
     "objects": [{"id": 1, "label": "cell", "segmentation": {"size": [H, W], "counts": "<COCO RLE>"},
                  "area": 812, "bbox": [x, y, w, h], "score": 0.93, "source": "click", "prompts": {...}}]}

Changes to one image are serialised by a lock per image (read, change, write), so requests arriving
together never lose each other's objects. Undo keeps the last states of each image in memory.

``export()`` writes ``LABELS_DIR/export/``: ``annotations.json`` (COCO instances, RLE, ``file_name``
relative to it, one category per label), ``images/`` (hard links to, or copies of, the annotated images)
and ``masks/<stem>.png`` (16-bit instance label maps: value k is the image's k-th annotation of
annotations.json, painted largest first so small objects stay visible). Both
``open_dataset("LABELS_DIR/export")`` and ``open_dataset("LABELS_DIR/export/annotations.json")`` read it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from samforge.serve.images import ImageFolder
from samforge.utils.atomic import atomic_path, atomic_write_bytes, remove_stale_temporaries, temporary_name

FORMAT_VERSION = 1
MAX_UNDO = 100
SOURCES = ("click", "box", "everything", "proposal", "api")  # proposal: the data engine's semi stage


class StoreError(ValueError):
    """A request the saved state cannot satisfy (unknown object, bad label, bad mask)."""


def max_rle_chars(h: int, w: int) -> int:
    """The longest compressed COCO RLE string an ``h x w`` mask can have: at most ``h*w + 1`` runs, each run (a
    difference of two counts up to ``h*w``, signed) in 5-bit characters."""
    pixels = h * w
    return (pixels + 1) * -(-(pixels.bit_length() + 2) // 5)


def decode_rle_counts(counts: str, h: int, w: int) -> list[int]:
    """The run lengths of a compressed COCO RLE string, checked to be non-negative and to cover exactly
    ``h * w`` pixels (pycocotools itself would write past its buffer for a string that covers more). The string's
    length is bounded by the image size before decoding, and decoding is vectorised (numpy)."""
    if not isinstance(counts, str):
        raise StoreError(f"RLE counts must be a COCO compressed string, got {type(counts).__name__}")
    limit = max_rle_chars(h, w)
    if len(counts) > limit:
        raise StoreError(f"RLE counts string has {len(counts)} characters, more than any mask of a {h}x{w} image "
                         f"can have ({limit})")
    if not counts.isascii():
        raise StoreError("RLE counts string holds a non-ASCII character")
    c = np.frombuffer(counts.encode("ascii"), dtype=np.uint8) - np.uint8(48)  # below "0" wraps to >= 208
    bad = np.flatnonzero(c >= 64)
    if bad.size:
        raise StoreError(f"RLE counts string holds an invalid character {counts[bad[0]]!r} at {bad[0]}")
    if c.size and c[-1] & 0x20:
        raise StoreError("RLE counts string is truncated")
    last = (c & 0x20) == 0  # the last character of each value
    if c.size == 0 or last.all():  # every value one character: the common case, and a long string's
        x = (c & 0x1F).astype(np.int64) - np.where(c & 0x10, 32, 0)
        ends = np.arange(c.size)
    else:
        ends = np.flatnonzero(last)
        starts = np.concatenate([[0], ends[:-1] + 1])
        lengths = ends - starts + 1
        if lengths.max() > 7:
            raise StoreError("RLE counts string holds a run too long for any image")
        k = np.arange(c.size) - np.repeat(starts, lengths)  # position of each character in its value
        x = np.add.reduceat((c & 0x1F).astype(np.int64) << (5 * k), starts)
        x -= np.where(c[ends] & 0x10, np.int64(1) << (5 * lengths), 0)  # sign bit of the last 5-bit group
    if x.size > h * w + 1:
        raise StoreError(f"RLE counts string holds {x.size} runs, more than a {h}x{w} image can have")
    runs = x.copy()  # counts from index 3 on are deltas to the count two before (as pycocotools writes them)
    runs[3::2] = np.cumsum(x[3::2]) + (x[1] if x.size > 1 else 0)
    runs[4::2] = np.cumsum(x[4::2]) + (x[2] if x.size > 2 else 0)
    negative = np.flatnonzero(runs < 0)
    if negative.size:
        first = negative[0]
        raise StoreError(f"RLE counts string decodes to a negative run ({runs[first]}) at {ends[first] + 1}")
    longer = np.flatnonzero(runs > h * w)
    if longer.size:
        raise StoreError(f"RLE counts string decodes to a run of {runs[longer[0]]} pixels, more than the {h}x{w} "
                         "image has")
    if int(runs.sum()) != h * w:
        raise StoreError(f"RLE covers {int(runs.sum())} pixels, the image has {h}x{w} = {h * w}")
    return runs.tolist()


def check_segmentation(segmentation: Any, h: int, w: int) -> dict:
    """A COCO RLE ``{"size": [h, w], "counts": str}`` for an ``h x w`` image, checked; ``StoreError`` if not."""
    if not isinstance(segmentation, dict) or set(segmentation) != {"size", "counts"}:
        raise StoreError("segmentation must be a COCO RLE {'size': [h, w], 'counts': str}, got "
                         f"{type(segmentation).__name__}"
                         + (f" with keys {sorted(segmentation)}" if isinstance(segmentation, dict) else ""))
    size = segmentation["size"]
    if not isinstance(size, (list, tuple)) or [*size] != [h, w]:
        raise StoreError(f"segmentation size must be the image's [{h}, {w}] (HxW), got {size!r}")
    decode_rle_counts(segmentation["counts"], h, w)
    return {"size": [h, w], "counts": segmentation["counts"]}


def mask_to_rle(mask: np.ndarray) -> dict:
    """An ``H x W`` bool mask as a COCO RLE with ``counts`` a str."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise TypeError(f"mask must be an HxW numpy array, got {type(mask).__name__}"
                        + (f" of shape {mask.shape}" if isinstance(mask, np.ndarray) else ""))
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """A checked COCO RLE (counts a str) back to an ``H x W`` bool mask."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _encoded(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


class AnnotationStore:
    """Objects per image of ``folder``, saved under ``labels_dir`` (see the module docstring)."""

    def __init__(self, labels_dir: str | Path, folder: ImageFolder, labels: list[str]) -> None:
        if not isinstance(folder, ImageFolder):
            raise TypeError(f"folder must be an ImageFolder, got {type(folder).__name__}")
        if not isinstance(labels_dir, (str, Path)):
            raise TypeError(f"labels_dir must be a folder path (str or Path), got {type(labels_dir).__name__}")
        self.labels = check_labels(labels)
        self.root = Path(labels_dir)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"LABELS_DIR must be a folder, got the file {labels_dir}")
        self.root = self.root.resolve()
        if self.root == folder.root:
            raise ValueError(f"LABELS_DIR must differ from IMAGES_DIR ({folder.root}): give another --out")
        self.dir = self.root / "annotations"
        self.dir.mkdir(parents=True, exist_ok=True)
        export = self.root / "export"
        self.removed_temporaries = remove_stale_temporaries([self.dir, export, export / "images", export / "masks"])
        self.folder = folder
        self._docs: dict[str, dict] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._export_lock = threading.Lock()
        self._history: dict[str, list[dict]] = {}

    # ------------------------------------------------------------------ reading
    def path(self, name: str) -> Path:
        return self.dir / f"{self.folder.get(name).stem}.json"

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(name, threading.Lock())

    def _empty(self, name: str) -> dict:
        e = self.folder.get(name)
        return {"version": FORMAT_VERSION, "file_name": e.name, "height": e.height, "width": e.width,
                "done": False, "next_id": 1, "objects": []}

    def _read(self, name: str) -> dict:
        """The saved document of ``name`` (caller holds its lock)."""
        if name in self._docs:
            return self._docs[name]
        path = self.path(name)
        if not path.is_file():
            doc = self._empty(name)
        else:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise StoreError(f"{path} is not valid JSON ({e}); fix or delete it") from e
            e = self.folder.get(name)
            if (not isinstance(doc, dict) or not isinstance(doc.get("objects"), list)
                    or [doc.get("height"), doc.get("width")] != [e.height, e.width]):
                raise StoreError(f"{path} is not an annotation file of {name} ({e.width}x{e.height}): "
                                 "fix or delete it")
            doc.setdefault("done", False)
            doc.setdefault("next_id", 1 + max((o.get("id", 0) for o in doc["objects"]), default=0))
        self._docs[name] = doc
        return doc

    def get(self, name: str) -> dict:
        """A copy of the saved document of image ``name``."""
        self.folder.get(name)
        with self._lock(name):
            return copy.deepcopy(self._read(name))

    def summary(self, name: str) -> dict:
        """``{"done", "objects"}`` of image ``name``."""
        self.folder.get(name)
        with self._lock(name):
            doc = self._read(name)
            return {"done": bool(doc["done"]), "objects": len(doc["objects"])}

    # ------------------------------------------------------------------ changing
    def _change(self, name: str, change) -> dict:
        """Apply ``change(doc)`` to a copy of ``name``'s document under its lock, save it, keep the old one
        for undo; returns a copy of the new document."""
        self.folder.get(name)
        with self._lock(name):
            old = self._read(name)
            new = copy.deepcopy(old)
            change(new)
            self._save(name, new)
            history = self._history.setdefault(name, [])
            history.append(old)
            del history[:-MAX_UNDO]
            return copy.deepcopy(new)

    def _save(self, name: str, doc: dict) -> None:
        doc["updated"] = time.time()
        atomic_write_bytes(self.path(name), json.dumps(doc, separators=(",", ":")).encode())
        self._docs[name] = doc

    def add_object(self, name: str, segmentation: dict | np.ndarray, label: str, score: float | None = None,
                   source: str = "api", prompts: dict | None = None) -> dict:
        """Add an object (a bool mask or a COCO RLE of the image's size) with ``label``; returns it."""
        e = self.folder.get(name)
        rle = (mask_to_rle(segmentation) if isinstance(segmentation, np.ndarray)
               else check_segmentation(segmentation, e.height, e.width))
        if list(rle["size"]) != [e.height, e.width]:
            raise StoreError(f"mask must be of the image's size {e.height}x{e.width} (HxW), got {rle['size']}")
        self.check_label(label)
        if source not in SOURCES:
            raise StoreError(f"source must be one of {SOURCES}, got {source!r}")
        if score is not None and (not isinstance(score, (int, float)) or not math.isfinite(score)):
            raise StoreError(f"score must be a finite number or None, got {score!r}")
        area = int(mask_utils.area(_encoded(rle)))
        if area == 0:
            raise StoreError("the mask is empty: nothing to accept")
        obj = {"label": label, "segmentation": rle, "area": area,
               "bbox": [float(v) for v in mask_utils.toBbox(_encoded(rle))],
               "score": None if score is None else float(score), "source": source, "prompts": prompts}
        added = {}

        def change(doc: dict) -> None:
            obj["id"] = int(doc["next_id"])
            doc["next_id"] = obj["id"] + 1
            doc["objects"].append(obj)
            added.update(obj)

        self._change(name, change)
        return added

    def set_label(self, name: str, object_id: int, label: str) -> dict:
        """Give object ``object_id`` of image ``name`` another label; returns the object."""
        self.check_label(label)
        changed = {}

        def change(doc: dict) -> None:
            obj = self._find(doc, name, object_id)
            obj["label"] = label
            changed.update(obj)

        self._change(name, change)
        return changed

    def delete_object(self, name: str, object_id: int) -> None:
        """Remove object ``object_id`` of image ``name``."""
        def change(doc: dict) -> None:
            doc["objects"].remove(self._find(doc, name, object_id))

        self._change(name, change)

    def set_done(self, name: str, done: bool) -> dict:
        if not isinstance(done, bool):
            raise TypeError(f"done must be a bool, got {type(done).__name__}")

        def change(doc: dict) -> None:
            doc["done"] = done

        return self._change(name, change)

    def undo(self, name: str) -> dict:
        """Go back to the state before the last change of image ``name`` (``StoreError`` if none is left)."""
        self.folder.get(name)
        with self._lock(name):
            history = self._history.get(name)
            if not history:
                raise StoreError(f"nothing to undo for {name} (changes made before a restart cannot be undone)")
            doc = history.pop()
            doc["next_id"] = max(doc["next_id"], self._read(name)["next_id"])  # ids are never reused
            self._save(name, doc)
            return copy.deepcopy(doc)

    @staticmethod
    def _find(doc: dict, name: str, object_id: int) -> dict:
        if not isinstance(object_id, int) or isinstance(object_id, bool):
            raise TypeError(f"object id must be an int, got {type(object_id).__name__}")
        for obj in doc["objects"]:
            if obj.get("id") == object_id:
                return obj
        raise KeyError(f"{name} has no object {object_id} (it has {[o.get('id') for o in doc['objects']]})")

    def check_label(self, label: str) -> None:
        if not isinstance(label, str) or label not in self.labels:
            raise StoreError(f"label must be one of {self.labels}, got {label!r}")

    # ------------------------------------------------------------------ export
    def export(self) -> dict:
        """Write ``LABELS_DIR/export/`` (see the module docstring); returns what was written."""
        with self._export_lock:
            out = self.root / "export"
            for d in ("images", "masks"):
                (out / d).mkdir(parents=True, exist_ok=True)
            docs = [(e, self.get(e.name)) for e in self.folder.entries]
            extra = sorted({o["label"] for _, d in docs for o in d["objects"]} - set(self.labels))
            categories = [*self.labels, *extra]
            cat_id = {c: i + 1 for i, c in enumerate(categories)}
            images, annotations, hidden = [], [], 0
            for e, doc in docs:
                image_out, mask_out = out / "images" / e.name, out / "masks" / f"{e.stem}.png"
                if not doc["objects"]:
                    for stale in (image_out, mask_out):  # from an earlier export: the readers must not see it
                        stale.unlink(missing_ok=True)
                    continue
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": f"images/{e.name}", "height": e.height,
                               "width": e.width})
                for obj in doc["objects"]:
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[obj["label"]],
                        "segmentation": obj["segmentation"], "area": obj["area"], "bbox": obj["bbox"],
                        "iscrowd": 0, "score": obj.get("score"), "source": obj.get("source")})
                labels = np.zeros((e.height, e.width), dtype=np.uint16)
                for k in sorted(range(len(doc["objects"])), key=lambda k: -doc["objects"][k]["area"]):
                    labels[rle_to_mask(doc["objects"][k]["segmentation"])] = k + 1
                hidden += len(doc["objects"]) - len(np.setdiff1d(np.unique(labels), [0]))
                with atomic_path(mask_out) as tmp:
                    Image.fromarray(labels).save(tmp, format="PNG")
                _link_or_copy(e.path, image_out)
            coco = {
                "info": {"description": "samforge annotate export", "images_dir": str(self.folder.root),
                         "date_created": time.strftime("%Y-%m-%dT%H:%M:%S")},
                "images": images, "annotations": annotations,
                "categories": [{"id": cat_id[c], "name": c, "supercategory": "object"} for c in categories],
            }
            atomic_write_bytes(out / "annotations.json", json.dumps(coco).encode())
            return {"folder": str(out), "annotations": str(out / "annotations.json"), "images": len(images),
                    "objects": len(annotations), "hidden_in_label_png": int(hidden), "categories": categories}


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (a copy across file systems), replacing what was there."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(temporary_name(dst.name))
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def check_labels(labels: Any) -> list[str]:
    """The label list: 1 to 99 distinct non-empty names of at most 64 characters without commas."""
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ValueError(f"labels must be a non-empty list of names, got {labels!r}")
    out = []
    for lab in labels:
        if not isinstance(lab, str) or not lab.strip() or len(lab) > 64 or "," in lab:
            raise ValueError(f"each label must be a non-empty name of at most 64 characters without commas, "
                             f"got {lab!r}")
        out.append(lab.strip())
    if len(set(out)) != len(out) or len(out) > 99:
        raise ValueError(f"labels must be at most 99 distinct names, got {out}")
    return out

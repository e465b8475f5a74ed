"""What "segment everything" writes, built from the records of :class:`SamAutomaticMaskGenerator`.

* :func:`records_to_json`: records with ``segmentation`` as a compressed COCO RLE (``counts`` a str) and
  plain Python numbers, ready for ``json.dumps`` (a non-finite score becomes ``None``).
* :func:`segmentation_to_mask`: any of the generator's segmentations (bool array, uncompressed RLE, COCO
  RLE) back to an ``H x W`` bool mask.
* :func:`paint_order` / :func:`label_image_from_records`: a ``uint16`` label image where label ``k`` is
  record ``k - 1`` and 0 is background; masks are painted largest first, so a small mask lying on a large
  one stays visible (where masks overlap, a pixel carries the smallest mask covering it).
* :func:`coco_instances`: one COCO instances dict (images, annotations, one category) for many images.

Numbers and arrays only: no file I/O here (the CLI writes the files).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from samforge.predict.checks import describe

__all__ = [
    "coco_instances",
    "label_image_from_records",
    "paint_order",
    "record_to_json",
    "records_to_json",
    "segmentation_size",
    "segmentation_to_mask",
    "segmentation_to_coco_rle",
]

RECORD_KEYS = ("segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box")
MAX_LABELS = int(np.iinfo(np.uint16).max)


# ------------------------------------------------------------------------------------------ checks
def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_size(size: Any, name: str) -> tuple[int, int]:
    if isinstance(size, np.ndarray):
        size = size.tolist()
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size):
        raise ValueError(f"{name} must be [h, w] with non-negative ints, got {size!r}")
    return int(size[0]), int(size[1])


def _check_hw(height: Any, width: Any) -> tuple[int, int]:
    for v, name in ((height, "height"), (width, "width")):
        if not _is_int(v):
            raise TypeError(f"{name} must be an int >= 1, got {type(v).__name__} {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(height), int(width)


def _check_records(records: Any, name: str = "records") -> list:
    if not isinstance(records, (list, tuple)):
        raise TypeError(f"{name} must be a list of mask records (dicts with a 'segmentation'), got "
                        f"{describe(records)}")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping) or "segmentation" not in r:
            raise TypeError(f"{name}[{i}] must be a dict with a 'segmentation', got {describe(r)}"
                            + (f" with keys {sorted(r)}" if isinstance(r, Mapping) else ""))
    return list(records)


# ------------------------------------------------------------------------------------ segmentations
def segmentation_size(segmentation: Any, name: str = "segmentation") -> tuple[int, int]:
    """(h, w) of a bool mask or an RLE dict (either kind)."""
    if isinstance(segmentation, np.ndarray):
        if segmentation.ndim != 2:
            raise ValueError(f"{name} must be an HxW mask, got shape {segmentation.shape}")
        return int(segmentation.shape[0]), int(segmentation.shape[1])
    if isinstance(segmentation, Mapping) and "size" in segmentation and "counts" in segmentation:
        return _check_size(segmentation["size"], f"{name}['size']")
    raise TypeError(f"{name} must be an HxW bool array or an RLE dict {{'size': [h, w], 'counts': ...}}, got "
                    f"{describe(segmentation)}")


def segmentation_to_coco_rle(segmentation: Any, name: str = "segmentation") -> dict:
    """A compressed COCO RLE ``{"size": [h, w], "counts": str}`` from an ``H x W`` bool (or 0/1) mask, an
    uncompressed RLE (``counts`` a list of ints, column-major, starting with zeros) or a COCO RLE."""
    h, w = segmentation_size(segmentation, name)
    if isinstance(segmentation, np.ndarray):
        mask = segmentation
        if mask.dtype != bool:
            if mask.dtype.kind not in "iu" or (mask.size and not np.isin(mask, (0, 1)).all()):
                raise ValueError(f"{name} must be a bool (or 0/1 integer) mask, got dtype {mask.dtype}")
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    else:
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            rle = {"size": [h, w], "counts": counts}
        else:
            if isinstance(counts, np.ndarray):
                counts = counts.tolist()
            if (not isinstance(counts, (list, tuple)) or not all(_is_int(c) and c >= 0 for c in counts)
                    or sum(counts) != h * w):
                raise ValueError(f"{name}['counts'] must be non-negative ints summing to h * w = {h * w}, "
                                 f"got {str(counts)[:80]}")
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    counts = rle["counts"]
    return {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def segmentation_to_mask(segmentation: Any, name: str = "segmentation") -> np.ndarray:
    """``H x W`` bool mask from a bool mask, an uncompressed RLE or a COCO RLE."""
    if isinstance(segmentation, np.ndarray) and segmentation.dtype == bool:
        segmentation_size(segmentation, name)
        return segmentation
    rle = segmentation_to_coco_rle(segmentation, name)
    h, w = rle["size"]
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    try:
        return mask_utils.decode({"size": [h, w], "counts": rle["counts"].encode("ascii")}).astype(bool)
    except Exception as e:  # pycocotools raises bare exceptions on malformed strings
        raise ValueError(f"{name} is not a valid COCO RLE ({type(e).__name__}: {e})") from e


def _area(segmentation: Any, name: str) -> int:
    if isinstance(segmentation, np.ndarray):
        return int(np.count_nonzero(segmentation))
    rle = segmentation_to_coco_rle(segmentation, name)
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


# ----------------------------------------------------------------------------------------- records
def _plain(value: Any) -> Any:
    """numpy / torch scalars and arrays -> Python numbers and lists; non-finite floats -> None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def record_to_json(record: Mapping[str, Any], name: str = "record") -> dict:
    """One generator record with ``segmentation`` as a COCO RLE (``counts`` a str) and plain numbers."""
    _check_records([record], name="[record]")
    out = {"segmentation": segmentation_to_coco_rle(record["segmentation"], f"{name}['segmentation']")}
    for key, value in record.items():
        if key != "segmentation":
            if not isinstance(key, str):
                raise TypeError(f"{name} keys must be str, got {describe(key)} {key!r}")
            out[key] = _plain(value)
    return out


def records_to_json(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """:func:`record_to_json` for every record, in order: the per-image JSON of segment-everything."""
    return [record_to_json(r, f"records[{i}]") for i, r in enumerate(_check_records(records))]


def paint_order(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """Record indices by decreasing mask area (ties: record order): paint in this order and every small
    mask ends up on top of the larger ones it overlaps."""
    records = _check_records(records)
    areas = [_area(r["segmentation"], f"records[{i}]['segmentation']") for i, r in enumerate(records)]
    return sorted(range(len(records)), key=lambda i: -areas[i])


def label_image_from_records(records: Sequence[Mapping[str, Any]], height: int, width: int) -> np.ndarray:
    """``height x width`` uint16 label image: 0 = background, ``k`` = ``records[k - 1]``, painted in
    :func:`paint_order` (largest first, so each pixel shows the smallest mask covering it; equal areas:
    the later record). Masks are decoded one at a time (memory of one mask, not all)."""
    h, w = _check_hw(height, width)
    records = _check_records(records)
    if len(records) > MAX_LABELS:
        raise ValueError(f"a uint16 label image holds at most {MAX_LABELS} masks, got {len(records)} records")
    labels = np.zeros((h, w), dtype=np.uint16)
    for i in paint_order(records):
        mask = segmentation_to_mask(records[i]["segmentation"], f"records[{i}]['segmentation']")
        if mask.shape != (h, w):
            raise ValueError(f"records[{i}]['segmentation'] must be of the image's size {h}x{w} (HxW), "
                             f"got {mask.shape[0]}x{mask.shape[1]}")
        labels[mask] = i + 1
    return labels


# --------------------------------------------------------------------------------------------- COCO
def coco_instances(images: Sequence[Mapping[str, Any]], category: str = "object",
                   info: Mapping[str, Any] | None = None) -> dict:
    """A COCO instances dict from ``images``: each a dict with ``file_name`` (str), ``width``, ``height``
    and ``records`` (generator records, any segmentation kind). Image ids are 1, 2, ... in the given
    order; annotation ids 1, 2, ... in image then record order; one category (id 1, ``category``).

    Each annotation has ``segmentation`` (COCO RLE, counts a str), ``area`` (pixels of the mask), ``bbox``
    (COCO ``[x, y, w, h]`` of the mask, as ``pycocotools.mask.toBbox``: w, h count pixels, unlike the
    generator's inclusive-extent ``bbox``), ``iscrowd`` 0, ``score`` (= ``predicted_iou``) and the
    generator's ``predicted_iou``, ``stability_score``, ``point_coords`` and ``crop_box``."""
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of dicts with file_name, width, height and records, got "
                        f"{describe(images)}")
    if not isinstance(category, str) or not category:
        raise ValueError(f"category must be a non-empty str, got {category!r}")
    if info is not None and not isinstance(info, Mapping):
        raise TypeError(f"info must be a dict or None, got {describe(info)}")
    out_images, annotations = [], []
    for i, entry in enumerate(images):
        if not isinstance(entry, Mapping) or not {"file_name", "width", "height", "records"} <= set(entry):
            keys = f" with keys {sorted(entry)}" if isinstance(entry, Mapping) else ""
            raise TypeError(f"images[{i}] must be a dict with file_name, width, height and records, got "
                            f"{describe(entry)}{keys}")
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            raise ValueError(f"images[{i}]['file_name'] must be a non-empty str, got {entry['file_name']!r}")
        h, w = _check_hw(entry["height"], entry["width"])
        records = _check_records(entry["records"], f"images[{i}]['records']")
        image_id = i + 1
        out_images.append({"id": image_id, "file_name": entry["file_name"], "width": w, "height": h})
        for j, record in enumerate(records):
            name = f"images[{i}]['records'][{j}]"
            rle = segmentation_to_coco_rle(record["segmentation"], f"{name}['segmentation']")
            if tuple(rle["size"]) != (h, w):
                raise ValueError(f"{name}['segmentation'] must be of the image's size {h}x{w} (HxW), got "
                                 f"{rle['size'][0]}x{rle['size'][1]}")
            encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle,
                "area": int(mask_utils.area(encoded)),
                "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
                "iscrowd": 0,
            }
            extras = {k: _plain(record[k]) for k in ("predicted_iou", "stability_score", "point_coords", "crop_box")
                      if k in record}
            if "predicted_iou" in extras:
                ann["score"] = extras["predicted_iou"]
            ann.update(extras)
            annotations.append(ann)
    return {
        "info": dict(info or {}),
        "images": out_images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category, "supercategory": category}],
    }

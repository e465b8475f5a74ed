"""Mask utilities for automatic mask generation ("segment everything").

Same semantics as ``segment_anything.utils.amg``: point grids in [0, 1], crop boxes XYXY with exclusive
ends, mask boxes XYXY with *inclusive* ends (the last pixel row/column), and uncompressed RLE in the COCO
layout: ``{"size": [h, w], "counts": [...]}`` over the column-major (Fortran) flattened mask, starting
with the count of zeros (0 when the first pixel is set).

Every function checks its inputs and raises ``TypeError``/``ValueError`` naming what was expected.
"""

from __future__ import annotations

import math
import numbers
from itertools import product
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from samforge.predict.checks import describe

__all__ = [
    "MaskData",
    "area_from_rle",
    "batch_iterator",
    "batched_mask_to_box",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "mask_to_rle_pytorch",
    "remove_small_regions",
    "rle_to_mask",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]

_STORABLE = (list, np.ndarray, torch.Tensor)


# ----------------------------------------------------------------------------------------------- checks
def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_int(x: Any, name: str, minimum: int) -> int:
    if not _is_int(x):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(x).__name__} {x!r}")
    if x < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {x!r}")
    return int(x)


def _check_real(x: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number within [lo, hi] (bounds optional)."""
    expected = "a finite number" + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else
                                     f" >= {lo}" if lo is not None else "")
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        raise TypeError(f"{name} must be {expected}, got {type(x).__name__} {x!r}")
    x = float(x)
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        raise ValueError(f"{name} must be {expected}, got {x!r}")
    return x


def _check_box4(box: Any, name: str) -> list:
    """Four integers (a crop or image box, XYXY)."""
    if isinstance(box, (np.ndarray, torch.Tensor)):
        box = box.tolist()
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_int(v) or
                                                                       (isinstance(v, float) and v.is_integer())
                                                                       for v in box):
        raise ValueError(f"{name} must be 4 integers [x0, y0, x1, y1], got {box!r}")
    return [int(v) for v in box]


def _check_tensor(x: Any, name: str, expected: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {describe(x)}")
    return x


def _check_rle(rle: Any, name: str = "rle") -> tuple[int, int, np.ndarray]:
    """An uncompressed RLE dict; returns (h, w, counts)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise TypeError(f"{name} must be a dict {{'size': [h, w], 'counts': [...]}}, got {describe(rle)}"
                        + (f" with keys {sorted(rle)}" if isinstance(rle, dict) else ""))
    size, counts = rle["size"], rle["counts"]
    if isinstance(counts, (str, bytes)):
        raise TypeError(f"{name} must be an uncompressed RLE (counts a list of ints), got a compressed "
                        "COCO RLE string; decode it with pycocotools.mask.decode")
    if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size)):
        raise ValueError(f"{name}['size'] must be [h, w] with non-negative ints, got {size!r}")
    if isinstance(counts, torch.Tensor):
        counts = counts.cpu().numpy()
    arr = np.asarray(counts) if isinstance(counts, (list, tuple, np.ndarray)) else None
    if arr is None or arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0)):
        raise ValueError(f"{name}['counts'] must be a list of non-negative ints, got {str(counts)[:80]}")
    h, w = int(size[0]), int(size[1])
    total = int(arr.sum(dtype=np.int64))
    if total != h * w:
        raise ValueError(f"{name}['counts'] must sum to h * w = {h * w} for size {list(size)}, got {total}")
    return h, w, arr.astype(np.int64, copy=False)


# -------------------------------------------------------------------------------------------- MaskData
class MaskData:
    """Columns of per-mask data (torch tensors, numpy arrays or lists, all the same length) that are
    filtered and concatenated together."""

    def __init__(self, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            self._check_item(k, v)
        self._stats: dict = dict(kwargs)

    @staticmethod
    def _check_item(key: Any, item: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"MaskData keys must be str, got {type(key).__name__}")
        if not isinstance(item, _STORABLE):
            raise TypeError(f"MaskData[{key!r}] must be a list, numpy array or torch tensor, got {describe(item)}")

    def __setitem__(self, key: str, item: Any) -> None:
        self._check_item(key, item)
        self._stats[key] = item

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def __len__(self) -> int:
        """Number of masks (length of the first column; 0 when empty)."""
        for v in self._stats.values():
            return len(v)
        return 0

    def keys(self):
        return self._stats.keys()

    def items(self):
        return self._stats.items()

    def filter(self, keep: Any) -> None:
        """Keep the rows selected by ``keep``: a boolean mask, or indices (in that order)."""
        if isinstance(keep, np.ndarray):
            keep = torch.from_numpy(keep)
        if not isinstance(keep, torch.Tensor) or keep.ndim != 1:
            raise TypeError(f"keep must be a 1-D torch tensor (bool mask or int indices), got {describe(keep)}")
        if keep.dtype != torch.bool and (keep.dtype.is_floating_point or keep.dtype.is_complex):
            raise TypeError(f"keep must be a bool mask or integer indices, got dtype {keep.dtype}")
        keep_cpu = keep.detach().cpu()
        keep_list = keep_cpu.nonzero().flatten().tolist() if keep.dtype == torch.bool else keep_cpu.tolist()
        for k, v in self._stats.items():
            if v is None:
                continue
            if keep.dtype == torch.bool and len(keep) != len(v):
                raise ValueError(f"keep has {len(keep)} entries but MaskData[{k!r}] has {len(v)}")
            if isinstance(v, torch.Tensor):
                self._stats[k] = v[keep.to(v.device)]
            elif isinstance(v, np.ndarray):
                self._stats[k] = v[keep_cpu.numpy()]
            else:
                self._stats[k] = [v[i] for i in keep_list]

    def cat(self, new_stats: "MaskData") -> None:
        """Append the rows of ``new_stats`` (column by column). Lists are copied, not their items (the
        official code deep-copies them, which for RLE lists of many runs costs more than making them)."""
        if not isinstance(new_stats, MaskData):
            raise TypeError(f"new_stats must be a MaskData, got {type(new_stats).__name__}")
        for k, v in new_stats.items():
            old = self._stats.get(k)
            if old is None:
                self._stats[k] = list(v) if isinstance(v, list) else v.copy() if isinstance(v, np.ndarray) \
                    else v.clone()
            elif isinstance(v, torch.Tensor):
                self._stats[k] = torch.cat([old, v.to(old.device)], dim=0)
            elif isinstance(v, np.ndarray):
                self._stats[k] = np.concatenate([old, v], axis=0)
            else:
                self._stats[k] = old + list(v)

    def to_numpy(self) -> None:
        """Move every tensor column to a numpy array on the CPU."""
        for k, v in self._stats.items():
            if isinstance(v, torch.Tensor):
                self._stats[k] = v.detach().cpu().numpy()


# ------------------------------------------------------------------------------------ boxes and crops
def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int],
                          atol: float = 20.0) -> torch.Tensor:
    """For ``N x 4`` XYXY boxes in the crop's frame: whether any side lies within ``atol`` pixels of a
    side of ``crop_box`` that is not also a side of the image ``orig_box`` (both XYXY in the image)."""
    _check_tensor(boxes, "boxes", "Nx4")
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape Nx4 (XYXY), got {tuple(boxes.shape)}")
    crop = torch.tensor(_check_box4(crop_box, "crop_box"), dtype=torch.float, device=boxes.device)
    orig = torch.tensor(_check_box4(orig_box, "orig_box"), dtype=torch.float, device=boxes.device)
    atol = _check_real(atol, "atol", lo=0.0)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = (boxes - crop).abs() <= atol
    near_image = (boxes - orig).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box_xyxy: Any) -> Any:
    """XYXY -> XYWH for a box (``4``) or boxes (``... x 4``): a torch tensor, numpy array or list."""
    if isinstance(box_xyxy, (list, tuple)):
        return box_xyxy_to_xywh(np.asarray(box_xyxy)).tolist()
    if not isinstance(box_xyxy, (np.ndarray, torch.Tensor)):
        raise TypeError(f"box_xyxy must be a tensor, array or list of shape ...x4, got {describe(box_xyxy)}")
    if box_xyxy.ndim == 0 or box_xyxy.shape[-1] != 4:
        raise ValueError(f"box_xyxy must have shape ...x4 (XYXY), got {tuple(box_xyxy.shape)}")
    out = box_xyxy.clone() if isinstance(box_xyxy, torch.Tensor) else box_xyxy.copy()
    out[..., 2:] = box_xyxy[..., 2:] - box_xyxy[..., :2]
    return out


def batch_iterator(batch_size: int, *args: Any) -> Iterator[list]:
    """Slices ``[arg[i:i + batch_size] for arg in args]`` over arguments of equal length."""
    _check_int(batch_size, "batch_size", 1)
    if not args:
        raise ValueError("batch_iterator needs at least one sequence to batch, got none")
    lengths = [len(a) for a in args]
    if len(set(lengths)) != 1:
        raise ValueError(f"the sequences to batch must have the same length, got lengths {lengths}")
    for start in range(0, lengths[0], batch_size):
        yield [a[start:start + batch_size] for a in args]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n_per_side**2 x 2`` (x, y) points at the centres of an ``n x n`` grid of cells over [0, 1]^2,
    row by row (y outer, x inner)."""
    n = _check_int(n_per_side, "n_per_side", 1)
    half_cell = 1 / (2 * n)
    side = np.linspace(half_cell, 1 - half_cell, n)
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """Point grids for crop layers ``0..n_layers``: layer i has ``int(n_per_side / scale_per_layer**i)``
    points per side."""
    n = _check_int(n_per_side, "n_per_side", 1)
    layers = _check_int(n_layers, "n_layers", 0)
    scale = _check_int(scale_per_layer, "scale_per_layer", 1)
    grids = []
    for i in range(layers + 1):
        n_i = int(n / (scale ** i))
        if n_i < 1:
            raise ValueError(
                f"crop layer {i} would get int({n} / {scale}**{i}) = 0 points per side: lower n_layers "
                f"(got {layers}) or scale_per_layer (got {scale}), or raise n_per_side (got {n})"
            )
        grids.append(build_point_grid(n_i))
    return grids


def generate_crop_boxes(im_size: Sequence[int], n_layers: int, overlap_ratio: float) -> tuple[list, list]:
    """Crop boxes (XYXY ints) and their layer: the whole image (layer 0), then for layer i >= 1 a
    ``2**i x 2**i`` grid of overlapping crops (x outer, y inner)."""
    if (not isinstance(im_size, (tuple, list)) or len(im_size) != 2
            or not all(_is_int(s) and s > 0 for s in im_size)):
        raise ValueError(f"im_size must be (H, W) with positive ints, got {im_size!r}")
    layers = _check_int(n_layers, "n_layers", 0)
    overlap_ratio = _check_real(overlap_ratio, "overlap_ratio", 0.0, 1.0)
    im_h, im_w = int(im_size[0]), int(im_size[1])
    boxes, layer_idxs = [[0, 0, im_w, im_h]], [0]
    for layer in range(1, layers + 1):
        per_side = 2 ** layer
        overlap = int(overlap_ratio * min(im_h, im_w) * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + im_w) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + im_h) / per_side))
        xs = [int((crop_w - overlap) * i) for i in range(per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(layer)
    return boxes, layer_idxs


def _offset(crop_box: Sequence[int], name: str, reps: int, x: torch.Tensor) -> torch.Tensor:
    x0, y0, _, _ = _check_box4(crop_box, "crop_box")
    offset = torch.tensor([x0, y0] * reps, device=x.device)
    if x.shape[-1] != 2 * reps:
        raise ValueError(f"{name} must have shape ...x{2 * reps}, got {tuple(x.shape)}")
    return offset


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """XYXY boxes (``... x 4``) from the crop's frame to the image's."""
    _check_tensor(boxes, "boxes", "...x4")
    return boxes + _offset(crop_box, "boxes", 2, boxes)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(x, y) points (``... x 2``) from the crop's frame to the image's."""
    _check_tensor(points, "points", "...x2")
    return points + _offset(crop_box, "points", 1, points)


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Masks ``... x h x w`` of a crop, zero-padded into the ``orig_h x orig_w`` image."""
    _check_tensor(masks, "masks", "...xHxW")
    x0, y0, x1, y1 = _check_box4(crop_box, "crop_box")
    orig_h, orig_w = _check_int(orig_h, "orig_h", 1), _check_int(orig_w, "orig_w", 1)
    if masks.ndim < 2 or tuple(masks.shape[-2:]) != (y1 - y0, x1 - x0):
        raise ValueError(f"masks must have shape ...x{y1 - y0}x{x1 - x0} to fit crop_box {[x0, y0, x1, y1]}, "
                         f"got {tuple(masks.shape)}")
    if not (0 <= x0 <= x1 <= orig_w and 0 <= y0 <= y1 <= orig_h):
        raise ValueError(f"crop_box must lie inside the {orig_h}x{orig_w} image, got {[x0, y0, x1, y1]}")
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    out = masks.new_zeros((*masks.shape[:-2], orig_h, orig_w))
    out[..., y0:y1, x0:x1] = masks
    return out


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (int64, inclusive ends) around masks ``... x H x W`` -> ``... x 4``; [0, 0, 0, 0] for an
    empty mask."""
    _check_tensor(masks, "masks", "...xHxW")
    if masks.ndim < 2:
        raise ValueError(f"masks must have shape ...xHxW, got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor, got dtype {masks.dtype}")
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros((*masks.shape[:-2], 4), dtype=torch.long, device=masks.device)

    def extent(any_along: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(n, device=masks.device)
        first = torch.where(any_along, idx, n).amin(-1)
        last = torch.where(any_along, idx, -1).amax(-1)
        return first, last

    top, bottom = extent(masks.any(-1), h)
    left, right = extent(masks.any(-2), w)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return boxes * (bottom >= top).unsqueeze(-1)


# ----------------------------------------------------------------------------------------------- masks
def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU of the masks binarized at ``mask_threshold + offset`` and at ``mask_threshold - offset``
    (``... x H x W`` logits -> ``...`` float32; NaN where both are empty)."""
    _check_tensor(masks, "masks", "...xHxW")
    if masks.ndim < 2:
        raise ValueError(f"masks must have shape ...xHxW, got {tuple(masks.shape)}")
    thr = _check_real(mask_threshold, "mask_threshold")
    off = _check_real(threshold_offset, "threshold_offset")
    # the high-threshold mask lies inside the low-threshold one: intersection and union are their areas
    inter = (masks > thr + off).sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)
    union = (masks > thr - off).sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)
    return inter / union


def mask_to_rle(masks: torch.Tensor) -> list[dict]:
    """Uncompressed COCO RLEs (column-major) of bool masks ``B x H x W``: one dict per mask."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    _check_tensor(masks, "masks", "BxHxW")
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape BxHxW, got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got dtype {masks.dtype}")
    b, h, w = masks.shape
    n = h * w
    if b == 0:
        return []
    if n == 0:
        return [{"size": [h, w], "counts": []} for _ in range(b)]
    flat = masks.transpose(1, 2).reshape(b, n)
    rows, cols = (flat[:, 1:] ^ flat[:, :-1]).nonzero(as_tuple=True)  # in order: mask by mask, pixel by pixel
    # run boundaries of all masks on one axis: mask i spans [i*n, (i+1)*n], a change after pixel c of
    # mask i starts a run at i*n + c + 1 (strictly inside the span); differences are the run lengths.
    # The changes come sorted, so the mask starts are slotted in before each mask's changes (no sort).
    changes = torch.bincount(rows, minlength=b)
    start_slots = torch.arange(b, device=flat.device) + torch.cumsum(changes, 0) - changes
    bounds = torch.empty(b + len(rows) + 1, dtype=torch.long, device=flat.device)
    is_start = torch.zeros(len(bounds), dtype=torch.bool, device=flat.device)
    is_start[start_slots] = True
    is_start[-1] = True
    bounds[is_start] = torch.arange(b + 1, device=flat.device) * n
    bounds[~is_start] = rows * n + cols + 1
    lengths = (bounds[1:] - bounds[:-1]).tolist()
    runs_per_mask = (changes + 1).tolist()
    first_set = flat[:, 0].tolist()
    out, pos = [], 0
    for i in range(b):
        counts = [0] if first_set[i] else []
        counts.extend(lengths[pos:pos + runs_per_mask[i]])
        pos += runs_per_mask[i]
        out.append({"size": [h, w], "counts": counts})
    return out


mask_to_rle_pytorch = mask_to_rle  # the official name


def rle_to_mask(rle: dict) -> np.ndarray:
    """Bool ``H x W`` mask from an uncompressed RLE."""
    h, w, counts = _check_rle(rle)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)


def area_from_rle(rle: dict) -> int:
    """Number of set pixels of an uncompressed RLE."""
    return int(_check_rle(rle)[2][1::2].sum())


def coco_encode_rle(uncompressed_rle: dict) -> dict:
    """Uncompressed RLE -> compressed COCO RLE (``counts`` a str, JSON-serializable), via pycocotools."""
    h, w, counts = _check_rle(uncompressed_rle, "uncompressed_rle")
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:  # pragma: no cover - pycocotools is a dependency
        raise ImportError("coco_encode_rle needs pycocotools (pip install pycocotools)") from e
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``mode="islands"``) smaller than ``area_thresh``
    pixels (8-connected) in a bool ``H x W`` mask. Returns the mask and whether it changed. When every
    island is small, the largest is kept."""
    import cv2

    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy bool array HxW, got {describe(mask)}")
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array of shape HxW, got shape {mask.shape} and dtype {mask.dtype}")
    area_thresh = _check_real(area_thresh, "area_thresh", lo=0.0)
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = np.ascontiguousarray(mask != holes, dtype=np.uint8)  # the regions to examine are set
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the unset background of `working`
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    keep = np.zeros(n_labels, dtype=bool)  # per label: set in the result
    if holes:
        keep[0] = True  # the mask itself
        keep[1:] = small  # and its small holes
    else:
        keep[1:] = ~small
        if not keep.any():
            keep[int(np.argmax(sizes)) + 1] = True
    return keep[labels], True

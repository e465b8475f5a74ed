"""Clips as the SAM 2 trainer wants them: a window of ``num_frames`` consecutive frames, up to ``max_objects``
objects visible on its first frame, frames resized to S x S and normalised as SAM 2 does; and the collate.

SAM 2 preprocessing (the official ``SAM2Transforms``, :mod:`samforge.predict.sam2_transforms`): uint8 -> [0, 1]
float, bilinear antialiased resize to ``S x S`` (aspect ratio not kept, no padding), ImageNet mean/std. Masks get
the same geometry (bilinear antialiased on 0/1 values, threshold 0.5).

The dataset is indexed by ``(index, draw)`` pairs (:class:`samforge.data.sampler.ResumableSampler`): every random
choice (window start, time reversal, objects, the clip drawn instead of an unusable one) comes from
``numpy.random.default_rng([seed, index, draw])``, so a resumed run sees the same data.

Unusable clips are never filled in silently. A clip shorter than ``num_frames`` is skipped (another clip is drawn,
deterministically) with ``short_clips="skip"``, or padded by repeating its last frame with ``short_clips="pad"``; a
clip with no object on the first frame of any window is skipped; a clip that cannot be read is skipped. Each item
says what was skipped (``"skipped"``: ``(name, reason)`` pairs) and whether it was padded (``"padded_frames"``);
:func:`collate_clips` carries both into the batch, so the trainer can count them even with DataLoader workers
(``TrainingClips.counts`` counts them in the current process only).
"""

from __future__ import annotations

import numbers
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from samforge.predict.sam2_transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SHORT_CLIP_MODES", "SKIP_REASONS", "TrainingClips", "collate_clips", "prepare_clip_frames",
           "prepare_clip_masks"]

SHORT_CLIP_MODES = ("skip", "pad")
SKIP_REASONS = ("short", "no_object", "unreadable")
DEFAULT_MAX_REDRAWS = 100


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def prepare_clip_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """T x H x W x 3 uint8 -> T x 3 x size x size float32: to [0, 1], bilinear antialiased resize to a square,
    ImageNet mean/std (frame by frame what ``SAM2Transforms`` does to one image)."""
    if not (isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8
            and frames.shape[0] >= 1):
        raise ValueError(f"frames: expected a T x H x W x 3 uint8 array with T >= 1, got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")
    if not _is_int(size) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255)
    x = TF.resize(x, [size, size], antialias=True)
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def prepare_clip_masks(masks: np.ndarray, size: int) -> torch.Tensor:
    """T x K x H x W bool -> T x K x size x size bool, resized as the frames (bilinear antialiased, > 0.5)."""
    if not (isinstance(masks, np.ndarray) and masks.ndim == 4 and masks.dtype == bool):
        raise ValueError(f"masks: expected a T x K x H x W bool array, got "
                         f"{getattr(masks, 'dtype', type(masks).__name__)} {getattr(masks, 'shape', '')}")
    if not _is_int(size) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    t, k, h, w = masks.shape
    if t * k == 0:
        return torch.zeros((t, k, size, size), dtype=torch.bool)
    m = torch.from_numpy(np.ascontiguousarray(masks)).reshape(t * k, 1, h, w).float()
    m = F.interpolate(m, (size, size), mode="bilinear", align_corners=False, antialias=True) > 0.5
    return m.reshape(t, k, size, size)


class TrainingClips(torch.utils.data.Dataset):
    """Wraps a clip dataset (:func:`~samforge.data.clip_dataset.open_clip_dataset`) for SAM 2 training.

    Args:
        dataset: ``len()`` and ``[i] -> Clip``.
        image_size: S, the model's square input size.
        num_frames: T, frames per training window (>= 1).
        max_objects: at most this many objects per window, chosen at random among those visible on its first
            frame (and still visible there after resizing).
        seed: seeds every random choice, with the ``(index, draw)`` key.
        short_clips: ``"skip"`` (draw another clip) or ``"pad"`` (repeat the last frame) for clips shorter than T.
        random_reverse: play the window backwards with probability 0.5 (off by default).
        max_redraws: how many clips to try for one item before giving up with an error.

    ``item = clips[(index, draw)]``: ``frames`` T x 3 x S x S float32, ``masks`` T x N x S x S bool, ``obj_ids``
    (N label values), ``frame_indices`` (T source frame indices, in play order), ``reversed``, ``name`` (the clip
    used), ``padded_frames`` (frames added by padding, 0 if none), ``skipped`` (``(name, reason)`` of clips
    passed over for this item, reason one of ``SKIP_REASONS``).
    """

    def __init__(self, dataset: Any, image_size: int, num_frames: int, max_objects: int, seed: int = 0,
                 short_clips: str = "skip", random_reverse: bool = False,
                 max_redraws: int = DEFAULT_MAX_REDRAWS) -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"dataset: expected a clip dataset (len() and [i] -> Clip), got {type(dataset).__name__}")
        if len(dataset) < 1:
            raise ValueError("dataset: expected at least one clip, got an empty dataset")
        for name, value, lo in (("image_size", image_size, 1), ("num_frames", num_frames, 1),
                                ("max_objects", max_objects, 1), ("max_redraws", max_redraws, 1)):
            if not _is_int(value) or value < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {value!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        if short_clips not in SHORT_CLIP_MODES:
            raise ValueError(f"short_clips: expected one of {SHORT_CLIP_MODES}, got {short_clips!r}")
        if not isinstance(random_reverse, bool):
            raise TypeError(f"random_reverse: expected a bool, got {type(random_reverse).__name__}")
        self.dataset = dataset
        self.image_size = int(image_size)
        self.num_frames = int(num_frames)
        self.max_objects = int(max_objects)
        self.seed = int(seed)
        self.short_clips = short_clips
        self.random_reverse = random_reverse
        self.max_redraws = int(max_redraws)
        self.counts: Counter = Counter()  # skipped_<reason>, padded: in this process only (see the module doc)

    def __len__(self) -> int:
        return len(self.dataset)

    def _window(self, clip: Any, rng: np.random.Generator) -> tuple[list, bool, int] | str:
        """(frame indices in play order, reversed, padded frames), or the reason the clip is unusable."""
        n, length = clip.num_frames, self.num_frames
        reverse = bool(self.random_reverse and rng.random() < 0.5)
        order = np.arange(n)[::-1] if reverse else np.arange(n)
        has_object = clip.presence.any(axis=1)[order]  # in play order
        if n >= length:
            starts = np.flatnonzero(has_object[: n - length + 1])
            if len(starts) == 0:
                return "no_object"
            s = int(starts[rng.integers(len(starts))])
            return [int(t) for t in order[s:s + length]], reverse, 0
        if self.short_clips == "skip":
            return "short"
        starts = np.flatnonzero(has_object)
        if len(starts) == 0:
            return "no_object"
        s = int(starts[0])  # keep as many real frames as possible
        idx = [int(t) for t in order[s:]]
        return idx + [idx[-1]] * (length - len(idx)), reverse, length - len(idx)

    def _try(self, index: int, rng: np.random.Generator) -> dict | tuple[str, str]:
        try:
            clip = self.dataset[index]
        except (ValueError, OSError) as e:
            return (self._name(index), f"unreadable: {e}")
        window = self._window(clip, rng)
        if isinstance(window, str):
            return (clip.name, window)
        frame_idx, reverse, padded = window
        first = frame_idx[0]
        visible = np.flatnonzero(clip.presence[first])
        size = self.image_size
        first_masks = prepare_clip_masks(clip.object_masks([first], visible), size)[0]
        visible = visible[first_masks.flatten(1).any(1).numpy()]  # objects that vanish when resized cannot be prompted
        if len(visible) == 0:
            return (clip.name, "no_object")
        if len(visible) > self.max_objects:
            visible = np.sort(rng.choice(visible, self.max_objects, replace=False))
        unique = sorted(set(frame_idx))
        pos = [unique.index(t) for t in frame_idx]
        frames = prepare_clip_frames(np.stack([clip.frame(t) for t in unique]), size)[pos]
        masks = prepare_clip_masks(clip.object_masks(unique, visible), size)[pos]
        item = {"frames": frames, "masks": masks, "obj_ids": [clip.obj_ids[k] for k in visible],
                "frame_indices": frame_idx, "reversed": reverse, "name": clip.name, "padded_frames": padded}
        structures = getattr(self.dataset, "structures", None)  # named objects (REFUGE: id k is structures[k - 1])
        if structures and all(1 <= i <= len(structures) for i in item["obj_ids"]):
            item["structures"] = [structures[i - 1] for i in item["obj_ids"]]
        return item

    def _name(self, index: int) -> str:
        names = getattr(self.dataset, "names", None)
        return str(names[index]) if names is not None else f"clip {index}"

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        index, draw = key if isinstance(key, tuple) else (key, 0)
        if not (_is_int(index) and _is_int(draw)) or not 0 <= index < len(self.dataset) or draw < 0:
            raise IndexError(f"key: expected (index, draw) with 0 <= index < {len(self.dataset)} and draw >= 0, "
                             f"got {key!r}")
        rng = np.random.default_rng([self.seed, int(index), int(draw)])
        skipped: list = []
        for _ in range(self.max_redraws):
            out = self._try(int(index), rng)
            if isinstance(out, dict):
                out["skipped"] = skipped
                if out["padded_frames"]:
                    self.counts["padded"] += 1
                return out
            name, reason = out
            skipped.append((name, reason))
            self.counts[f"skipped_{reason.split(':')[0]}"] += 1
            index = int(rng.integers(len(self.dataset)))
        reasons = Counter(r.split(":")[0] for _, r in skipped)
        raise ValueError(f"no usable clip after {self.max_redraws} tries for key {key!r}: skipped {dict(reasons)} "
                         f"(num_frames={self.num_frames}, short_clips={self.short_clips!r}); e.g. "
                         f"{skipped[0][0]}: {skipped[0][1]}. Lower num_frames, use short_clips='pad', or check the "
                         "dataset's clips have objects")


def collate_clips(items: list) -> dict:
    """Batch B windows of one length T: ``frames`` T x B x 3 x S x S; the objects of all clips together,
    ``masks`` T x N x S x S with ``obj_to_clip`` (N, long: which clip each object belongs to) and ``obj_ids``;
    ``names``, ``frame_indices``, ``reversed``, ``padded`` (names of padded clips) and ``skipped`` (all the
    ``(name, reason)`` pairs passed over while drawing the batch); ``structures`` (N: each object's structure
    name) when every item names them (REFUGE's disc and cup)."""
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"items: expected a non-empty list of TrainingClips items (dicts), got {items!r:.100}")
    shapes = {tuple(i["frames"].shape) for i in items}
    if len(shapes) != 1:
        raise ValueError(f"items: all windows must have one T x 3 x S x S shape, got {sorted(shapes)}")
    masks = [i["masks"] for i in items]
    named = {"structures": [s for i in items for s in i["structures"]]} if all("structures" in i for i in items) else {}
    return {
        **named,
        "frames": torch.stack([i["frames"] for i in items], dim=1),
        "masks": torch.cat(masks, dim=1),
        "obj_to_clip": torch.cat([torch.full((m.shape[1],), b, dtype=torch.long) for b, m in enumerate(masks)]),
        "obj_ids": [v for i in items for v in i["obj_ids"]],
        "names": [i["name"] for i in items],
        "frame_indices": [i["frame_indices"] for i in items],
        "reversed": [i["reversed"] for i in items],
        "padded": [i["name"] for i in items if i["padded_frames"]],
        "skipped": [s for i in items for s in i["skipped"]],
    }

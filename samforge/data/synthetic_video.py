"""Deterministic synthetic video clips: the embedded default for video tracking and its evaluation.

Each clip shows a few textured objects (the shapes and textures of :mod:`samforge.data.synthetic`) over a
textured background that pans slightly. Objects follow smooth random trajectories with a velocity, rotate,
deform (their scale and aspect breathe, their outline wobbles), occlude each other by a depth order that can
change during the clip, and some leave the frame (or enter it later). The masks are the *visible* parts
after occlusion, so they are pairwise disjoint on every frame; an object may be absent on some frames.

    >>> clip = make_clip(0, num_frames=4, image_size=(64, 64))
    >>> clip.frames.shape, clip.masks.shape[0], clip.masks.shape[2:]
    ((4, 64, 64, 3), 4, (64, 64))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from samforge.data.davis_dataset import VideoClip, write_davis_clip
from samforge.data.synthetic import (
    MIN_VISIBLE_FRACTION,
    SHAPE_KINDS,
    TEXTURE_KINDS,
    _background,
    _check_args,
    _hsv,
    _is_int,
    _shape_mask,
    _texture,
)

__all__ = ["MOTION_KINDS", "SyntheticClip", "SyntheticVideoDataset", "make_clip", "make_clips"]

MOTION_KINDS = ("stay", "leave", "enter")  # stays in view (bouncing off the borders), leaves, or enters later


@dataclass
class SyntheticClip:
    """A synthetic clip with its per-frame visible instance masks (object k keeps index k on every frame)."""

    frames: np.ndarray  # T x H x W x 3 uint8
    masks: np.ndarray  # T x K x H x W bool: visible parts, pairwise disjoint per frame, possibly empty
    shapes: list  # K shape kinds (one of SHAPE_KINDS each)
    motions: list  # K motion kinds (one of MOTION_KINDS each)
    amodal: np.ndarray = field(repr=False)  # T x K x H x W bool: each object's whole in-frame extent
    depth: np.ndarray = field(repr=False)  # T x K int: paint rank on each frame (0 = painted first, at the back)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_objects(self) -> int:
        return int(self.masks.shape[1])

    def labels(self) -> np.ndarray:
        """T x H x W uint8 label maps: 0 background, k + 1 for object k (the DAVIS annotation values)."""
        out = np.zeros(self.masks.shape[:1] + self.masks.shape[2:], dtype=np.uint8)
        for k in range(self.num_objects):
            out[self.masks[:, k]] = k + 1
        return out

    def to_video_clip(self, name: str) -> VideoClip:
        """The clip as the video evaluator reads it (object ids 1..K, as in the written annotations)."""
        return VideoClip(name=name, video=self.frames, labels=self.labels(),
                         obj_ids=list(range(1, self.num_objects + 1)),
                         frame_names=[f"{t:05d}" for t in range(self.num_frames)])

    def write_davis(self, root: Union[str, Path], name: str) -> Path:
        """Write ``root/JPEGImages/<name>/00000.jpg ...`` and ``root/Annotations/<name>/00000.png ...`` (palette
        PNGs, value k + 1 for object k); returns the clip's frame folder."""
        return write_davis_clip(root, name, self.frames, self.labels())


@dataclass
class _Object:
    """Everything needed to render one object on any frame (no randomness left)."""

    kind: str
    motion: str
    mask: np.ndarray  # S x S float32 template, centred
    texture: np.ndarray  # S x S x 3 float32
    half: int  # template half side (pixels); its centre is at (half, half)
    r: float
    centres: np.ndarray  # T x 2 (x, y)
    angle0: float
    spin: float
    scales: np.ndarray  # T x 2 (sx, sy)
    wobble_amp: float
    wobble_len: float
    wobble_phase: np.ndarray  # 2
    wobble_speed: float
    depth: np.ndarray  # T: smaller = further back


def _check_clip_args(num_frames: object, speed: object, deform: object, leave_prob: object,
                     enter_prob: object) -> None:
    if not _is_int(num_frames) or not 1 <= num_frames <= 10_000:
        raise ValueError(f"num_frames: expected an int in [1, 10000], got {num_frames!r}")
    for name, value, hi in (("speed", speed, 10.0), ("deform", deform, 0.5)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= float(value) <= hi:
            raise ValueError(f"{name}: expected a number in [0, {hi}], got {value!r}")
    for name, value in (("leave_prob", leave_prob), ("enter_prob", enter_prob)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    if float(leave_prob) + float(enter_prob) > 1.0:
        raise ValueError(f"leave_prob + enter_prob must be <= 1, got {leave_prob} + {enter_prob}")


def _exit_distance(p: np.ndarray, d: np.ndarray, h: int, w: int, ext: float) -> float:
    """How far from ``p`` along the unit direction ``d`` until a disc of radius ``ext`` is wholly off the frame."""
    dist = []
    for axis, size in ((0, w), (1, h)):
        if d[axis] > 1e-6:
            dist.append((size + ext - p[axis]) / d[axis])
        elif d[axis] < -1e-6:
            dist.append((p[axis] + ext) / -d[axis])
    return float(min(dist))


def _trajectory(rng: np.random.Generator, motion: str, t_count: int, h: int, w: int, s: float,
                speed: float, ext: float) -> np.ndarray:
    """Centres (T x 2, x/y) of one object."""
    size = np.array([w, h], dtype=np.float64)
    if motion == "stay":
        p = rng.uniform(0.25, 0.75, 2) * size
        ang = rng.uniform(0, 2 * np.pi)
        base = s * rng.uniform(0.01, 0.03) * speed
        v = base * np.array([np.cos(ang), np.sin(ang)])
        lo, hi = 0.12 * size, 0.88 * size
        out = np.empty((t_count, 2))
        for t in range(t_count):
            out[t] = p
            v = v + rng.normal(0, 0.25 * base + 1e-9, 2)  # a smooth random walk of the velocity
            norm = np.linalg.norm(v)
            if norm > 1.5 * base:
                v *= 1.5 * base / norm
            p = p + v
            for a in range(2):  # bounce off a margin inside the borders
                if (p[a] < lo[a] and v[a] < 0) or (p[a] > hi[a] and v[a] > 0):
                    v[a] = -v[a]
        return out
    # leave: a straight line that takes the object wholly off the frame after n_out frames; enter: reversed
    p = rng.uniform(0.3, 0.7, 2) * size
    ang = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(ang), np.sin(ang)])
    n_out = max(1, int(rng.integers(math.ceil(0.5 * (t_count - 1)), math.ceil(0.9 * (t_count - 1)) + 1)))
    step = _exit_distance(p, d, h, w, ext) / n_out * (1.0 if speed > 0 else 0.0)
    out = p + (np.arange(t_count)[:, None] * step) * d
    return out[::-1].copy() if motion == "enter" else out


def _make_object(rng: np.random.Generator, kind: str, motion: str, t_count: int, h: int, w: int, s: float,
                 r: float, hue: float, speed: float, deform: float) -> _Object:
    half = int(math.ceil(1.8 * r)) + 2
    side = 2 * half + 1
    mask = _shape_mask(rng, kind, side, side, float(half), float(half), r).astype(np.float32)
    color = _hsv(hue, rng.uniform(0.5, 0.95), rng.uniform(0.5, 1.0))
    tex_kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    texture = np.ascontiguousarray(_texture(rng, tex_kind, color, (0, side, 0, side), float(half), float(half), r),
                                   dtype=np.float32)
    t = np.arange(t_count, dtype=np.float64)
    growth = np.exp(rng.uniform(-0.3, 0.3) * deform / 0.15 * t / max(t_count - 1, 1))  # slow grow / shrink
    breathe = 1.0 + deform * np.sin(rng.uniform(0.15, 0.5) * t + rng.uniform(0, 2 * np.pi))
    aspect = 0.5 * deform * np.sin(rng.uniform(0.15, 0.5) * t + rng.uniform(0, 2 * np.pi))
    scales = np.stack([growth * breathe * (1 + aspect), growth * breathe * (1 - aspect)], 1)
    ext = half * math.sqrt(2.0) * float(scales.max()) + deform * r + 2  # the template's reach on the frame
    centres = _trajectory(rng, motion, t_count, h, w, s, speed, ext)
    return _Object(
        kind=kind, motion=motion, mask=mask, texture=texture, half=half, r=r, centres=centres,
        angle0=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-0.12, 0.12) * speed, scales=scales,
        wobble_amp=0.3 * deform * r, wobble_len=r * rng.uniform(1.0, 2.0),
        wobble_phase=rng.uniform(0, 2 * np.pi, 2), wobble_speed=rng.uniform(0.2, 0.6), depth=np.zeros(t_count),
    )


def _render(obj: _Object, t: int, h: int, w: int) -> Tuple[Tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """The object on frame ``t``: (y0, y1, x0, x1) of its box on the frame, its mask and texture over that box;
    None when it is wholly off the frame."""
    cx, cy = obj.centres[t]
    sx, sy = obj.scales[t]
    reach = obj.half * math.sqrt(2.0) * max(sx, sy) + obj.wobble_amp + 2
    x0, x1 = max(0, int(math.floor(cx - reach))), min(w, int(math.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(math.floor(cy - reach))), min(h, int(math.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    ang = obj.angle0 + obj.spin * t
    c, s = math.cos(ang), math.sin(ang)
    qx, qy = xx - cx, yy - cy  # frame -> object coordinates: un-rotate, un-scale, then wobble
    u = (c * qx + s * qy) / sx
    v = (-s * qx + c * qy) / sy
    phase = obj.wobble_speed * t
    k = 2 * np.pi / obj.wobble_len
    u, v = (u + obj.wobble_amp * np.sin(k * v + obj.wobble_phase[0] + phase),
            v + obj.wobble_amp * np.sin(k * u + obj.wobble_phase[1] - phase))
    map_x = (u + obj.half).astype(np.float32)
    map_y = (v + obj.half).astype(np.float32)
    mask = cv2.remap(obj.mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.5
    if not mask.any():
        return None
    tex = cv2.remap(obj.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return (y0, y1, x0, x1), mask, tex


def make_clip(seed: int, num_frames: int = 16, image_size: Tuple[int, int] = (256, 256),
              num_objects: Union[int, Tuple[int, int]] = 3, *, speed: float = 1.0, deform: float = 0.15,
              leave_prob: float = 0.3, enter_prob: float = 0.15) -> SyntheticClip:
    """Generate one deterministic clip.

    Args:
        seed: non-negative int; the same arguments always give the same clip.
        num_frames: T, 1..10000.
        image_size: (H, W), each >= 32.
        num_objects: how many objects, an int or an inclusive (min, max). An object never visible on at
            least 0.3% of the image on some frame is left out, so K can be smaller (it is always >= 1).
        speed: scales the motion (0: objects stand still, only deforming; 1: the default).
        deform: amplitude of the scale / aspect breathing and the outline wobble, in [0, 0.5].
        leave_prob / enter_prob: chance that an object (other than the first) leaves the frame during the
            clip, or enters it from outside; the others stay in view, bouncing off the borders.

    Returns:
        SyntheticClip: frames T x H x W x 3 uint8, masks T x K x H x W bool (visible parts, pairwise disjoint
        per frame, possibly empty on some frames), shapes, motions, amodal masks and the per-frame depth order.
    """
    h, w, lo, hi = _check_args(seed, image_size, num_objects)
    _check_clip_args(num_frames, speed, deform, leave_prob, enter_prob)
    t_count = int(num_frames)
    speed, deform = float(speed), float(deform)
    rng = np.random.default_rng([seed, 0x5F1D])  # a stream of its own: clip n is not scene n
    margin = max(4, round(0.04 * min(h, w)))
    background = _background(rng, h + 2 * margin, w + 2 * margin).astype(np.float32)
    n = int(rng.integers(lo, hi + 1))
    hues = (rng.random() + np.arange(n) / n + rng.uniform(-0.2, 0.2, n) / n) % 1.0
    rng.shuffle(hues)
    s = min(np.sqrt(h * w), 1.5 * min(h, w))
    min_area = max(1, int(np.ceil(MIN_VISIBLE_FRACTION * h * w)))
    r_min = 1.5 * np.sqrt(min_area / np.pi)
    objects = []
    for i in range(n):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        u = rng.random()
        motion = "stay" if i == 0 or u >= leave_prob + enter_prob else ("leave" if u < leave_prob else "enter")
        r = max(s * rng.uniform(0.1, 0.2), r_min)
        objects.append(_make_object(rng, kind, motion, t_count, h, w, s, r, hues[i], speed, deform))
    # depth: a start order plus a slow drift, so that the order can change during the clip
    t = np.arange(t_count)
    for i, obj in enumerate(objects):
        obj.depth = i + rng.uniform(-0.3, 0.3) + rng.normal(0, 1.2) * t / max(t_count - 1, 1)
    pan_amp = rng.uniform(0.3, 0.9, 2) * margin
    pan_freq, pan_phase = rng.uniform(0.05, 0.25, 2), rng.uniform(0, 2 * np.pi, 2)
    noise = [rng.normal(0, 3.0, (h, w, 3)).astype(np.float32) for _ in range(t_count)]

    rendered = [[_render(obj, ti, h, w) for obj in objects] for ti in range(t_count)]
    order = np.stack([np.argsort(np.argsort([obj.depth[ti] for obj in objects], kind="stable"), kind="stable")
                      for ti in range(t_count)]) if t_count else np.zeros((0, n), int)

    def visible_areas(keep: list) -> np.ndarray:
        areas = np.zeros((t_count, n), dtype=np.int64)
        for ti in range(t_count):
            lab = np.full((h, w), -1, dtype=np.int64)
            for k in sorted(keep, key=lambda k: order[ti, k]):
                item = rendered[ti][k]
                if item is not None:
                    (y0, y1, x0, x1), m, _ = item
                    lab[y0:y1, x0:x1][m] = k
            areas[ti] = np.bincount(lab[lab >= 0], minlength=n)
        return areas

    keep = list(range(n))
    while keep:  # leave out objects never visible enough, the least visible first
        best = visible_areas(keep).max(axis=0)
        failing = [k for k in keep if best[k] < min_area]
        if not failing:
            break
        keep.remove(min(failing, key=lambda k: (best[k], -k)))
    if not keep:  # unreachable in practice: the first object stays in view
        raise RuntimeError(f"make_clip could not keep any object visible (seed={seed}, size={(h, w)})")

    frames = np.empty((t_count, h, w, 3), dtype=np.uint8)
    masks = np.zeros((t_count, len(keep), h, w), dtype=bool)
    amodal = np.zeros_like(masks)
    depth = np.zeros((t_count, len(keep)), dtype=np.int64)
    for ti in range(t_count):
        ox = margin + pan_amp[0] * math.sin(pan_freq[0] * ti + pan_phase[0])
        oy = margin + pan_amp[1] * math.sin(pan_freq[1] * ti + pan_phase[1])
        shift = np.array([[1.0, 0.0, -ox], [0.0, 1.0, -oy]], dtype=np.float64)
        image = cv2.warpAffine(background, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        lab = np.full((h, w), -1, dtype=np.int64)
        ranked = sorted(range(len(keep)), key=lambda j: order[ti, keep[j]])
        for rank, j in enumerate(ranked):
            depth[ti, j] = rank
            item = rendered[ti][keep[j]]
            if item is None:
                continue
            (y0, y1, x0, x1), m, tex = item
            image[y0:y1, x0:x1][m] = tex[m]
            lab[y0:y1, x0:x1][m] = j
            amodal[ti, j, y0:y1, x0:x1] = m
        masks[ti] = lab[None] == np.arange(len(keep))[:, None, None]
        frames[ti] = np.clip(image + noise[ti], 0, 255).round().astype(np.uint8)
    return SyntheticClip(frames=frames, masks=masks, shapes=[objects[k].kind for k in keep],
                         motions=[objects[k].motion for k in keep], amodal=amodal, depth=depth)


def make_clips(n: int, seed: int = 0, **kw) -> list:
    """``n`` clips with seeds ``seed, seed + 1, ...``; ``kw`` goes to :func:`make_clip`."""
    if not _is_int(n) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    return [make_clip(seed + i, **kw) for i in range(n)]


class SyntheticVideoDataset:
    """Clips ``seed .. seed + num_clips - 1`` generated when asked for, as :class:`VideoClip` items named
    ``synthetic-video:<seed>`` (the form the video evaluator and the DAVIS reader share)."""

    def __init__(self, num_clips: int, num_frames: int = 16, image_size: Sequence[int] = (256, 256), seed: int = 0,
                 num_objects: Union[int, Tuple[int, int]] = 3) -> None:
        if not _is_int(num_clips) or num_clips < 1:
            raise ValueError(f"num_clips: expected a positive int, got {num_clips!r}")
        _check_args(seed, tuple(image_size) if isinstance(image_size, Sequence) else image_size, num_objects)
        _check_clip_args(num_frames, 1.0, 0.15, 0.3, 0.15)
        self.num_clips, self.num_frames, self.seed = int(num_clips), int(num_frames), int(seed)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_objects = num_objects
        self.bad_samples: list = []

    @property
    def names(self) -> list:
        return [f"synthetic-video:{self.seed + i}" for i in range(self.num_clips)]

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int) -> VideoClip:
        if not _is_int(i) or not 0 <= i < self.num_clips:
            raise IndexError(f"clip index {i!r} out of range 0..{self.num_clips - 1}")
        clip = make_clip(self.seed + i, num_frames=self.num_frames, image_size=self.image_size,
                         num_objects=self.num_objects)
        return clip.to_video_clip(self.names[i])

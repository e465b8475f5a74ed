"""Which past frames a SAM 2 frame attends to, and the sine encoding of temporal distances.

Tracking keeps, per object, the outputs of *conditioning* frames (frames the user prompted) and of
*non-conditioning* frames (frames predicted from memory). A frame attends to: the conditioning frames
(all of them, or the ``max_cond_frames_in_attn`` closest), the ``num_maskmem - 1`` most recent tracked frames
(every ``stride``-th frame beyond the last one), and the object pointers of up to ``max_obj_ptrs`` frames.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


def select_closest_cond_frames(
    frame_idx: int, cond_frame_outputs: Mapping[int, Any], max_cond_frame_num: int
) -> tuple[dict[int, Any], dict[int, Any]]:
    """Split the conditioning frames into (selected, unselected) for ``frame_idx``.

    With ``max_cond_frame_num == -1`` (or few enough frames) all are selected. Otherwise the closest one
    before the frame, the closest one at or after it, then the temporally closest others fill the quota.
    """
    if max_cond_frame_num == -1 or len(cond_frame_outputs) <= max_cond_frame_num:
        return dict(cond_frame_outputs), {}
    if max_cond_frame_num < 2:
        raise ValueError(f"max_cond_frames_in_attn must be -1 or at least 2, got {max_cond_frame_num}")
    chosen: list[int] = []
    before = [t for t in cond_frame_outputs if t < frame_idx]
    after = [t for t in cond_frame_outputs if t >= frame_idx]
    if before:
        chosen.append(max(before))
    if after:
        chosen.append(min(after))
    others = sorted((t for t in cond_frame_outputs if t not in chosen), key=lambda t: abs(t - frame_idx))
    chosen += others[: max_cond_frame_num - len(chosen)]
    selected = {t: cond_frame_outputs[t] for t in chosen}
    unselected = {t: v for t, v in cond_frame_outputs.items() if t not in selected}
    return selected, unselected


def memory_frame_index(frame_idx: int, t_rel: int, stride: int, reverse: bool) -> int:
    """The frame ``t_rel`` memory slots before ``frame_idx`` (after it when tracking in reverse).

    Slot 1 is always the adjacent frame; slots 2, 3, ... step through every ``stride``-th frame, starting from
    the nearest multiple of ``stride`` beyond the adjacent one.
    """
    if t_rel == 1:
        return frame_idx + 1 if reverse else frame_idx - 1
    if reverse:
        nearest = -(-(frame_idx + 2) // stride) * stride  # ceil to a multiple of stride
        return nearest + (t_rel - 2) * stride
    nearest = ((frame_idx - 2) // stride) * stride  # floor to a multiple of stride
    return nearest - (t_rel - 2) * stride


def memory_window(num_maskmem: int, stride: int) -> int:
    """How many frames back (or ahead, in reverse) a frame's spatial memory can reach."""
    if num_maskmem <= 1:
        return 0
    return 1 + (num_maskmem - 2) * stride


def get_1d_sine_pe(pos_inds: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    """Transformer sine/cosine encoding of (normalised) positions: ``... -> ... x dim``."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=pos_inds.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    angles = pos_inds.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)

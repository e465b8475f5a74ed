"""SAM2VideoPredictor: prompt objects on some frames of a clip, then propagate them through it with SAM 2.

A drop-in for ``sam2.sam2_video_predictor.SAM2VideoPredictor``: the same workflow, names, arguments and
returns (``init_state`` -> ``add_new_points_or_box`` / ``add_new_mask`` -> ``propagate_in_video`` yielding
``(frame_idx, obj_ids, video_res_masks)``; ``clear_all_prompts_in_frame``, ``remove_object``, ``reset_state``),
with the official inference-state layout. It wraps a ``SAM2Base`` (``predictor.model``) and exposes its whole
surface, as the official predictor (a ``SAM2Base`` subclass) has it: see :class:`SAM2VideoPredictor`.

Differences, all keyword-only or invisible in results:
- frames are read lazily (``samforge.predict.video_frames``): a long clip is not held as float tensors;
- ``init_state(..., release_old_memory=True)`` drops, while propagating, the memory features and masks of
  frames that have left the model's memory window (object pointers are kept as long as the model reads them),
  so memory stays bounded on long clips. Propagation results are unchanged; a later correction on a released
  frame sees fewer memories than the official predictor would give it;
- bad inputs (frame index out of range, malformed points/boxes/masks, unknown objects) raise errors that say
  what was expected, before anything in the state changes.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from samforge.models.sam2 import SAM2Base, build_sam2
from samforge.models.sam2.memory_bank import memory_window
from samforge.models.sam2.sam2_base import NO_OBJ_SCORE
from samforge.predict.checks import SAM2_POINT_LABELS, check_box, check_points, to_float_array
from samforge.predict.fill_holes import fill_holes_in_mask_scores
from samforge.predict.predictor import predictor_precision
from samforge.predict.pretrained import resolve_sam2_pretrained
from samforge.predict.sam2_predictor import forward_image_in
from samforge.predict.video_frames import VideoFrames

# what the official build_sam2_video_predictor adds with apply_postprocessing=True (beyond the image ones)
VIDEO_POSTPROCESSING_OVERRIDES = (  # video_predictor_for applies the same to a model already built
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
)
PROMPT_CLAMP = 32.0  # previous logits fed back with new clicks are clamped to +-32, as official


def _new_output_dict() -> dict[str, dict[int, Any]]:
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


class SAM2VideoPredictor(nn.Module):
    """Track objects through a clip. ``model``: a ``SAM2Base`` (e.g. from ``build_sam2``); the other
    arguments are the official predictor's (``build_sam2_video_predictor`` sets them from the config).

    The official predictor *is* a ``SAM2Base``, and client code reaches into it (``predictor.to(device)``,
    ``predictor.image_encoder``, ``predictor.forward_image``, ``predictor.track_step``,
    ``predictor._apply_non_overlapping_constraints`` in ``tools/vos_inference.py``, ``load_state_dict``). This one
    is an ``nn.Module`` whose only child is the model, and delegates: every ``SAM2Base`` attribute or method it
    does not define itself is the model's (read through ``__getattr__``, and set on the model when assigned),
    ``.to`` / ``.eval`` / ``.parameters()`` act on the model, and ``state_dict`` / ``load_state_dict`` use the
    model's (the official) key names. Delegation rather than a subclass because the predictor wraps a model
    that is already built, and may be shared (``video_predictor_for`` puts one model behind an image and a
    video predictor): a subclass would need its own copy of the model's state, two objects that drift apart.
    Differences that remain: ``isinstance(predictor, SAM2Base)`` is False, and ``named_parameters`` prefix
    ``model.``.
    """

    _OWN = ("fill_hole_area", "non_overlap_masks", "clear_non_cond_mem_around_input",
            "add_all_frames_to_correct_as_cond", "precision")

    def __init__(
        self,
        model: SAM2Base,
        fill_hole_area: int = 0,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
    ) -> None:
        if not isinstance(model, SAM2Base):
            raise TypeError(f"model must be a SAM2Base (from build_sam2), got {type(model).__name__}")
        if not isinstance(fill_hole_area, int) or fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be an int >= 0, got {fill_hole_area!r}")
        super().__init__()
        self.model = model
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = bool(non_overlap_masks)
        self.clear_non_cond_mem_around_input = bool(clear_non_cond_mem_around_input)
        self.add_all_frames_to_correct_as_cond = bool(add_all_frames_to_correct_as_cond)
        #: the image encoder's precision per frame (samforge's addition; see ``SAM2ImagePredictor``): "fp32" exact
        self.precision = "fp32"

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.model.image_size

    # ------------------------------------------------------------------------------------------------
    # The official SAM2Base surface, delegated to the model

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, child modules ("model")
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None or name.startswith("__"):
                raise
            return getattr(model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        model = self.__dict__.get("_modules", {}).get("model")
        if (model is not None and name not in self._OWN and name not in self.__dict__
                and not hasattr(type(self), name) and hasattr(model, name)):
            setattr(model, name, value)  # e.g. predictor.binarize_mask_from_pts_for_mem_enc = True
        else:
            super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self.model)))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The model's state dict, under the official key names (no ``model.`` prefix)."""
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load an official ``SAM2Base`` state dict into the model."""
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike, **kwargs: Any) -> "SAM2VideoPredictor":
        """A predictor on a local SAM 2 checkpoint file or folder (see ``build_sam2_video_predictor_hf``)."""
        return build_sam2_video_predictor_hf(model_id, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # State

    @torch.inference_mode()
    def init_state(
        self,
        video_path: Any,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
        *,
        release_old_memory: bool = False,
        frame_cache_size: int | None = 8,
    ) -> dict[str, Any]:
        """A new inference state for a clip: a folder of JPEG/PNG frames, a video file (PyAV), or a uint8
        ``T x H x W x 3`` array (a volume's slices, say). Frames are read when needed and ``frame_cache_size``
        preprocessed ones are kept (``offload_video_to_cpu`` keeps them on the CPU when the model is on a GPU;
        ``async_loading_frames`` is accepted: loading is already lazy, and the next frame is prefetched while
        propagating). ``offload_state_to_cpu`` keeps the memory bank on the CPU."""
        compute_device = self.device
        frames = VideoFrames(
            video_path,
            self.image_size,
            device="cpu" if offload_video_to_cpu else compute_device,
            cache_size=frame_cache_size,
        )
        state: dict[str, Any] = {
            "images": frames,
            "num_frames": len(frames),
            "offload_video_to_cpu": offload_video_to_cpu,
            "offload_state_to_cpu": offload_state_to_cpu,
            "video_height": frames.video_height,
            "video_width": frames.video_width,
            "device": compute_device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else compute_device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            "release_old_memory": bool(release_old_memory),
        }
        self._get_image_feature(state, frame_idx=0, batch_size=1)  # warm up on frame 0, as official
        return state

    def _obj_id_to_idx(self, state: dict[str, Any], obj_id: Any) -> int:
        """The model-side index of a client object id, creating the object when new."""
        try:
            hash(obj_id)
        except TypeError as e:
            raise TypeError(f"obj_id must be hashable (an int, usually), got {type(obj_id).__name__}") from e
        idx = state["obj_id_to_idx"].get(obj_id)
        if idx is not None:
            return idx
        idx = len(state["obj_id_to_idx"])
        state["obj_id_to_idx"][obj_id] = idx
        state["obj_idx_to_id"][idx] = obj_id
        state["obj_ids"] = list(state["obj_id_to_idx"])
        state["point_inputs_per_obj"][idx] = {}
        state["mask_inputs_per_obj"][idx] = {}
        state["output_dict_per_obj"][idx] = _new_output_dict()
        state["temp_output_dict_per_obj"][idx] = _new_output_dict()
        state["frames_tracked_per_obj"][idx] = {}
        return idx

    def _obj_idx_to_id(self, state: dict[str, Any], obj_idx: int) -> Any:
        return state["obj_idx_to_id"][obj_idx]

    def _get_obj_num(self, state: dict[str, Any]) -> int:
        return len(state["obj_idx_to_id"])

    # ------------------------------------------------------------------------------------------------
    # Prompts

    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: dict[str, Any],
        frame_idx: int,
        obj_id: Any,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> tuple[int, list[Any], torch.Tensor]:
        """Points (``N x 2`` pixels of the video, labels 1 foreground / 0 background) and/or a box
        (``x0, y0, x1, y1``) for one object on one frame. Returns ``(frame_idx, obj_ids, video_res_masks)``
        with the mask logits of every object on that frame, ``num_objects x 1 x H x W``."""
        state = inference_state
        self._check_frame_idx(state, frame_idx)
        frame_hw = (state["video_height"], state["video_width"]) if normalize_coords else (1, 1)
        points, labels, box_t = self._check_points(points, labels, box, clear_old_points, frame_hw)
        obj_idx = self._obj_id_to_idx(state, obj_id)
        if box_t is not None:  # the box is the first two points, labels 2 and 3, as SAM 2 was trained
            points = torch.cat([box_t, points], dim=1)
            labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labels], dim=1)
        if normalize_coords:
            points = points / torch.tensor([state["video_width"], state["video_height"]])
        points = (points * self.image_size).to(state["device"])
        labels = labels.to(state["device"])

        old = state["point_inputs_per_obj"][obj_idx].get(frame_idx) if not clear_old_points else None
        if old is not None:
            points = torch.cat([old["point_coords"], points], dim=1)
            labels = torch.cat([old["point_labels"], labels], dim=1)
        point_inputs = {"point_coords": points, "point_labels": labels}
        state["point_inputs_per_obj"][obj_idx][frame_idx] = point_inputs
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._add_prompt(state, frame_idx, obj_idx, point_inputs=point_inputs, mask_inputs=None)

    def add_new_points(self, *args: Any, **kwargs: Any) -> tuple[int, list[Any], torch.Tensor]:
        """Deprecated official name of ``add_new_points_or_box``."""
        return self.add_new_points_or_box(*args, **kwargs)

    @torch.inference_mode()
    def add_new_mask(
        self, inference_state: dict[str, Any], frame_idx: int, obj_id: Any, mask: Any
    ) -> tuple[int, list[Any], torch.Tensor]:
        """A mask prompt (``H x W`` bool/0-1, any size) for one object on one frame."""
        state = inference_state
        self._check_frame_idx(state, frame_idx)
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask)).bool()
        if mask.ndim != 2 or mask.numel() == 0:
            raise ValueError(f"mask must be a non-empty 2-D H x W array, got shape {tuple(mask.shape)}")
        obj_idx = self._obj_id_to_idx(state, obj_id)
        mask_inputs = mask[None, None].float().to(state["device"])
        s = self.image_size
        if tuple(mask.shape) != (s, s):
            mask_inputs = F.interpolate(mask_inputs, size=(s, s), align_corners=False, mode="bilinear", antialias=True)
            mask_inputs = (mask_inputs >= 0.5).float()
        state["mask_inputs_per_obj"][obj_idx][frame_idx] = mask_inputs
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._add_prompt(state, frame_idx, obj_idx, point_inputs=None, mask_inputs=mask_inputs)

    def _add_prompt(
        self,
        state: dict[str, Any],
        frame_idx: int,
        obj_idx: int,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
    ) -> tuple[int, list[Any], torch.Tensor]:
        """Decode one object's prompts on a frame (memory encoding waits for propagation) and return the
        consolidated masks of all objects on it."""
        tracked = state["frames_tracked_per_obj"][obj_idx]
        is_init_cond_frame = frame_idx not in tracked
        reverse = False if is_init_cond_frame else tracked[frame_idx]["reverse"]
        output_dict = state["output_dict_per_obj"][obj_idx]
        temp_dict = state["temp_output_dict_per_obj"][obj_idx]
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"

        prev_logits = None
        if point_inputs is not None:  # earlier logits of this object on this frame refine the new clicks
            prev = temp_dict[key].get(frame_idx)
            if prev is None:
                prev = output_dict["cond_frame_outputs"].get(frame_idx)
            if prev is None:
                prev = output_dict["non_cond_frame_outputs"].get(frame_idx)
            if prev is not None and prev["pred_masks"] is not None:
                prev_logits = prev["pred_masks"].to(state["device"], non_blocking=True)
                prev_logits = torch.clamp(prev_logits, -PROMPT_CLAMP, PROMPT_CLAMP)
        current_out, _ = self._run_single_frame_inference(
            state,
            output_dict=output_dict,
            frame_idx=frame_idx,
            batch_size=1,
            is_init_cond_frame=is_init_cond_frame,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            reverse=reverse,
            run_mem_encoder=False,  # encoded at the start of propagation, after all objects' clicks
            prev_sam_mask_logits=prev_logits,
        )
        temp_dict[key][frame_idx] = current_out
        consolidated = self._consolidate_temp_output_across_obj(state, frame_idx, is_cond, consolidate_at_video_res=True)
        _, video_res_masks = self._get_orig_video_res_output(state, consolidated["pred_masks_video_res"])
        return frame_idx, state["obj_ids"], video_res_masks

    # ------------------------------------------------------------------------------------------------
    # Propagation

    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state: dict[str, Any]) -> None:
        """Encode the memory of newly prompted frames and move them into the memory bank."""
        state = inference_state
        num_objects = self._get_obj_num(state)
        if num_objects == 0:
            raise RuntimeError("No input points or masks are provided for any object; please add inputs first.")
        for obj_idx in range(num_objects):
            output_dict = state["output_dict_per_obj"][obj_idx]
            temp_dict = state["temp_output_dict_per_obj"][obj_idx]
            for key in ("non_cond_frame_outputs", "cond_frame_outputs"):
                for frame_idx, out in temp_dict[key].items():
                    if out["maskmem_features"] is None:
                        high_res = F.interpolate(
                            out["pred_masks"].to(state["device"]),
                            size=(self.image_size, self.image_size),
                            mode="bilinear",
                            align_corners=False,
                        )
                        out["maskmem_features"], out["maskmem_pos_enc"] = self._run_memory_encoder(
                            state, frame_idx, 1, high_res, out["object_score_logits"], is_mask_from_pts=True
                        )
                    output_dict[key][frame_idx] = out
                    if self.clear_non_cond_mem_around_input:
                        self._clear_obj_non_cond_mem_around_input(state, frame_idx, obj_idx)
                temp_dict[key].clear()
            if not output_dict["cond_frame_outputs"]:
                obj_id = self._obj_idx_to_id(state, obj_idx)
                raise RuntimeError(
                    f"No input points or masks are provided for object id {obj_id}; please add inputs first."
                )
            for frame_idx in output_dict["cond_frame_outputs"]:  # a prompted frame is conditioning only
                output_dict["non_cond_frame_outputs"].pop(frame_idx, None)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: dict[str, Any],
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
        """Track every object from ``start_frame_idx`` (default: the first prompted frame) forwards, or
        backwards with ``reverse``, over at most ``max_frame_num_to_track`` more frames, yielding
        ``(frame_idx, obj_ids, video_res_masks)`` per frame (mask logits, ``num_objects x 1 x H x W``)."""
        state = inference_state
        if start_frame_idx is not None:
            self._check_frame_idx(state, start_frame_idx, "start_frame_idx")
        if max_frame_num_to_track is not None and (
            not isinstance(max_frame_num_to_track, (int, np.integer)) or max_frame_num_to_track < 0
        ):
            raise ValueError(f"max_frame_num_to_track must be None or an int >= 0, got {max_frame_num_to_track!r}")
        self.propagate_in_video_preflight(state)
        obj_ids = state["obj_ids"]
        num_frames = state["num_frames"]
        num_objects = self._get_obj_num(state)
        if start_frame_idx is None:
            start_frame_idx = min(t for out in state["output_dict_per_obj"].values() for t in out["cond_frame_outputs"])
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = list(range(start_frame_idx, end - 1, -1)) if start_frame_idx > 0 else []
        else:
            end = min(start_frame_idx + max_frame_num_to_track, num_frames - 1)
            order = list(range(start_frame_idx, end + 1))

        for i, frame_idx in enumerate(tqdm(order, desc="propagate in video")):
            state["images"].prefetch(order[i + 1 : i + 9])  # read the next frames while this one runs
            per_obj = []
            for obj_idx in range(num_objects):
                output_dict = state["output_dict_per_obj"][obj_idx]
                if frame_idx in output_dict["cond_frame_outputs"]:  # a prompted frame: its output as is
                    pred_masks = output_dict["cond_frame_outputs"][frame_idx]["pred_masks"].to(
                        state["device"], non_blocking=True
                    )
                    if self.clear_non_cond_mem_around_input:
                        self._clear_obj_non_cond_mem_around_input(state, frame_idx, obj_idx)
                else:
                    current_out, pred_masks = self._run_single_frame_inference(
                        state,
                        output_dict=output_dict,
                        frame_idx=frame_idx,
                        batch_size=1,
                        is_init_cond_frame=False,
                        point_inputs=None,
                        mask_inputs=None,
                        reverse=reverse,
                        run_mem_encoder=True,
                    )
                    output_dict["non_cond_frame_outputs"][frame_idx] = current_out
                state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
                per_obj.append(pred_masks)
                if state.get("release_old_memory"):
                    self._release_behind(state, output_dict, frame_idx, reverse)
            all_masks = torch.cat(per_obj, dim=0) if len(per_obj) > 1 else per_obj[0]
            _, video_res_masks = self._get_orig_video_res_output(state, all_masks)
            yield frame_idx, obj_ids, video_res_masks

    def _release_behind(self, state: dict[str, Any], output_dict: dict[str, Any], frame_idx: int, reverse: bool) -> None:
        """Drop what no later frame of this pass reads: the memory features and masks of the tracked frame
        that just left the spatial memory window, and the whole output of the one that left the object-pointer
        window. Prompted frames, and tracked frames within reach of a prompted one (which a pass in the other
        direction from that prompt reads), are kept."""
        model = self.model
        step = 1 if reverse else -1
        stride = model.memory_temporal_stride_for_eval
        spatial_reach = memory_window(model.num_maskmem, stride)
        pointer_reach = max(model.max_obj_ptrs_in_encoder, spatial_reach + stride)
        prompted = output_dict["cond_frame_outputs"]
        non_cond = output_dict["non_cond_frame_outputs"]

        def near_prompt(t: int, reach: int) -> bool:
            return any(abs(t - c) <= reach for c in prompted)

        spatial = frame_idx + step * spatial_reach
        for t in (spatial, spatial + step * stride):  # with stride > 1 the window moves in jumps
            out = non_cond.get(t)
            if out is not None and out.get("maskmem_features") is not None and not near_prompt(t, spatial_reach):
                non_cond[t] = {**out, "maskmem_features": None, "maskmem_pos_enc": None, "pred_masks": None}
        t = frame_idx + step * pointer_reach
        if not near_prompt(t, pointer_reach):
            non_cond.pop(t, None)

    # ------------------------------------------------------------------------------------------------
    # Editing

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self, inference_state: dict[str, Any], frame_idx: int, obj_id: Any, need_output: bool = True
    ) -> tuple[int, list[Any], torch.Tensor] | None:
        """Remove one object's prompts on a frame (its output there becomes an ordinary tracked one)."""
        state = inference_state
        self._check_frame_idx(state, frame_idx)
        obj_idx = self._obj_id_to_idx(state, obj_id)
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        temp = state["temp_output_dict_per_obj"]
        temp[obj_idx]["cond_frame_outputs"].pop(frame_idx, None)
        temp[obj_idx]["non_cond_frame_outputs"].pop(frame_idx, None)
        output_dict = state["output_dict_per_obj"][obj_idx]
        out = output_dict["cond_frame_outputs"].pop(frame_idx, None)
        if out is not None:
            output_dict["non_cond_frame_outputs"][frame_idx] = out
            state["frames_tracked_per_obj"][obj_idx].pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in d["cond_frame_outputs"] for d in temp.values())
        consolidated = self._consolidate_temp_output_across_obj(state, frame_idx, is_cond, consolidate_at_video_res=True)
        _, video_res_masks = self._get_orig_video_res_output(state, consolidated["pred_masks_video_res"])
        return frame_idx, state["obj_ids"], video_res_masks

    @torch.inference_mode()
    def reset_state(self, inference_state: dict[str, Any]) -> None:
        """Remove every prompt, result and object (the frames stay loaded)."""
        state = inference_state
        self._reset_tracking_results(state)
        for key in ("obj_id_to_idx", "obj_idx_to_id", "point_inputs_per_obj", "mask_inputs_per_obj",
                    "output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            state[key].clear()
        state["obj_ids"].clear()

    def _reset_tracking_results(self, state: dict[str, Any]) -> None:
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "frames_tracked_per_obj"):
            for v in state[key].values():
                v.clear()
        for key in ("output_dict_per_obj", "temp_output_dict_per_obj"):
            for v in state[key].values():
                v["cond_frame_outputs"].clear()
                v["non_cond_frame_outputs"].clear()

    @torch.inference_mode()
    def remove_object(
        self, inference_state: dict[str, Any], obj_id: Any, strict: bool = False, need_output: bool = True
    ) -> tuple[list[Any], list[tuple[int, torch.Tensor]]]:
        """Forget an object. Returns (remaining obj_ids, [(frame_idx, video_res_masks)] of the frames where it
        had prompts). An unknown ``obj_id`` raises with ``strict``, else warns and changes nothing."""
        state = inference_state
        old_idx = state["obj_id_to_idx"].get(obj_id)
        updated: list[tuple[int, torch.Tensor]] = []
        if old_idx is None:
            msg = f"Cannot remove object id {obj_id!r} as it doesn't exist. All existing object ids: {state['obj_ids']}."
            if strict:
                raise RuntimeError(msg)
            warnings.warn(msg, stacklevel=2)
            return state["obj_ids"], updated
        if len(state["obj_id_to_idx"]) == 1:
            self.reset_state(state)
            return state["obj_ids"], updated
        input_frames = set(state["point_inputs_per_obj"][old_idx]) | set(state["mask_inputs_per_obj"][old_idx])
        for frame_idx in input_frames:
            self.clear_all_prompts_in_frame(state, frame_idx, obj_id, need_output=False)
        old_ids = state["obj_ids"]
        remaining = [i for i in range(len(old_ids)) if i != old_idx]
        new_ids = [old_ids[i] for i in remaining]
        old_to_new = {old: new for new, old in enumerate(remaining)}
        state["obj_id_to_idx"] = OrderedDict((oid, i) for i, oid in enumerate(new_ids))
        state["obj_idx_to_id"] = OrderedDict((i, oid) for i, oid in enumerate(new_ids))
        state["obj_ids"] = new_ids
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
                    "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            container = state[key]
            moved = {old_to_new[k]: v for k, v in container.items() if k in old_to_new}
            container.clear()
            container.update(moved)
        if need_output:
            temp = state["temp_output_dict_per_obj"]
            for frame_idx in input_frames:
                is_cond = any(frame_idx in d["cond_frame_outputs"] for d in temp.values())
                consolidated = self._consolidate_temp_output_across_obj(
                    state, frame_idx, is_cond, consolidate_at_video_res=True
                )
                _, video_res_masks = self._get_orig_video_res_output(state, consolidated["pred_masks_video_res"])
                updated.append((frame_idx, video_res_masks))
        return state["obj_ids"], updated

    def _clear_obj_non_cond_mem_around_input(self, state: dict[str, Any], frame_idx: int, obj_idx: int) -> None:
        """Forget one object's tracked (non-conditioning) memories within the memory window of a prompted frame,
        which may hold its outdated appearance."""
        reach = self.model.memory_temporal_stride_for_eval * self.model.num_maskmem
        non_cond = state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        for t in range(frame_idx - reach, frame_idx + reach + 1):
            non_cond.pop(t, None)

    def _clear_non_cond_mem_around_input(self, state: dict[str, Any], frame_idx: int) -> None:
        """The same for every object (the official method of that name)."""
        for obj_idx in range(self._get_obj_num(state)):
            self._clear_obj_non_cond_mem_around_input(state, frame_idx, obj_idx)

    # ------------------------------------------------------------------------------------------------
    # Internals

    def _get_orig_video_res_output(
        self, state: dict[str, Any], any_res_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks resized to the video's resolution (and made non-overlapping when configured)."""
        h, w = state["video_height"], state["video_width"]
        any_res_masks = any_res_masks.to(state["device"], non_blocking=True)
        video_res_masks = any_res_masks
        if any_res_masks.shape[-2:] != (h, w):
            video_res_masks = F.interpolate(any_res_masks, size=(h, w), mode="bilinear", align_corners=False)
        if self.non_overlap_masks:
            video_res_masks = self.model._apply_non_overlapping_constraints(video_res_masks)
        return any_res_masks, video_res_masks

    def _consolidate_temp_output_across_obj(
        self, state: dict[str, Any], frame_idx: int, is_cond: bool, consolidate_at_video_res: bool = False
    ) -> dict[str, torch.Tensor]:
        """All objects' latest masks on a frame in one ``num_objects x 1 x h x w`` tensor (objects without an
        output there get ``NO_OBJ_SCORE``)."""
        num_objects = self._get_obj_num(state)
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        if consolidate_at_video_res:
            size, mask_key = (state["video_height"], state["video_width"]), "pred_masks_video_res"
        else:
            size, mask_key = (self.image_size // 4, self.image_size // 4), "pred_masks"
        consolidated = torch.full(
            (num_objects, 1, *size), NO_OBJ_SCORE, dtype=torch.float32, device=state["storage_device"]
        )
        for obj_idx in range(num_objects):
            out = state["temp_output_dict_per_obj"][obj_idx][key].get(frame_idx)
            output_dict = state["output_dict_per_obj"][obj_idx]
            if out is None:
                out = output_dict["cond_frame_outputs"].get(frame_idx)
            if out is None:
                out = output_dict["non_cond_frame_outputs"].get(frame_idx)
            if out is None or out["pred_masks"] is None:  # never predicted there, or released
                continue
            obj_mask = out["pred_masks"]
            if obj_mask.shape[-2:] != consolidated.shape[-2:]:
                obj_mask = F.interpolate(obj_mask, size=consolidated.shape[-2:], mode="bilinear", align_corners=False)
            consolidated[obj_idx : obj_idx + 1] = obj_mask
        return {mask_key: consolidated}

    def _get_image_feature(self, state: dict[str, Any], frame_idx: int, batch_size: int) -> tuple[Any, ...]:
        """(image, backbone_out, vision_feats, vision_pos_embeds, feat_sizes) of a frame, expanded to
        ``batch_size`` objects; the most recent frame's features are cached."""
        image, backbone_out = state["cached_features"].get(frame_idx, (None, None))
        if backbone_out is None:
            image = state["images"][frame_idx].to(state["device"]).float().unsqueeze(0)
            backbone_out = forward_image_in(self.model, image, self.precision)
            state["cached_features"] = {frame_idx: (image, backbone_out)}
        expanded = {
            "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in backbone_out["vision_pos_enc"]],
        }
        return (image.expand(batch_size, -1, -1, -1),) + self.model._prepare_backbone_features(expanded)

    def _run_single_frame_inference(
        self,
        state: dict[str, Any],
        output_dict: dict[str, Any],
        frame_idx: int,
        batch_size: int,
        is_init_cond_frame: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """One tracking step on a frame -> (compact output kept in the state, mask logits on the device)."""
        _, _, feats, pos, sizes = self._get_image_feature(state, frame_idx, batch_size)
        if point_inputs is not None and mask_inputs is not None:
            raise ValueError("a frame takes points or a mask for an object, not both")
        out = self.model.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=feats,
            current_vision_pos_embeds=pos,
            feat_sizes=sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            num_frames=state["num_frames"],
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        storage = state["storage_device"]
        maskmem_features = out["maskmem_features"]
        if maskmem_features is not None:  # memories are kept in bf16, as official
            maskmem_features = maskmem_features.to(torch.bfloat16).to(storage, non_blocking=True)
        pred_masks_gpu = out["pred_masks"]
        if self.fill_hole_area > 0:
            pred_masks_gpu = fill_holes_in_mask_scores(pred_masks_gpu, self.fill_hole_area)
        compact = {
            "maskmem_features": maskmem_features,
            "maskmem_pos_enc": self._get_maskmem_pos_enc(state, out),
            "pred_masks": pred_masks_gpu.to(storage, non_blocking=True),
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }
        return compact, pred_masks_gpu

    def _run_memory_encoder(
        self,
        state: dict[str, Any],
        frame_idx: int,
        batch_size: int,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        _, _, feats, _, sizes = self._get_image_feature(state, frame_idx, batch_size)
        features, pos_enc = self.model._encode_new_memory(
            current_vision_feats=feats,
            feat_sizes=sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits,
            is_mask_from_pts=is_mask_from_pts,
        )
        features = features.to(torch.bfloat16).to(state["storage_device"], non_blocking=True)
        return features, self._get_maskmem_pos_enc(state, {"maskmem_pos_enc": pos_enc})

    def _get_maskmem_pos_enc(self, state: dict[str, Any], current_out: dict[str, Any]) -> list[torch.Tensor] | None:
        """The memory position encoding is the same for every frame and object: one copy is kept."""
        pos = current_out["maskmem_pos_enc"]
        if pos is None:
            return None
        constants = state["constants"]
        if "maskmem_pos_enc" not in constants:
            constants["maskmem_pos_enc"] = [x[0:1].clone() for x in pos]
        batch = pos[0].size(0)
        return [x.expand(batch, -1, -1, -1) for x in constants["maskmem_pos_enc"]]

    # ------------------------------------------------------------------------------------------------
    # Input checks

    @staticmethod
    def _check_frame_idx(state: dict[str, Any], frame_idx: Any, name: str = "frame_idx") -> None:
        if not isinstance(state, dict) or "num_frames" not in state:
            raise TypeError(f"inference_state must be the dict returned by init_state, got {type(state).__name__}")
        if not isinstance(frame_idx, (int, np.integer)) or isinstance(frame_idx, bool):
            raise TypeError(f"{name} must be an int, got {type(frame_idx).__name__}")
        if not 0 <= frame_idx < state["num_frames"]:
            raise IndexError(f"{name} {frame_idx} out of range: the clip has {state['num_frames']} frames")

    @staticmethod
    def _check_points(points: Any, labels: Any, box: Any, clear_old_points: bool,
                      frame_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Points/labels as ``1 x N x 2`` float32 / ``1 x N`` int32 (N may be 0 with a box) and the box as
        ``1 x 2 x 2`` float32 (or None), checked by the rules every predictor shares (``samforge.predict.checks``):
        finite numbers, labels of SAM 2's prompt encoder (not 0.7 or 2.9), x0 <= x1 and y0 <= y1; prompts past the
        border of ``frame_hw`` are used as given, with a warning when one lies entirely outside."""
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        box_t = None
        if box is not None:
            if not clear_old_points:
                raise ValueError(
                    "cannot add box without clearing old points, since box prompt must be provided before any "
                    "point prompt (please use clear_old_points=True instead)"
                )
            b = to_float_array(box.cpu() if isinstance(box, torch.Tensor) else box, "box")
            if b.size != 4:
                raise ValueError(f"box must be 4 numbers [x0, y0, x1, y1], got shape {b.shape}")
            b = check_box(b.reshape(4), frame_hw)
            box_t = torch.as_tensor(b, dtype=torch.float32).reshape(1, 2, 2)
        empty = points is not None and box is not None and np.size(points) == 0 and np.size(labels) == 0
        if points is None or empty:
            return torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.int32), box_t
        p, lab = (x.cpu() if isinstance(x, torch.Tensor) else x for x in (points, labels))
        p, lab = check_points(p, lab, frame_hw, allowed=SAM2_POINT_LABELS, batched=True, names=("points", "labels"))
        if p.ndim == 3 and p.shape[0] != 1:
            raise ValueError(f"points must be N x 2 (or 1 x N x 2) for one object, got shape {p.shape}")
        p_t = torch.as_tensor(p.reshape(1, -1, 2), dtype=torch.float32)
        return p_t, torch.as_tensor(lab.reshape(1, -1), dtype=torch.int32), box_t


def build_sam2_video_predictor(
    config_file: str,
    ckpt_path: str | None = None,
    device: str | torch.device | None = None,
    mode: str = "eval",
    hydra_overrides_extra: tuple[str, ...] | list[str] = (),
    apply_postprocessing: bool = True,
    vos_optimized: bool = False,
    **kwargs: Any,
) -> SAM2VideoPredictor:
    """A ``SAM2VideoPredictor`` built as the official function builds one: the model from ``config_file``
    (loading ``ckpt_path`` strictly), with, by default, the official video post-processing (dynamic multimask,
    binarized clicked masks in memory, holes up to 8 pixels filled). ``vos_optimized`` (torch.compile in the
    official code) is accepted and ignored: compilation was measured slower on CPU."""
    overrides = list(hydra_overrides_extra)
    if apply_postprocessing:
        overrides = overrides + list(VIDEO_POSTPROCESSING_OVERRIDES)
    overrides = [o for o in overrides if not o.lstrip("+").startswith("model._target_=")]
    model = build_sam2(
        config_file, ckpt_path, device=device, mode=mode, hydra_overrides_extra=overrides,
        apply_postprocessing=apply_postprocessing,
    )
    return video_predictor_for(model, video_postprocessing=False)  # the overrides above already set it


def video_predictor_for(model: SAM2Base, video_postprocessing: bool = True, *,
                        precision: str = "fp32") -> SAM2VideoPredictor:
    """A ``SAM2VideoPredictor`` for a model that is already built (e.g. by ``build_sam2`` for images), with its
    configuration's video settings; ``video_postprocessing`` applies the official video build's post-processing
    (binarized clicked masks in memory, holes up to 8 pixels filled) on top, as ``build_sam2_video_predictor``
    does. The model is changed in place (``binarize_mask_from_pts_for_mem_enc``). ``precision``: of the image
    encoder on every frame, as ``SAM2ImagePredictor``'s ("fp32" exact, "int8", "bf16", "auto", ...)."""
    if not isinstance(model, SAM2Base):
        raise TypeError(f"model must be a SAM2Base (from build_sam2), got {type(model).__name__}")
    precision = predictor_precision(precision, model.device, auto_int8=False)  # as SAM2ImagePredictor's
    m = model.config.model
    fill_hole_area = m.fill_hole_area
    if video_postprocessing:
        model.binarize_mask_from_pts_for_mem_enc = True
        fill_hole_area = 8
    predictor = SAM2VideoPredictor(
        model,
        fill_hole_area=fill_hole_area,
        non_overlap_masks=m.non_overlap_masks,
        clear_non_cond_mem_around_input=m.clear_non_cond_mem_around_input,
        add_all_frames_to_correct_as_cond=m.add_all_frames_to_correct_as_cond,
    )
    predictor.precision = precision
    return predictor


def build_sam2_video_predictor_hf(model_id: str | os.PathLike, **kwargs: Any) -> SAM2VideoPredictor:
    """The official ``build_sam2_video_predictor_hf`` on local weights: a checkpoint file or a folder holding
    one (``config_file=`` picks the config; an official hub id gets a message naming the file to download)."""
    config, path = resolve_sam2_pretrained(model_id, kwargs.pop("config_file", None))
    return build_sam2_video_predictor(config, path, **kwargs)


# The official VOS-optimised predictor is this one with torch.compile applied; compilation is not done here
# (measured slower on CPU), so it is the same class: identical results.
SAM2VideoPredictorVOS = SAM2VideoPredictor

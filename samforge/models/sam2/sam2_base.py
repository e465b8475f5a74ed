"""SAM2Base: SAM 2's image encoder, memory modules and SAM heads: the image path and one tracking step.

Every parameter of the official ``SAM2Base`` exists here under its official name and shape, so official
checkpoints load strictly. The image path is ``forward_image`` -> ``_prepare_backbone_features`` ->
(``no_mem_embed`` added to the lowest-resolution level) -> ``_forward_sam_heads``. Video tracking calls
``track_step`` once per frame and object batch: the frame's features attend to the memory bank (past masks
encoded by the memory encoder, and object pointers) before the SAM heads decode, and the prediction is then
encoded into this frame's memory. ``samforge.predict.SAM2VideoPredictor`` keeps the bank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from samforge.models.common import MLP
from samforge.models.prompt_encoder import PromptEncoder
from samforge.models.sam2.image_encoder import ImageEncoder
from samforge.models.sam2.mask_decoder import SAM2MaskDecoder
from samforge.models.sam2.memory_attention import MemoryAttention
from samforge.models.sam2.memory_bank import get_1d_sine_pe, memory_frame_index, select_closest_cond_frames
from samforge.models.sam2.memory_encoder import MemoryEncoder
from samforge.models.transformer import TwoWayTransformer

NO_OBJ_SCORE = -1024.0  # mask logit placed where the object is predicted absent


class SAM2Base(nn.Module):
    """Arguments are the official ones (see ``samforge/models/sam2/configs`` for what each model sets)."""

    def __init__(
        self,
        image_encoder: ImageEncoder,
        memory_attention: MemoryAttention,
        memory_encoder: MemoryEncoder,
        num_maskmem: int = 7,
        image_size: int = 512,
        backbone_stride: int = 16,
        sigmoid_scale_for_mem_enc: float = 1.0,
        sigmoid_bias_for_mem_enc: float = 0.0,
        binarize_mask_from_pts_for_mem_enc: bool = False,
        use_mask_input_as_output_without_sam: bool = False,
        max_cond_frames_in_attn: int = -1,
        directly_add_no_mem_embed: bool = False,
        use_high_res_features_in_sam: bool = False,
        multimask_output_in_sam: bool = False,
        multimask_min_pt_num: int = 1,
        multimask_max_pt_num: int = 1,
        multimask_output_for_tracking: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        memory_temporal_stride_for_eval: int = 1,
        non_overlap_masks_for_mem_enc: bool = False,
        use_obj_ptrs_in_encoder: bool = False,
        max_obj_ptrs_in_encoder: int = 16,
        add_tpos_enc_to_obj_ptrs: bool = True,
        proj_tpos_enc_in_obj_ptrs: bool = False,
        use_signed_tpos_enc_to_obj_ptrs: bool = False,
        only_obj_ptrs_in_the_past_for_eval: bool = False,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        fixed_no_obj_ptr: bool = False,
        soft_no_obj_ptr: bool = False,
        use_mlp_for_obj_ptr_proj: bool = False,
        no_obj_embed_spatial: bool = False,
        sam_mask_decoder_extra_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if proj_tpos_enc_in_obj_ptrs and not add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs")
        if fixed_no_obj_ptr and not (pred_obj_scores and use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")
        # the image backbone; SAM heads use level 0, 1, 2 with high-res features, else level 2 only
        self.image_encoder = image_encoder
        self.use_high_res_features_in_sam = use_high_res_features_in_sam
        self.num_feature_levels = 3 if use_high_res_features_in_sam else 1
        self.use_obj_ptrs_in_encoder = use_obj_ptrs_in_encoder
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        if use_obj_ptrs_in_encoder:  # mask prompt (stride 1) to SAM logit scale at stride 4
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.add_tpos_enc_to_obj_ptrs = add_tpos_enc_to_obj_ptrs
        self.proj_tpos_enc_in_obj_ptrs = proj_tpos_enc_in_obj_ptrs
        self.use_signed_tpos_enc_to_obj_ptrs = use_signed_tpos_enc_to_obj_ptrs
        self.only_obj_ptrs_in_the_past_for_eval = only_obj_ptrs_in_the_past_for_eval

        # memory: attention of the current frame to past frames, and the encoder of a frame's memory
        self.memory_attention = memory_attention
        self.hidden_dim = image_encoder.neck.d_model
        self.memory_encoder = memory_encoder
        self.mem_dim = self.hidden_dim
        if isinstance(getattr(memory_encoder, "out_proj", None), nn.Conv2d):  # memories compressed along channels
            self.mem_dim = memory_encoder.out_proj.weight.shape[0]
        self.num_maskmem = num_maskmem
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, self.mem_dim))
        trunc_normal_(self.maskmem_tpos_enc, std=0.02)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        trunc_normal_(self.no_mem_embed, std=0.02)
        trunc_normal_(self.no_mem_pos_enc, std=0.02)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        self.sigmoid_scale_for_mem_enc = sigmoid_scale_for_mem_enc
        self.sigmoid_bias_for_mem_enc = sigmoid_bias_for_mem_enc
        self.binarize_mask_from_pts_for_mem_enc = binarize_mask_from_pts_for_mem_enc
        self.non_overlap_masks_for_mem_enc = non_overlap_masks_for_mem_enc
        self.memory_temporal_stride_for_eval = memory_temporal_stride_for_eval
        self.use_mask_input_as_output_without_sam = use_mask_input_as_output_without_sam
        self.multimask_output_in_sam = multimask_output_in_sam
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.iou_prediction_use_sigmoid = iou_prediction_use_sigmoid

        # SAM-style prompt encoder and mask decoder
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.sam_mask_decoder_extra_args = sam_mask_decoder_extra_args
        self.pred_obj_scores = pred_obj_scores
        self.pred_obj_scores_mlp = pred_obj_scores_mlp
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.soft_no_obj_ptr = soft_no_obj_ptr
        # In training, masks of objects the object-score head calls absent become NO_OBJ_SCORE as in inference
        # (official); False keeps the decoder's logits there in training mode, so that the mask loss reaches them
        # (a model trained from scratch calls many objects absent at first and would get no mask gradient).
        self.gate_masks_in_training = True
        if pred_obj_scores and use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
            trunc_normal_(self.no_obj_ptr, std=0.02)
        self.use_mlp_for_obj_ptr_proj = use_mlp_for_obj_ptr_proj
        self.no_obj_embed_spatial: nn.Parameter | None = None
        if no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
            trunc_normal_(self.no_obj_embed_spatial, std=0.02)
        self._build_sam_heads()
        self.max_cond_frames_in_attn = max_cond_frames_in_attn

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "SAM2Base has no forward: use SAM2ImagePredictor for images (or forward_image and _forward_sam_heads)"
        )

    def _build_sam_heads(self) -> None:
        """SAM's prompt encoder and SAM 2's mask decoder (SAM's hyperparameters), and object-pointer heads."""
        self.sam_prompt_embed_dim = self.hidden_dim
        self.sam_image_embedding_size = self.image_size // self.backbone_stride
        grid = self.sam_image_embedding_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.sam_prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=16,
            corner_labels=True,
        )
        self.sam_mask_decoder = SAM2MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=self.sam_prompt_embed_dim, mlp_dim=2048, num_heads=8, variant="sam2"
            ),
            transformer_dim=self.sam_prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
            pred_obj_scores=self.pred_obj_scores,
            pred_obj_scores_mlp=self.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
            **(self.sam_mask_decoder_extra_args or {}),
        )
        self.obj_ptr_proj: nn.Module = nn.Identity()
        if self.use_obj_ptrs_in_encoder:  # SAM output tokens to object pointers
            if self.use_mlp_for_obj_ptr_proj:
                self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
            else:
                self.obj_ptr_proj = nn.Linear(self.hidden_dim, self.hidden_dim)
        self.obj_ptr_tpos_proj: nn.Module = nn.Identity()
        if self.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)

    def forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        """Backbone features of a normalized ``B x 3 x S x S`` batch; with high-res features in SAM, levels 0
        and 1 are already projected by the decoder's ``conv_s0`` / ``conv_s1`` (once per image, not per click)."""
        backbone_out = self.image_encoder(img_batch)
        if self.use_high_res_features_in_sam:
            backbone_out["backbone_fpn"][0] = self.sam_mask_decoder.conv_s0(backbone_out["backbone_fpn"][0])
            backbone_out["backbone_fpn"][1] = self.sam_mask_decoder.conv_s1(backbone_out["backbone_fpn"][1])
        return backbone_out

    def _prepare_backbone_features(
        self, backbone_out: dict[str, Any]
    ) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """The last ``num_feature_levels`` levels flattened to ``HW x B x C``, their encodings, their sizes."""
        backbone_out = backbone_out.copy()
        if len(backbone_out["backbone_fpn"]) != len(backbone_out["vision_pos_enc"]):
            raise ValueError("backbone_fpn and vision_pos_enc must have the same number of levels")
        if len(backbone_out["backbone_fpn"]) < self.num_feature_levels:
            raise ValueError(f"need {self.num_feature_levels} feature levels, got {len(backbone_out['backbone_fpn'])}")
        feature_maps = backbone_out["backbone_fpn"][-self.num_feature_levels :]
        vision_pos_embeds = backbone_out["vision_pos_enc"][-self.num_feature_levels :]
        feat_sizes = [(x.shape[-2], x.shape[-1]) for x in vision_pos_embeds]
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in feature_maps]
        vision_pos_embeds = [x.flatten(2).permute(2, 0, 1) for x in vision_pos_embeds]
        return backbone_out, vision_feats, vision_pos_embeds, feat_sizes

    def _forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Decode masks for B images from their features ``B x C x h x w`` (no memory).

        ``point_inputs``: ``point_coords`` B x P x 2 in input-image pixels and ``point_labels`` B x P.
        ``mask_inputs``: B x 1 x H x W (resized to the prompt encoder's mask size when needed).
        Returns (low-res multimasks, high-res multimasks, ious, low-res best mask, high-res best mask,
        object pointer B x C, object-score logits B x 1), as the official method does.
        """
        b = backbone_features.size(0)
        device = backbone_features.device
        expected = (self.sam_prompt_embed_dim, self.sam_image_embedding_size, self.sam_image_embedding_size)
        if tuple(backbone_features.shape[1:]) != expected:
            raise ValueError(f"backbone_features must be B x {expected}, got {tuple(backbone_features.shape)}")
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:  # one padding point
            coords = torch.zeros(b, 1, 2, device=device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        sam_mask_prompt = None
        if mask_inputs is not None:
            if mask_inputs.ndim != 4 or tuple(mask_inputs.shape[:2]) != (b, 1):
                raise ValueError(f"mask_inputs must be {b} x 1 x H x W, got {tuple(mask_inputs.shape)}")
            sam_mask_prompt = mask_inputs
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                sam_mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    align_corners=False,
                    mode="bilinear",
                    antialias=True,
                )
        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=sam_mask_prompt)
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        if self.pred_obj_scores:
            is_obj_appearing = object_score_logits > 0
            if self.gate_masks_in_training or not self.training:
                low_res_multimasks = torch.where(is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE)
        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        sam_output_token = sam_output_tokens[:, 0]
        if multimask_output:  # the mask with the highest predicted IoU
            best = torch.argmax(ious, dim=-1)
            batch = torch.arange(b, device=device)
            low_res_masks = low_res_multimasks[batch, best].unsqueeze(1)
            high_res_masks = high_res_multimasks[batch, best].unsqueeze(1)
            if sam_output_tokens.size(1) > 1:
                sam_output_token = sam_output_tokens[batch, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

        obj_ptr = self.obj_ptr_proj(sam_output_token)
        if self.pred_obj_scores:
            if self.soft_no_obj_ptr:
                lambda_is_obj_appearing = object_score_logits.sigmoid()
            else:
                lambda_is_obj_appearing = is_obj_appearing.float()
            if self.fixed_no_obj_ptr:
                obj_ptr = lambda_is_obj_appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - lambda_is_obj_appearing) * self.no_obj_ptr
        return (
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    # ----------------------------------------------------------------------------------------------------
    # Tracking: memory-conditioned features, one step, memory encoding

    def _use_mask_as_output(
        self, backbone_features: torch.Tensor, high_res_features: list[torch.Tensor] | None, mask_inputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Take a binary ``B x 1 x S x S`` mask prompt as the prediction itself (logits +-10), as
        ``_forward_sam_heads`` would return it; the object pointer still comes from the SAM decoder."""
        out_scale, out_bias = 20.0, -10.0
        mask = mask_inputs.float()
        high_res_masks = mask * out_scale + out_bias
        low_res_masks = F.interpolate(
            high_res_masks,
            size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
            align_corners=False,
            mode="bilinear",
            antialias=True,
        )
        ious = mask_inputs.new_ones(mask_inputs.size(0), 1).float()
        if self.use_obj_ptrs_in_encoder:
            obj_ptr = self._forward_sam_heads(
                backbone_features=backbone_features,
                mask_inputs=self.mask_downsample(mask),
                high_res_features=high_res_features,
            )[5]
        else:
            obj_ptr = torch.zeros(mask_inputs.size(0), self.hidden_dim, device=mask_inputs.device)
        # whether the object appears is read off the mask prompt, not the decoder's object score
        appearing = torch.any(mask.flatten(1) > 0.0, dim=1)[..., None].float()
        object_score_logits = out_scale * appearing + out_bias
        if self.pred_obj_scores:
            if self.fixed_no_obj_ptr:
                obj_ptr = appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - appearing) * self.no_obj_ptr
        return low_res_masks, high_res_masks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits

    def _spatial_memories(
        self,
        frame_idx: int,
        selected_cond: dict[int, Any],
        unselected_cond: dict[int, Any],
        output_dict: dict[str, dict[int, Any]],
        track_in_reverse: bool,
    ) -> list[tuple[int, dict[str, Any]]]:
        """(temporal slot, output) of every frame whose encoded mask this frame attends to. Conditioning frames
        take slot 0; the last ``num_maskmem - 1`` tracked frames take slots 1 (oldest) .. num_maskmem - 1."""
        memories = [(0, out) for out in selected_cond.values()]
        stride = 1 if self.training else self.memory_temporal_stride_for_eval
        for t_pos in range(1, self.num_maskmem):
            prev_idx = memory_frame_index(frame_idx, self.num_maskmem - t_pos, stride, track_in_reverse)
            out = output_dict["non_cond_frame_outputs"].get(prev_idx)
            if out is None:  # an unselected conditioning frame among the recent ones still counts
                out = unselected_cond.get(prev_idx)
            if out is not None and out.get("maskmem_features") is not None:  # None: released by the predictor
                memories.append((t_pos, out))
        return memories

    def _object_pointers(
        self,
        frame_idx: int,
        selected_cond: dict[int, Any],
        unselected_cond: dict[int, Any],
        output_dict: dict[str, dict[int, Any]],
        num_frames: int | None,
        track_in_reverse: bool,
    ) -> list[tuple[int, torch.Tensor]]:
        """(temporal distance, object pointer B x C) of the conditioning frames and of up to
        ``max_obj_ptrs_in_encoder - 1`` frames before this one (after it in reverse)."""
        max_ptrs = min(num_frames, self.max_obj_ptrs_in_encoder)
        sign = -1 if track_in_reverse else 1
        cond = selected_cond
        if not self.training and self.only_obj_ptrs_in_the_past_for_eval:
            cond = {t: o for t, o in cond.items() if (t >= frame_idx if track_in_reverse else t <= frame_idx)}
        ptrs = [
            ((frame_idx - t) * sign if self.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), out["obj_ptr"])
            for t, out in cond.items()
        ]
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            out = output_dict["non_cond_frame_outputs"].get(t, unselected_cond.get(t))
            if out is not None:
                ptrs.append((t_diff, out["obj_ptr"]))
        return ptrs

    def _prepare_memory_conditioned_features(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        output_dict: dict[str, dict[int, Any]],
        num_frames: int | None,
        track_in_reverse: bool = False,
    ) -> torch.Tensor:
        """The frame's lowest-resolution features (``HW x B x C``) after attending to the memory bank, as
        ``B x C x H x W``. A first conditioning frame attends to the ``no_mem`` token only."""
        b = current_vision_feats[-1].size(1)
        c = self.hidden_dim
        h, w = feat_sizes[-1]
        device = current_vision_feats[-1].device
        if self.num_maskmem == 0:  # SAM on images: no memory at all
            return current_vision_feats[-1].permute(1, 2, 0).view(b, c, h, w)

        num_obj_ptr_tokens = 0
        if is_init_cond_frame:
            if self.directly_add_no_mem_embed:
                feat = current_vision_feats[-1] + self.no_mem_embed
                return feat.permute(1, 2, 0).view(b, c, h, w)
            memory = [self.no_mem_embed.expand(1, b, self.mem_dim)]
            memory_pos = [self.no_mem_pos_enc.expand(1, b, self.mem_dim)]
        else:
            if not output_dict["cond_frame_outputs"]:
                raise ValueError(f"frame {frame_idx} is tracked from memory but no frame was prompted")
            selected, unselected = select_closest_cond_frames(
                frame_idx, output_dict["cond_frame_outputs"], self.max_cond_frames_in_attn
            )
            memory, memory_pos = [], []
            for t_pos, prev in self._spatial_memories(frame_idx, selected, unselected, output_dict, track_in_reverse):
                memory.append(prev["maskmem_features"].to(device, non_blocking=True).flatten(2).permute(2, 0, 1))
                pos = prev["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
                memory_pos.append(pos + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])
            if self.use_obj_ptrs_in_encoder:
                ptrs = self._object_pointers(frame_idx, selected, unselected, output_dict, num_frames, track_in_reverse)
                if ptrs:
                    distances, pointers = zip(*ptrs)
                    obj_ptrs = torch.stack(pointers, dim=0)  # P x B x C
                    if self.add_tpos_enc_to_obj_ptrs:
                        max_distance = min(num_frames, self.max_obj_ptrs_in_encoder) - 1
                        tpos_dim = c if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
                        obj_pos = torch.tensor(distances).to(device=device, non_blocking=True)
                        obj_pos = self.obj_ptr_tpos_proj(get_1d_sine_pe(obj_pos / max_distance, dim=tpos_dim))
                        obj_pos = obj_pos.unsqueeze(1).expand(-1, b, self.mem_dim)
                    else:
                        obj_pos = obj_ptrs.new_zeros(len(distances), b, self.mem_dim)
                    if self.mem_dim < c:  # each pointer becomes c // mem_dim tokens
                        split = c // self.mem_dim
                        obj_ptrs = obj_ptrs.reshape(-1, b, split, self.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                        obj_pos = obj_pos.repeat_interleave(split, dim=0)
                    memory.append(obj_ptrs)
                    memory_pos.append(obj_pos)
                    num_obj_ptr_tokens = obj_ptrs.shape[0]

        # memories are stored in bf16; with no pointer to promote them (the official code then fails on CPU) they
        # are brought to the features' dtype here, which is what concatenation with fp32 pointers does anyway
        feat = self.memory_attention(
            curr=current_vision_feats,
            curr_pos=current_vision_pos_embeds,
            memory=torch.cat(memory, dim=0).to(current_vision_feats[-1].dtype),
            memory_pos=torch.cat(memory_pos, dim=0),
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
        return feat.permute(1, 2, 0).view(b, c, h, w)

    def _encode_new_memory(
        self,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        pred_masks_high_res: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """This frame's memory: its features fused with its predicted mask (``B x 1 x S x S`` logits).
        Returns (features ``B x mem_dim x H x W``, [their position encoding])."""
        b = current_vision_feats[-1].size(1)
        h, w = feat_sizes[-1]
        pix_feat = current_vision_feats[-1].permute(1, 2, 0).view(b, self.hidden_dim, h, w)
        if self.non_overlap_masks_for_mem_enc and not self.training:
            pred_masks_high_res = self._apply_non_overlapping_constraints(pred_masks_high_res)
        if self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts and not self.training:
            mask_for_mem = (pred_masks_high_res > 0).float()
        else:
            mask_for_mem = torch.sigmoid(pred_masks_high_res)
        if self.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * self.sigmoid_scale_for_mem_enc
        if self.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + self.sigmoid_bias_for_mem_enc
        out = self.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
        features, pos_enc = out["vision_features"], out["vision_pos_enc"]
        if self.no_obj_embed_spatial is not None:  # mark frames where the object is predicted absent
            absent = 1 - (object_score_logits > 0).float()
            features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None].expand(
                *features.shape
            )
        return features, pos_enc

    def _track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: dict[str, dict[int, Any]],
        num_frames: int | None,
        track_in_reverse: bool,
        prev_sam_mask_logits: torch.Tensor | None,
    ) -> tuple[dict[str, Any], tuple[torch.Tensor, ...], list[torch.Tensor] | None, torch.Tensor]:
        """The SAM heads on one frame: (outputs so far, SAM outputs, high-res features, conditioned features)."""
        current_out: dict[str, Any] = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        high_res_features = None
        if len(current_vision_feats) > 1:
            high_res_features = [
                x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
                for x, s in zip(current_vision_feats[:-1], feat_sizes[:-1])
            ]
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            pix_feat = current_vision_feats[-1].permute(1, 2, 0).view(-1, self.hidden_dim, *feat_sizes[-1])
            sam_outputs = self._use_mask_as_output(pix_feat, high_res_features, mask_inputs)
        else:
            pix_feat = self._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=current_vision_feats[-1:],
                current_vision_pos_embeds=current_vision_pos_embeds[-1:],
                feat_sizes=feat_sizes[-1:],
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
            if prev_sam_mask_logits is not None:  # earlier logits of this frame refined by new clicks
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("prev_sam_mask_logits go with point inputs and no mask input")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res_features,
                multimask_output=self._use_multimask(is_init_cond_frame, point_inputs),
            )
        return current_out, sam_outputs, high_res_features, pix_feat

    def _encode_memory_in_output(
        self,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        run_mem_encoder: bool,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        current_out: dict[str, Any],
    ) -> None:
        current_out["maskmem_features"] = current_out["maskmem_pos_enc"] = None
        if run_mem_encoder and self.num_maskmem > 0:
            features, pos_enc = self._encode_new_memory(
                current_vision_feats=current_vision_feats,
                feat_sizes=feat_sizes,
                pred_masks_high_res=high_res_masks,
                object_score_logits=object_score_logits,
                is_mask_from_pts=point_inputs is not None,
            )
            current_out["maskmem_features"] = features
            current_out["maskmem_pos_enc"] = pos_enc

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: dict[str, dict[int, Any]],
        num_frames: int | None,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Predict one frame of a batch of objects from its prompts and the memory bank ``output_dict``
        (``{"cond_frame_outputs": {t: out}, "non_cond_frame_outputs": {t: out}}``) and, with
        ``run_mem_encoder``, encode the prediction as this frame's memory.

        Returns ``{"point_inputs", "mask_inputs", "pred_masks" (B x 1 x S/4 x S/4 logits),
        "pred_masks_high_res" (B x 1 x S x S), "obj_ptr" (B x C), "object_score_logits" (eval only),
        "maskmem_features", "maskmem_pos_enc"}``.
        """
        current_out, sam_outputs, _, _ = self._track_step(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            num_frames,
            track_in_reverse,
            prev_sam_mask_logits,
        )
        _, _, _, low_res_masks, high_res_masks, obj_ptr, object_score_logits = sam_outputs
        current_out["pred_masks"] = low_res_masks
        current_out["pred_masks_high_res"] = high_res_masks
        current_out["obj_ptr"] = obj_ptr
        if not self.training:  # the video predictor re-encodes consolidated masks with it
            current_out["object_score_logits"] = object_score_logits
        self._encode_memory_in_output(
            current_vision_feats,
            feat_sizes,
            point_inputs,
            run_mem_encoder,
            high_res_masks,
            object_score_logits,
            current_out,
        )
        return current_out

    def _use_multimask(self, is_init_cond_frame: bool, point_inputs: dict[str, torch.Tensor] | None) -> bool:
        """Multimask output for the first clicks on a prompted frame (as configured)."""
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
        return (
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and self.multimask_min_pt_num <= num_pts <= self.multimask_max_pt_num
        )

    def _apply_non_overlapping_constraints(self, pred_masks: torch.Tensor) -> torch.Tensor:
        """Keep, at each pixel, only the highest-scoring object of the batch; the others' logits are
        clamped to at most -10."""
        if pred_masks.size(0) == 1:
            return pred_masks
        winner = torch.argmax(pred_masks, dim=0, keepdim=True)
        index = torch.arange(pred_masks.size(0), device=pred_masks.device)[:, None, None, None]
        return torch.where(winner == index, pred_masks, torch.clamp(pred_masks, max=-10.0))

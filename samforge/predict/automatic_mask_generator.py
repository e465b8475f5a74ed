"""SamAutomaticMaskGenerator: "segment everything" with a grid of point prompts.

A drop-in for ``segment_anything.SamAutomaticMaskGenerator``: same arguments, defaults, algorithm and
order of steps, and the same records. For each crop (the whole image, then the crops of each layer):
embed the crop, prompt it with batches of grid points (three masks each), keep masks by predicted IoU
and stability score, drop those that touch an inner crop edge, NMS within the crop; then NMS across
crops preferring smaller crops, and optionally fill small holes / drop small islands with one more NMS.
The steps shared with ``SAM2AutomaticMaskGenerator`` live in ``amg_base``.

With ``precision="fp32"`` (the default) the records are the official ones bit for bit: the grid is decoded with
``SamPredictor``'s exact decoder (the official operations in the official order; only the image side of the first
layer is computed once per crop), the prompt coordinates are float64 as the official code has them, and the masks
are upsampled three to a tensor as the official predictor upsamples them (CPU bilinear interpolation rounds
differently with other channel counts). The fast precisions ("fp32-fast", "bf16") decode with ``GridDecoder``,
whose logits agree with the official decoder's to float rounding (a few 1e-6: a logit that close to the threshold
may flip a pixel), about three times faster (``benchmarks/README.md``). For speed:

* ``GridDecoder`` (the fast precisions) decodes a batch of single-point prompts on one image without copying
  the image embedding per prompt: the first layer's image-side projections are computed once per crop, and the
  later attentions fold the key / query / output projections into the (few) prompt tokens instead of
  projecting every prompt's 4096 image tokens; prompts are decoded 16 at a time, their large tensors in
  buffers reused from batch to batch (allocating them afresh, page faults included, cost more than the
  arithmetic on this CPU); a decoder of other layers (``GridDecoder.supports``) is run the plain way;
* the predicted IoU needs only the transformer, so masks are filtered on it first and only prompts with a
  surviving mask go through the upscaling network (as per-pixel matrix products, channels last; the exact
  decoder upscales a chunk of 16-31 prompts when any of them has a surviving mask);
* the IoU survivors are upsampled a chunk at a time (never all of a batch's masks at full size), only the
  low-res rows / columns that the kept part of the input needs, and their stability score is computed on
  the upsampled logits exactly as the official code does. (A low-res bound on the stability score was
  tried and dropped: bilinear upsampling mixes neighbouring low-res pixels, so a safe bound is too loose
  to reject anything on real logits.)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from samforge.models.sam import Sam
from samforge.predict.amg_base import OUTPUT_MODES, AutomaticMaskGeneratorBase
from samforge.predict.amg_utils import MaskData
from samforge.predict.predictor import SamPredictor, upsample_logits

__all__ = ["OUTPUT_MODES", "GridDecoder", "SamAutomaticMaskGenerator"]

UPSAMPLE_CHUNK = 30  # masks upsampled to the crop's size at once (a multiple of 3: see _upsample)
DECODE_CHUNK = 16  # prompts decoded at once (4-64 measured within noise; 16 keeps the buffers ~64 MB)
UPSCALE_CHUNK = 16  # prompts through the decoder's upscaling network at once


# ------------------------------------------------------------------------------------ the grid decoder
def _weight(linear: torch.nn.Module) -> torch.Tensor:
    """A linear layer's effective weight (a LoRA layer's base weight plus its adapters)."""
    delta = getattr(linear, "delta_weight", None)
    return linear.weight if delta is None else linear.weight + delta()


class GridDecoder:
    """SAM's mask decoder for many single-point prompts on one image embedding (no mask input).

    ``tokens(coords)`` runs the two-way transformer for a batch of positive points (``B x 2``, the model's
    input frame) and returns the IoU predictions of the three multimask outputs (``B x 3``) and a state;
    ``low_res_masks(state, idx)`` gives the three low-res mask logits (``len(idx) x 3 x 4h x 4w``) of the
    prompts ``idx`` of that batch. Both are what ``Sam.mask_decoder`` returns for those prompts with
    ``multimask_output=True``, up to float rounding (the image embedding + the no-mask embedding is shared by
    every prompt, so its projections are computed once; see the module docstring).
    """

    def __init__(self, model: Sam, image_embedding: torch.Tensor) -> None:
        self.model = model
        decoder = model.mask_decoder
        self.transformer = decoder.transformer
        pe = model.prompt_encoder.get_dense_pe()
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = image_embedding + dense  # what every prompt's decoder sees as its image
        self.grid = tuple(src.shape[-2:])
        self.src = src.flatten(2)[0].transpose(0, 1).contiguous()  # n x C
        self.pe = pe.flatten(2)[0].transpose(0, 1).contiguous().to(src.dtype)
        first = self.transformer.layers[0]
        kp = self.src + self.pe
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        self._workspace: dict[str, torch.Tensor] = {}
        self.k0 = self._heads(t2i, t2i.k_proj(kp))  # H x n x d
        self.v0 = self._heads(t2i, t2i.v_proj(self.src))
        self.q0 = self._heads(i2t, i2t.q_proj(kp))

    @staticmethod
    def supports(model: Sam) -> bool:
        """Whether the decoder is made of the layers this class re-associates (plain or LoRA linears,
        SAM v1's two-way transformer and upscaling); otherwise the generator decodes the plain way."""
        from samforge.models.transformer import Attention, TwoWayTransformer

        decoder = model.mask_decoder
        tr = decoder.transformer
        if type(tr) is not TwoWayTransformer or len(tr.layers) == 0 or len(decoder.output_upscaling) != 5:
            return False
        attentions = [m for m in tr.modules() if isinstance(m, Attention)]
        linears = [getattr(a, n) for a in attentions for n in ("q_proj", "k_proj", "v_proj", "out_proj")]
        plain = all((type(lin) is torch.nn.Linear or hasattr(lin, "delta_weight")) and lin.bias is not None
                    for lin in linears)
        return plain and all(a.kv_in_dim == a.embedding_dim for a in attentions)

    @staticmethod
    def _heads(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``n x (H*d)`` -> ``H x n x d``."""
        return x.reshape(x.shape[0], attn.num_heads, -1).transpose(0, 1)

    # ----------------------------------------------------------------------------------- attentions
    def _t2i_shared(self, attn, q_in: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tokens ``B x T x C`` attend to the shared image (keys / values already projected, ``H x n x d``)."""
        b, t, _ = q_in.shape
        heads, n, d = k.shape
        q = attn.q_proj(q_in).reshape(b * t, heads, d).transpose(0, 1)  # H x BT x d
        s = torch.bmm(q, k.transpose(1, 2), out=self._buf("s", (heads, b * t, n))).div_(math.sqrt(d))
        p = self._softmax(s, -1, "p")
        out = (p @ v).transpose(0, 1).reshape(b, t, heads * d)
        return attn.out_proj(out)

    def _t2i(self, attn, q_in: torch.Tensor, kp: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        """Tokens ``B x T x C`` attend to per-prompt image tokens (keys ``kp``, values ``v_in``: ``B x n x C``).
        The key projection is folded into the queries (its bias adds a constant per query, which the
        softmax ignores) and the value projection is applied after pooling (the weights sum to 1)."""
        b, t, c = q_in.shape
        heads = attn.num_heads
        q = attn.q_proj(q_in).reshape(b, t, heads, -1)
        d = q.shape[-1]
        a = torch.einsum("bthd,hdc->bhtc", q, _weight(attn.k_proj).reshape(heads, d, c)).reshape(b, heads * t, c)
        s = torch.bmm(a, kp.transpose(1, 2), out=self._buf("s", (b, heads * t, kp.shape[1]))).div_(math.sqrt(d))
        p = self._softmax(s, -1, "p")  # B x HT x n
        pooled = torch.bmm(p, v_in).reshape(b, heads, t, c)
        out = torch.einsum("bhtc,hdc->bthd", pooled, _weight(attn.v_proj).reshape(heads, d, c))
        return attn.out_proj((out + attn.v_proj.bias.reshape(heads, d)).reshape(b, t, heads * d))

    @staticmethod
    def _token_values(attn, v_in: torch.Tensor) -> torch.Tensor:
        """The tokens' values pushed through the output projection, per head (``B x (H*T) x C``), plus
        1/H of the output bias (each head's weights over the tokens sum to 1)."""
        b, t, _ = v_in.shape
        heads = attn.num_heads
        v = attn.v_proj(v_in).reshape(b, t, heads, -1)
        wo = _weight(attn.out_proj)
        wo = wo.reshape(wo.shape[0], heads, -1)  # C x H x d
        vw = torch.einsum("bthd,chd->bhtc", v, wo) + attn.out_proj.bias / heads
        return vw.reshape(b, heads * t, -1)

    def _i2t_shared(self, attn, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        """The shared image tokens (queries already projected) attend to each prompt's tokens; returns the
        image tokens plus the attention output, ``B x n x C`` (in the workspace)."""
        b, t, _ = k_in.shape
        heads, n, d = self.q0.shape
        k = attn.k_proj(k_in).reshape(b * t, heads, d).transpose(0, 1)  # H x BT x d
        s = torch.bmm(k, self.q0.transpose(1, 2), out=self._buf("s", (heads, b * t, n))).div_(math.sqrt(d))
        p = self._softmax(s.view(heads, b, t, n), 2, "p")  # over the tokens
        p = self._buf("s", (b, heads, t, n)).copy_(p.permute(1, 0, 2, 3)).view(b, heads * t, n)
        return torch.baddbmm(self.src.expand(b, -1, -1), p.transpose(1, 2), self._token_values(attn, v_in),
                             out=self._buf("res", (b, n, self.src.shape[1])))

    def _i2t(self, attn, kp: torch.Tensor, keys: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        """Per-prompt image tokens (queries ``kp``: ``B x n x C``) attend to the prompt's tokens; the query
        projection is folded into the tokens' keys. Returns ``keys`` plus the attention output (in the
        workspace)."""
        b, t, c = k_in.shape
        n = kp.shape[1]
        heads = attn.num_heads
        k = attn.k_proj(k_in).reshape(b, t, heads, -1)
        d = k.shape[-1]
        bm = torch.einsum("bthd,hdc->bhtc", k, _weight(attn.q_proj).reshape(heads, d, c)).reshape(b, heads * t, c)
        const = torch.einsum("bthd,hd->bht", k, attn.q_proj.bias.reshape(heads, d)).reshape(b, heads * t, 1)
        s = torch.bmm(bm, kp.transpose(1, 2), out=self._buf("s", (b, heads * t, n))).add_(const).div_(math.sqrt(d))
        p = self._softmax(s.view(b, heads, t, n), 2, "p").view(b, heads * t, n)  # over the tokens
        return torch.baddbmm(keys, p.transpose(1, 2), self._token_values(attn, v_in), out=self._buf("res", keys.shape))

    # ------------------------------------------------------------------------------------ workspace
    def _buf(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        """A reused buffer of ``shape`` (contents undefined). The large per-prompt tensors live here:
        allocating them afresh costs more than computing them (the allocator maps and zeroes new pages)."""
        numel = math.prod(shape)
        buf = self._workspace.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=self.src.dtype, device=self.src.device)
            self._workspace[name] = buf
        return buf[:numel].view(*shape)

    def _softmax(self, x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
        return torch.ops.aten._softmax.out(x, dim, False, out=self._buf(name, x.shape))

    def _layer_norm(self, norm: torch.nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
        """``norm`` (a LayerNorm, or LayerNorm2d over channels last) of ``x`` into buffer ``name``."""
        stats = (*x.shape[:-1], 1)
        out, _, _ = torch.ops.aten.native_layer_norm.out(
            x, [x.shape[-1]], norm.weight, norm.bias, norm.eps, out0=self._buf(name, x.shape),
            out1=self._buf("ln_mean", stats), out2=self._buf("ln_rstd", stats))
        return out

    @staticmethod
    def _activate(act: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if type(act) is torch.nn.GELU:
            return torch.ops.aten.gelu_(x, approximate=act.approximate)
        return act(x)

    # ------------------------------------------------------------------------------------ decoding
    def decode(self, coords: torch.Tensor, iou_thresh: float | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
        """Positive points ``coords`` (``B x 2``, input frame) -> IoU predictions ``B x 3`` of the multimask
        outputs, the indices of the prompts with a mask whose IoU prediction is above ``iou_thresh`` (all
        when None), and those prompts' three low-res logits (``K x 3 x 4h x 4w``)."""
        ious, prompts, low_res = [], [], []
        for start in range(0, coords.shape[0], DECODE_CHUNK):
            iou, state = self.tokens(coords[start:start + DECODE_CHUNK])
            wanted = (iou > iou_thresh).any(1) if iou_thresh is not None else \
                torch.ones_like(iou[:, 0], dtype=torch.bool)
            idx = wanted.nonzero().flatten()
            low_res.append(self.low_res_masks(state, idx))
            prompts.append(idx + start)
            ious.append(iou)
        return torch.cat(ious), torch.cat(prompts), torch.cat(low_res)

    def tokens(self, coords: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """IoU predictions ``B x 3`` of positive points ``coords`` (``B x 2``, input frame), and the state
        (the multimask output tokens, the image tokens) that ``low_res_masks`` needs. The image tokens are
        in the workspace: the state is valid until the next call."""
        model = self.model
        decoder = model.mask_decoder
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=coords.device)
        sparse, _ = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        b = sparse.shape[0]
        out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.to(sparse.dtype).unsqueeze(0).expand(b, -1, -1), sparse], dim=1)

        # the final attention updates each token on its own: only the IoU token and the multimask output
        # tokens (mask tokens 1..) are used after it
        queries, keys = self.two_way(tokens, None, [0] + list(range(2, 1 + decoder.num_mask_tokens)))
        iou_pred = decoder.iou_prediction_head(queries[:, 0, :])
        return iou_pred[:, 1:], (queries[:, 1:], keys)

    def two_way(self, tokens: torch.Tensor, keys: torch.Tensor | None,
                used: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer with the projections folded into the prompt tokens: ``tokens`` ``B x T x C``
        (output tokens then prompt tokens), ``keys`` each prompt's image tokens ``B x n x C``, or None for the
        shared image (the first layer's projections computed once). The final attention runs only for the token
        indices ``used``. -> (those tokens after the final attention and its norm, the updated image tokens,
        in the workspace)."""
        tr = self.transformer
        queries, qpe = tokens, tokens
        for layer in tr.layers:
            queries = layer.token_self_attention(queries, qpe)
            if keys is None:
                attn = self._t2i_shared(layer.cross_attn_token_to_image, queries + qpe, self.k0, self.v0)
            else:
                kp = torch.add(keys, self.pe, out=self._buf("kp", keys.shape))
                attn = self._t2i(layer.cross_attn_token_to_image, queries + qpe, kp, keys)
            queries = layer.norm2(queries + attn)
            queries = layer.norm3(queries + layer.mlp(queries))
            if keys is None:
                res = self._i2t_shared(layer.cross_attn_image_to_token, queries + qpe, queries)
            else:
                res = self._i2t(layer.cross_attn_image_to_token, kp, keys, queries + qpe, queries)
            keys = self._layer_norm(layer.norm4, res, "keys")
        if keys is None:  # a transformer without layers
            keys = self.src.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        queries, qpe = queries[:, used], qpe[:, used]
        kp = torch.add(keys, self.pe, out=self._buf("kp", keys.shape))
        attn = self._t2i(tr.final_attn_token_to_image, queries + qpe, kp, keys)
        return tr.norm_final_attn(queries + attn), keys

    def low_res_masks(self, state: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """The multimask low-res logits ``len(idx) x 3 x 4h x 4w`` of the prompts ``idx`` of the last
        ``tokens`` call."""
        queries, keys = state
        decoder = self.model.mask_decoder
        h, w = self.grid
        out = []
        for start in range(0, len(idx), UPSCALE_CHUNK):
            sel = idx[start:start + UPSCALE_CHUNK]
            if len(sel) > 1 and int(sel[-1] - sel[0]) == len(sel) - 1:  # a run of prompts: a view, not a copy
                sel = slice(int(sel[0]), int(sel[-1]) + 1)
            mask_tokens = queries[sel]  # the multimask output tokens
            mlps = decoder.output_hypernetworks_mlps[1:]
            hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(mlps)], dim=1)  # m x 3 x c
            features = self._upscale(keys[sel])  # m x (n*16) x c, rows in (i, j, a1, b1, a2, b2) order
            m, k = hyper.shape[:2]
            masks = torch.bmm(features, hyper.transpose(1, 2), out=self._buf("masks", (m, features.shape[1], k)))
            masks = masks.view(m, h, w, 2, 2, 2, 2, k)
            out.append(masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(m, k, 4 * h, 4 * w))
        if not out:
            return keys.new_zeros((0, decoder.num_mask_tokens - 1, 4 * h, 4 * w))
        return torch.cat(out)

    def _upscale(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's ``output_upscaling`` (two 2x2 stride-2 transposed convolutions with a channel
        LayerNorm and activations) on image tokens ``m x n x C``, as per-pixel matrix products."""
        conv1, norm, act1, conv2, act2 = self.model.mask_decoder.output_upscaling
        m, n, c = x.shape

        def as_matrix(conv):  # (in, out, 2, 2) -> in x (2*2*out), columns ordered (a, b, out)
            w = conv.weight
            return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), conv.bias.repeat(4)

        w1, b1 = as_matrix(conv1)
        y = torch.addmm(b1, x.reshape(m * n, c), w1, out=self._buf("up1", (m * n, w1.shape[1])))
        y = y.view(m * n * 4, -1)  # rows (i, j, a1, b1)
        y = self._activate(act1, self._layer_norm(norm, y, "up1n"))
        w2, b2 = as_matrix(conv2)
        y = torch.addmm(b2, y, w2, out=self._buf("up2", (y.shape[0], w2.shape[1])))
        y = self._activate(act2, y)  # rows (i, j, a1, b1), columns (a2, b2, out)
        return y.reshape(m, n * 16, -1)


# ------------------------------------------------------------------------------------ the generator
class SamAutomaticMaskGenerator(AutomaticMaskGeneratorBase):
    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        precision: str = "fp32",
    ) -> None:
        """Generate masks for a whole image with ``model`` (a samforge ``Sam``).

        ``points_per_side``: the grid has ``points_per_side**2`` points (or give ``point_grids``: one
        ``N x 2`` array in [0, 1] per crop layer; exactly one of the two). ``points_per_batch``: points run
        together. ``pred_iou_thresh``, ``stability_score_thresh`` in [0, 1]: keep masks whose predicted
        IoU is above / whose stability score (IoU of the mask binarized at threshold +- ``stability_score_offset``)
        is at least the threshold (0 disables). ``box_nms_thresh``, ``crop_nms_thresh``: box IoU for NMS
        within / across crops. ``crop_n_layers``: layer i adds ``2**i x 2**i`` crops overlapping by
        ``crop_overlap_ratio`` of the image's short side (scaled down per layer), with
        ``points_per_side / crop_n_points_downscale_factor**i`` points per side. ``min_mask_region_area``:
        when > 0, holes and islands smaller than this are removed (OpenCV). ``output_mode``:
        "binary_mask" (HxW bool), "uncompressed_rle" or "coco_rle" (pycocotools). ``precision`` (keyword-only,
        samforge's): the image encoder's path, as ``SamPredictor``'s ("fp32" exact; "fp32-fast" fused attention,
        a tenth of the encoder's memory; "bf16"; "int8" quantised linear layers; "auto"); the grid decoding stays fp32.
        """
        if not isinstance(model, Sam):
            raise TypeError(f"model must be a samforge Sam model, got {type(model).__name__}")
        self._init_common(
            points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh, stability_score_offset,
            box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor,
            point_grids, min_mask_region_area, output_mode)
        self.predictor = SamPredictor(model, precision=precision)
        self._grid_decoder: GridDecoder | None = None

    @property
    def mask_threshold(self) -> float:
        return self.predictor.model.mask_threshold

    def _set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)
        self._grid_decoder = None  # built on first use, from the new embedding

    def _reset_image(self) -> None:
        self.predictor.reset_image()
        self._grid_decoder = None

    def _postprocess(self, data: MaskData) -> MaskData:
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        return data

    def _decode_points(self, coords: torch.Tensor, iou_thresh: float | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
        """Decode positive points ``coords`` (``B x 2``, the model's input frame) on the current crop: IoU
        predictions ``B x 3`` of the multimask outputs, the indices of the prompts with a mask whose IoU
        prediction is above ``iou_thresh`` (all when None), and their low-res logits (``K x 3 x 256 x 256``).
        Only those prompts go through the decoder's upscaling (in "folded" decoding; see ``_decode_points_exact``
        for the exact one)."""
        model = self.predictor.model
        mode = self.predictor._decoder_mode()
        if mode == "exact":
            return self._decode_points_exact(coords, iou_thresh)
        if mode == "module":  # a decoder of other layers: the plain way
            labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=coords.device)
            sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
            low_res, iou_preds = model.mask_decoder(
                image_embeddings=self.predictor.features, image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
            wanted = (iou_preds > iou_thresh).any(1) if iou_thresh is not None else \
                torch.ones_like(iou_preds[:, 0], dtype=torch.bool)
            prompts = wanted.nonzero().flatten()
            return iou_preds, prompts, low_res[prompts]
        if self._grid_decoder is None:
            self._grid_decoder = GridDecoder(model, self.predictor.features)
        return self._grid_decoder.decode(coords.float(), iou_thresh)

    def _decode_points_exact(self, coords: torch.Tensor, iou_thresh: float | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                             torch.Tensor]:
        """``_decode_points`` bit for bit as the official generator decodes (precision "fp32"): the predictor's exact
        decoder (``SamPredictor._exact_transformer`` / ``_exact_masks``), on chunks of at least ``DECODE_CHUNK``
        prompts (the batch itself when smaller, as the official code has it: matrix products of a few rows can
        round differently from those of many). The IoU predictions and hypernetworks run on the whole chunk, and
        the upscaling too when any of its prompts has a mask above ``iou_thresh`` (on a subset of one prompt it
        rounds differently as well)."""
        predictor = self.predictor
        model = predictor.model
        decoder = model.mask_decoder
        b = coords.shape[0]
        bounds = np.linspace(0, b, max(1, b // DECODE_CHUNK) + 1).round().astype(int)
        ious, prompts, low_res = [], [], []
        for start, end in zip(bounds[:-1], bounds[1:]):
            chunk = coords[start:end]
            labels = torch.ones(chunk.shape[0], 1, dtype=torch.int, device=chunk.device)
            sparse, _ = model.prompt_encoder(points=(chunk[:, None, :], labels), boxes=None, masks=None)
            hs, keys = predictor._exact_transformer(sparse)
            iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:]
            wanted = (iou > iou_thresh).any(1) if iou_thresh is not None else \
                torch.ones_like(iou[:, 0], dtype=torch.bool)
            idx = wanted.nonzero().flatten()
            if len(idx):
                low_res.append(predictor._exact_masks(hs, keys)[idx, 1:])
            prompts.append(idx + int(start))
            ious.append(iou)
        if not low_res:
            h, w = model.prompt_encoder.image_embedding_size
            low_res.append(coords.new_zeros((0, decoder.num_mask_tokens - 1, 4 * h, 4 * w), dtype=torch.float))
        return torch.cat(ious), torch.cat(prompts), torch.cat(low_res)

    def _process_batch(self, points: np.ndarray, crop_size: tuple[int, int], crop_box: list[int],
                       orig_size: tuple[int, int]) -> MaskData:
        predictor = self.predictor
        # float64 as the official generator has them (the prompt encoder normalises them before casting to float32)
        dtype = torch.float if predictor.device.type == "mps" else torch.float64
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), dtype=dtype,
                                 device=predictor.device)
        # the IoU filter needs no mask: only the prompts with a mask left are upscaled and upsampled
        iou_thresh = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None
        iou_preds, prompts, low_res = self._decode_points(coords, iou_thresh)
        n_out = iou_preds.shape[1]
        iou_flat = iou_preds.flatten(0, 1)
        keep = iou_flat > iou_thresh if iou_thresh is not None else torch.ones_like(iou_flat, dtype=torch.bool)
        kept = keep.nonzero().flatten()
        row_of = torch.full((len(points) * n_out,), -1, dtype=torch.long, device=kept.device)
        row_of[(prompts[:, None] * n_out + torch.arange(n_out, device=kept.device)).flatten()] = \
            torch.arange(len(prompts) * n_out, device=kept.device)
        data = MaskData(
            low_res=low_res.flatten(0, 1)[row_of[kept].to(low_res.device)],
            iou_preds=iou_flat[kept],
            points=torch.as_tensor(points.repeat(n_out, axis=0))[kept.cpu()],  # each point once per output
        )
        del low_res
        return self._encode_in_chunks(data, crop_size, crop_box, orig_size, UPSAMPLE_CHUNK)

    def _upsample(self, low_res: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits ``M x h x w`` -> logits ``M x H x W`` of the crop, as ``Sam.postprocess_masks``
        computes them (:func:`upsample_logits`) in the official generator: on ``B x 3 x h x w``, the three masks
        of a prompt as channels. Bilinear interpolation on a CPU rounds differently with another number of
        channels, so the masks are upsampled in groups of three (any three: each channel is computed on its own),
        the last group padded."""
        size = self.predictor.model.image_encoder.img_size
        m, h, w = low_res.shape
        group = self.predictor.model.mask_decoder.num_mask_tokens - 1
        pad = (-m) % group
        if pad:
            low_res = torch.cat([low_res, low_res.new_zeros((pad, h, w))])
        up = upsample_logits(low_res.view(-1, group, h, w), size, self.predictor.input_size, crop_size)
        return up.view(-1, *up.shape[-2:])[:m]

"""SamPredictor: embed an image once, then decode masks for any number of prompts.

A drop-in for ``segment_anything.SamPredictor``: same names, arguments, defaults, shapes and dtypes.
The keyword-only ``precision`` picks a fast path (see :data:`PRECISIONS`); the default is the exact one.

Prompt decoding (``predict`` / ``predict_torch``) skips the work that does not depend on the prompt, in one of the
:data:`DECODER_MODES`: "exact" (fp32's, bit for bit the official results) computes the image side of the decoder's
first layer once per image and never repeats the embedding per prompt; "folded" (the fast precisions') also folds the
later projections into the prompt tokens (``GridDecoder``'s re-association). Both upsample the masks only where the
image is and threshold them a few prompts at a time.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samforge.models.image_encoder import attention_mode
from samforge.models.sam import Sam
from samforge.predict.checks import (
    ImageNotSetError,
    SAM_POINT_LABELS,
    check_bool,
    check_box,
    check_box_order,
    check_image,
    check_labels,
    check_mask_input,
    check_outside_boxes,
    check_outside_points,
    check_points,
    check_tensor,
    describe,
    to_float_array,
)
from samforge.predict.precision import resolve_precision
from samforge.predict.quantize import int8_encoder
from samforge.predict.transforms import ResizeLongestSide

if TYPE_CHECKING:
    from samforge.predict.automatic_mask_generator import GridDecoder


PRECISIONS = {
    "fp32": "float32, the official order of operations: results bit-for-bit the official ones (the default)",
    "fp32-fast": "float32 with fused attention (rel-pos terms folded into SDPA) and fewer layout copies, and "
    "prompts decoded with projections folded into the prompt tokens (decoder mode 'folded'); agrees with fp32 to "
    "float rounding",
    "bf16": "the image encoder in bfloat16 end to end (weights cast per image) with fused attention; the "
    "embedding is kept in float32 and the (cheap) prompt decoder runs in float32 ('folded'), so outputs are float32. "
    "Fast on GPUs and on CPUs with AVX512-BF16/AMX; on a CPU without them it warns once and runs 'fp32-fast'",
    "int8": "the image encoder's linear layers dynamically quantised to int8 (7-bit per-channel weights, 8-bit "
    "per-tensor activations; the first two blocks' linears stay float32; a copy of the encoder, the model is not "
    "changed), attention and the rest in float32 with fused attention, prompts decoded 'folded' in float32; x86 CPUs "
    "only (AVX2 included). Masks agree with fp32's to a mean IoU of about 0.986 (vit_b, random perturbed weights; "
    "see samforge.predict.quantize)",
    "auto": "picked from the device and the CPU: bf16 on CUDA and on CPUs with AVX512-BF16/AMX, int8 on other "
    "AVX-512 and AVX2 x86 CPUs (SAM 2: fp32 / fp32-fast there), fp32 elsewhere (see samforge.predict.precision, "
    "measured); the predictor's ``precision`` says which",
}


def check_precision(precision: Any) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


def predictor_precision(precision: Any, device: torch.device, *, auto_int8: bool = True) -> str:
    """The precision a predictor on ``device`` runs for the requested one: checked (:func:`check_precision`), then
    resolved (``samforge.predict.precision.resolve_precision``: "auto" picked, bf16 without native bf16 replaced)."""
    return resolve_precision(check_precision(precision), device, auto_int8=auto_int8)


def run_cast(module: nn.Module, dtype: torch.dtype, *args: Any) -> Any:
    """``module(*args)`` with its floating-point parameters and buffers cast to ``dtype`` for this call only (the
    module itself is left as it is, so later weight changes are always seen)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    tensors = {
        name: t.to(dtype) if t.is_floating_point() else t for name, t in module.state_dict(keep_vars=True).items()
    }
    return torch.func.functional_call(module, tensors, args, strict=False, tie_weights=True)


DECODER_MODES = {
    "exact": "the decoder's own operations in the official order, bit for bit, minus the work that does not depend on "
    "the prompt: the image side of the first layer (its projections) is computed once per image, and the embedding "
    "and its positional encoding are not repeated per prompt; masks are upsampled only where the image is (the "
    "default of precision 'fp32')",
    "folded": "GridDecoder's re-association (see samforge.predict.automatic_mask_generator): later attentions fold "
    "their projections into the few prompt tokens, the final attention runs only for the tokens used, prompts are "
    "decoded a few at a time in reused buffers; logits agree with 'exact' to float rounding (a few 1e-6), so a mask "
    "pixel whose logit is within that of the threshold may flip (the default of 'fp32-fast' and 'bf16')",
    "module": "the mask decoder module's forward and Sam.postprocess_masks, as the official predictor calls them "
    "(the reference the others are tested against)",
}
DECODE_CHUNK = 8  # prompts through the transformer at once ("folded")
UPSCALE_CHUNK = 4  # prompts through the upscaling network at once ("folded")
UPSAMPLE_CHUNK = 2  # prompts whose masks are upsampled to the image size at once (when only binary masks are asked)
KEEP_WORKSPACE_BYTES = 64 * 2**20  # a "folded" workspace up to this size is kept between calls (one-prompt latency)


def upsample_logits(low_res: torch.Tensor, img_size: int, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
    """``Sam.postprocess_masks``: low-res logits ``B x C x h x w`` bilinearly to the padded input (``img_size``
    square), cropped to ``input_size``, bilinearly to ``original_size``. The same values, computed with less work:
    only the low-res rows / columns that the kept part of the input reads are upsampled, and the second resize is
    skipped when it would keep the size (bilinear at scale 1 copies)."""
    in_h, in_w = input_size
    lh, lw = low_res.shape[-2:]

    def needed(n_out: int, n_in: int, scale: float) -> int:
        # bilinear, align_corners=False: output i reads inputs floor((i + 0.5) / scale - 0.5) and the next
        last = math.floor((n_out - 0.5) / scale - 0.5) + 1
        return min(n_in, last + 2)

    scale_h, scale_w = img_size / lh, img_size / lw
    rh, rw = needed(in_h, lh, scale_h), needed(in_w, lw, scale_w)
    if not (scale_h.is_integer() and scale_w.is_integer()):  # the cropped input's scale would be rounded
        rh, rw = lh, lw
    if (rh, rw) == (lh, lw):
        up = F.interpolate(low_res, (img_size, img_size), mode="bilinear", align_corners=False)
    else:
        up = F.interpolate(low_res[..., :rh, :rw], scale_factor=(scale_h, scale_w), mode="bilinear",
                           align_corners=False)
    up = up[..., :in_h, :in_w]
    if tuple(original_size) != (in_h, in_w):
        return F.interpolate(up, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)
    return up


class SamPredictor:
    #: attention mode of the fast precisions ("folded", "sdpa_bias" or "chunked", see
    #: ``samforge.models.image_encoder``)
    fast_attention_mode = "folded"
    #: attention mode of precision "int8" (float32 attention of the quantised encoder copy): "sdpa_bias" (the bias
    #: materialised 16 MB of queries at a time, no widening) measured 0.6-0.8x the time of "folded" in float32 on an
    #: AVX2 CPU (2026-12-04, vit_b global block 1.9 s against 2.9 s, window blocks 0.21 s against 0.37 s)
    int8_attention_mode = "sdpa_bias"
    #: attention mode of precision "fp32-fast" on a CPU (float32: the same measurement as "int8")
    fp32_cpu_attention_mode = "sdpa_bias"
    #: attention mode of precision "bf16" on a CPU: "chunked", the official unfused order without the widening,
    #: because the CPU flash kernel in bf16 at folded's width 192 took 51% of set_image (issue #25's AVX512-BF16
    #: profile) while the official unfused attention took less; not measured on a native-bf16 CPU here
    bf16_cpu_attention_mode = "chunked"

    def __init__(self, sam_model: Sam, *, precision: str = "fp32") -> None:
        """``precision``: "fp32" (default, exact), "fp32-fast", "bf16", "int8" or "auto"; see :data:`PRECISIONS`.
        ``self.precision`` is the one that runs ("auto" resolved for the model's device)."""
        if not isinstance(sam_model, Sam):
            raise TypeError(f"sam_model must be a samforge Sam model, got {type(sam_model).__name__}")
        self.precision = predictor_precision(precision, sam_model.device)
        #: how prompts are decoded, one of :data:`DECODER_MODES` (a decoder of other layers runs "module")
        self.decoder_mode = "exact" if self.precision == "fp32" else "folded"
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # the official attribute names of the current image's sizes (None without an image; the official
    # predictor only ever sets them to None): original (orig_h, orig_w) and resized (input_h, input_w)
    orig_h = property(lambda self: None if self.original_size is None else self.original_size[0])
    orig_w = property(lambda self: None if self.original_size is None else self.original_size[1])
    input_h = property(lambda self: None if self.input_size is None else self.input_size[0])
    input_w = property(lambda self: None if self.input_size is None else self.input_size[1])

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an ``H x W x 3`` uint8 image in ``image_format`` ("RGB" or "BGR")."""
        check_image(image)
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        input_image_torch = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(input_image_torch, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Compute the embedding of a ``1 x 3 x H x W`` image already resized so its long side is ``img_size``."""
        size = self.model.image_encoder.img_size
        if not isinstance(transformed_image, torch.Tensor):
            raise TypeError(f"transformed_image must be a torch.Tensor 1x3xHxW, got {describe(transformed_image)}")
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != size:
            raise ValueError(
                f"transformed_image must have shape 1x3xHxW with the longest side {size} "
                f"(use predictor.transform.apply_image), got {shape}"
            )
        try:  # two integers (python, numpy or 0-d integer tensors), not bools, strings or floats
            hw = tuple(operator.index(s) if not isinstance(s, bool) else None for s in original_image_size)
        except TypeError:
            hw = ()
        if len(hw) != 2 or None in hw or min(hw) <= 0:
            raise ValueError(f"original_image_size must be (H, W) with H, W > 0 integers, got {original_image_size!r}")
        self.reset_image()
        self.original_size = hw
        self.input_size = tuple(shape[-2:])
        input_image = self.model.preprocess(transformed_image.to(self.device))
        encoder = self.model.image_encoder
        if self.precision == "fp32":
            self.features = encoder(input_image)
        elif self.precision == "int8":
            quantized = int8_encoder(encoder)
            with attention_mode(quantized, self.int8_attention_mode):
                self.features = quantized(input_image)
        else:
            mode = self.fast_attention_mode
            if self.precision == "bf16" and self.device.type == "cpu":
                mode = self.bf16_cpu_attention_mode
            elif self.precision == "fp32-fast" and self.device.type == "cpu":
                mode = self.fp32_cpu_attention_mode
            with attention_mode(encoder, mode):
                if self.precision == "bf16":
                    self.features = run_cast(encoder, torch.bfloat16, input_image.to(torch.bfloat16)).float()
                else:
                    self.features = encoder(input_image)
        self.is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts in the original image's pixel coordinates.

        ``point_coords`` N x 2 (x, y) with ``point_labels`` N (1 foreground, 0 background, -1 ignored), ``box`` 4
        (XYXY, x0 <= x1, y0 <= y1), ``mask_input`` 1 x 256 x 256 low-res logits of a previous call. Returns masks
        C x H x W (bool, or float logits with ``return_logits``), IoU predictions C, and low-res logits
        C x 256 x 256; C is 3 with ``multimask_output`` else 1. Prompts past the image's border are used as given,
        as the official predictor uses them (a warning when one lies entirely outside); non-finite numbers, other
        labels and inverted boxes are refused.
        """
        self._check_image_set()
        check_bool(multimask_output, "multimask_output")
        check_bool(return_logits, "return_logits")
        coords_torch = labels_torch = box_torch = mask_input_torch = None
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        if point_coords is not None:
            coords, labels = check_points(point_coords, point_labels, self.original_size)
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_torch = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None, :, :]
            labels_torch = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None, :]
        if box is not None:
            box = self.transform.apply_boxes(check_box(box, self.original_size), self.original_size)
            box_torch = torch.as_tensor(box, dtype=torch.float, device=self.device)[None, :]
        if mask_input is not None:
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size)
            mask_input_torch = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None, :, :, :]

        # the prompts are checked (and an out-of-image one warned about) above: decode without checking again
        masks, iou_predictions, low_res_masks = self._predict_torch(
            coords_torch, labels_torch, box_torch, mask_input_torch, multimask_output, return_logits=return_logits
        )
        return (
            masks[0].detach().cpu().numpy(),
            iou_predictions[0].detach().cpu().numpy(),
            low_res_masks[0].detach().cpu().numpy(),
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for a batch of B prompt sets on the current image, coordinates in the resized input frame
        (``predictor.transform.apply_coords_torch`` / ``apply_boxes_torch``).

        ``point_coords`` B x N x 2 with ``point_labels`` B x N, ``boxes`` B x 4, ``mask_input`` B x 1 x 256 x 256,
        checked as ``predict`` checks its prompts. Returns masks B x C x H x W, IoU predictions B x C, low-res
        logits B x C x 256 x 256.
        """
        self._check_image_set()
        check_bool(multimask_output, "multimask_output")
        check_bool(return_logits, "return_logits")
        self._check_prompt_batch(point_coords, point_labels, boxes, mask_input)
        return self._predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)

    @torch.no_grad()
    def _predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``predict_torch`` for prompts already checked."""
        self._check_image_set()
        device = self.device
        points = None
        if point_coords is not None:
            points = (point_coords.to(device), point_labels.to(device))
        sparse, dense = self.model.prompt_encoder(
            points=points,
            boxes=None if boxes is None else boxes.to(device),
            masks=None if mask_input is None else mask_input.to(device),
        )
        mode = self._decoder_mode()
        if mode == "module":
            low_res_masks, iou_predictions = self.model.mask_decoder(
                image_embeddings=self.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
            if not return_logits:
                masks = masks > self.model.mask_threshold
            return masks, iou_predictions, low_res_masks
        if mode == "exact":
            low_res_masks, iou_predictions = self._decode_exact(sparse, dense, mask_input is not None, multimask_output)
        else:
            g = self._per_image("folded", self._build_folded)
            try:
                low_res_masks, iou_predictions = self._decode_folded(
                    g, sparse, None if mask_input is None else dense, multimask_output)
            finally:
                if sum(t.numel() * t.element_size() for t in g._workspace.values()) > KEEP_WORKSPACE_BYTES:
                    g._workspace.clear()  # a large batch's buffers are not held between calls
        return self._postprocess(low_res_masks, return_logits), iou_predictions, low_res_masks

    # ------------------------------------------------------------------------------- prompt decoding
    def _decoder_mode(self) -> str:
        """The decoder mode to run: ``self.decoder_mode``, or "module" for a decoder of other layers."""
        from samforge.models.mask_decoder import MaskDecoder
        from samforge.models.transformer import TwoWayTransformer
        from samforge.predict.automatic_mask_generator import GridDecoder  # (it imports this module)

        mode = self.decoder_mode
        if mode not in DECODER_MODES:
            raise ValueError(f"decoder_mode must be one of {sorted(DECODER_MODES)}, got {mode!r}")
        decoder = self.model.mask_decoder
        tr = decoder.transformer
        exact_ok = type(decoder) is MaskDecoder and type(tr) is TwoWayTransformer and bool(tr.layers)
        if mode == "folded" and not GridDecoder.supports(self.model):
            mode = "exact"
        if mode == "exact" and not exact_ok:
            return "module"
        return mode

    def _per_image(self, kind: str, build: Any) -> Any:
        """``build()``, computed once per image and decoder mode: rebuilt when the embedding or a weight of the prompt
        encoder or mask decoder has changed since (a tensor's ``_version`` counts its in-place changes: optimizer
        steps, ``load_state_dict``), so it is never stale."""
        model = self.model
        tensors = (self.features, *model.mask_decoder.parameters(), *model.prompt_encoder.parameters(),
                   *model.prompt_encoder.buffers())
        versions = tuple(t._version for t in tensors)
        cached = self._image_cache.get(kind)
        if (cached is None or len(cached[0]) != len(tensors) or cached[1] != versions
                or any(a is not b for a, b in zip(cached[0], tensors))):
            cached = self._image_cache[kind] = (tensors, versions, build())
        return cached[2]

    def _build_folded(self) -> GridDecoder:
        from samforge.predict.automatic_mask_generator import GridDecoder

        return GridDecoder(self.model, self.features)

    def _build_exact(self) -> dict[str, torch.Tensor]:
        """The image side of the first layer, as the official decoder computes it for every prompt: the image tokens
        (embedding + no-mask embedding) and their positional encoding (``1 x n x C`` views, the official layout), the
        token-to-image keys and values and the image-to-token queries (``1 x heads x n x d``)."""
        model = self.model
        first = model.mask_decoder.transformer.layers[0]
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = (self.features + dense.expand(1, -1, *self.features.shape[-2:])).flatten(2).permute(0, 2, 1)
        pe = model.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        kp = src + pe
        return {
            "src": src,
            "pe": pe,
            "k0": t2i._separate_heads(t2i.k_proj(kp)),
            "v0": t2i._separate_heads(t2i.v_proj(src)),
            "q0": i2t._separate_heads(i2t.q_proj(kp)),
        }

    def _decode_exact(self, sparse: torch.Tensor, dense: torch.Tensor, has_mask_input: bool,
                      multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask_decoder(...)``'s low-res logits and IoU predictions, bit for bit: the same operations on the same
        shapes, but the first layer's image side (the same for every prompt without a mask input) is taken from the
        per-image cache, and the embedding and positional encoding are broadcast, not repeated per prompt."""
        model = self.model
        decoder = model.mask_decoder
        if has_mask_input:  # each prompt has its own image side: the decoder's forward
            return decoder(image_embeddings=self.features, image_pe=model.prompt_encoder.get_dense_pe(),
                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                           multimask_output=multimask_output)
        hs, keys = self._exact_transformer(sparse)
        masks = self._exact_masks(hs, keys)
        iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def _exact_transformer(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer of ``mask_decoder(...)`` without a mask input, bit for bit (the first layer's
        image side from the per-image cache): the output tokens ``B x T x C`` and image tokens ``B x n x C``."""
        model = self.model
        decoder = model.mask_decoder
        cache = self._per_image("exact", self._build_exact)
        tr = decoder.transformer
        b = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.to(sparse.dtype).unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)

        # TwoWayTransformer.forward, its first layer (TwoWayAttentionBlock.forward) spelled out
        first, pe, qpe = tr.layers[0], cache["pe"], tokens
        queries = first.token_self_attention(tokens, qpe)
        t2i = first.cross_attn_token_to_image
        q = t2i._separate_heads(t2i.q_proj(queries + qpe))
        queries = first.norm2(queries + t2i._attend(q, cache["k0"], cache["v0"]))
        queries = first.norm3(queries + first.mlp(queries))
        i2t = first.cross_attn_image_to_token
        k_in = queries + qpe
        attn = i2t._attend(cache["q0"], i2t._separate_heads(i2t.k_proj(k_in)), i2t._separate_heads(i2t.v_proj(queries)))
        keys = first.norm4(cache["src"] + attn)
        for layer in tr.layers[1:]:
            queries, keys = layer(queries, keys, query_pe=qpe, key_pe=pe)
        attn_out = tr.final_attn_token_to_image(q=queries + qpe, k=keys + pe, v=keys)
        return tr.norm_final_attn(queries + attn_out), keys

    def _exact_masks(self, hs: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``MaskDecoder.predict_masks`` after the transformer: the low-res logits of every mask token
        ``B x num_mask_tokens x 4h x 4w`` from the transformer's outputs (``_exact_transformer``), bit for bit."""
        model = self.model
        decoder = model.mask_decoder
        b = hs.shape[0]
        h, w = model.prompt_encoder.image_embedding_size
        c = keys.shape[-1]
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        return (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

    def _decode_folded(self, g: GridDecoder, sparse: torch.Tensor, dense: torch.Tensor | None,
                       multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``mask_decoder(...)`` returns (low-res logits ``B x M x 4h x 4w``, IoU predictions ``B x M``) for
        sparse prompt embeddings ``B x N x C`` and a dense one ``B x C x h x w`` (None: no mask input, the image
        side is the same for every prompt), ``DECODE_CHUNK`` prompts at a time."""
        decoder = self.model.mask_decoder
        chosen = list(range(1, decoder.num_mask_tokens)) if multimask_output else [0]
        b = sparse.shape[0]
        h, w = g.grid
        low_res = sparse.new_empty((b, len(chosen), 4 * h, 4 * w))
        ious = []
        for start in range(0, b, DECODE_CHUNK):
            end = min(b, start + DECODE_CHUNK)
            iou, mask_tokens, keys = self._transformer(
                g, sparse[start:end], None if dense is None else dense[start:end], chosen)
            ious.append(iou)
            for s in range(0, end - start, UPSCALE_CHUNK):
                e = min(end - start, s + UPSCALE_CHUNK)
                self._masks(g, mask_tokens[s:e], keys[s:e], chosen, out=low_res[start + s:start + e])
        return low_res, torch.cat(ious)

    def _transformer(self, g: GridDecoder, sparse: torch.Tensor, dense: torch.Tensor | None,
                     chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two-way transformer and the IoU head for a chunk of prompts: IoU predictions of the ``chosen`` mask
        tokens ``B x M``, those tokens ``B x M x C`` and the updated image tokens ``B x n x C`` (in the workspace)."""
        decoder = self.model.mask_decoder
        b = sparse.shape[0]
        out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.to(sparse.dtype).unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        keys = None  # None: the shared image (the embedding plus the no-mask embedding), before any update
        if dense is not None:  # each prompt's image: the embedding plus its mask's embedding
            image = self.features.flatten(2).transpose(1, 2)
            keys = torch.add(image, dense.flatten(2).transpose(1, 2), out=g._buf("src", (b, *g.src.shape)))
        # the final attention updates each token on its own: only the IoU token and the chosen mask tokens are used
        queries, keys = g.two_way(tokens, keys, [0] + [1 + i for i in chosen])
        iou_pred = decoder.iou_prediction_head(queries[:, 0, :])
        return iou_pred[:, chosen], queries[:, 1:], keys

    def _masks(self, g: GridDecoder, mask_tokens: torch.Tensor, keys: torch.Tensor, chosen: list[int],
               out: torch.Tensor) -> None:
        """Low-res logits of the ``chosen`` mask tokens (``B x M x C``) over image tokens ``keys`` (``B x n x C``),
        written to ``out`` (``B x M x 4h x 4w``): the upscaling network as per-pixel matrix products, then each
        token's hypernetwork MLP."""
        mlps = self.model.mask_decoder.output_hypernetworks_mlps
        hyper = torch.stack([mlps[i](mask_tokens[:, j, :]) for j, i in enumerate(chosen)], dim=1)  # B x M x c
        features = g._upscale(keys)  # B x (n*16) x c, rows in (i, j, a1, b1, a2, b2) order
        b, m = hyper.shape[:2]
        h, w = g.grid
        masks = torch.bmm(features, hyper.transpose(1, 2), out=g._buf("masks", (b, features.shape[1], m)))
        out.view(b, m, h, 2, 2, w, 2, 2).copy_(masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6))

    def _postprocess(self, low_res: torch.Tensor, return_logits: bool) -> torch.Tensor:
        """``Sam.postprocess_masks`` (see :func:`upsample_logits`), then the threshold unless ``return_logits``;
        binary masks are made a few prompts at a time (no float masks for the whole batch)."""
        size = self.model.image_encoder.img_size
        if return_logits:
            return upsample_logits(low_res, size, self.input_size, self.original_size).contiguous()
        masks = torch.empty((*low_res.shape[:2], *self.original_size), dtype=torch.bool, device=low_res.device)
        for start in range(0, low_res.shape[0], UPSAMPLE_CHUNK):
            part = slice(start, start + UPSAMPLE_CHUNK)
            up = upsample_logits(low_res[part], size, self.input_size, self.original_size)
            torch.gt(up, self.model.mask_threshold, out=masks[part])
        return masks

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, ``1 x C x h x w``."""
        self._check_image_set()
        return self.features

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        # per decoder mode: (the tensors it was computed from, their versions, the per-image work)
        self._image_cache: dict[str, tuple[tuple, tuple, Any]] = {}
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _check_image_set(self) -> None:
        if not self.is_image_set:
            raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")

    def _check_prompt_batch(self, point_coords: Any, point_labels: Any, boxes: Any, mask_input: Any) -> None:
        batch_sizes = {}
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            check_tensor(point_coords, "point_coords", "BxNx2", ndim=3, last=2)
            check_tensor(point_labels, "point_labels", f"{point_coords.shape[0]}x{point_coords.shape[1]}", ndim=2)
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(
                    f"point_labels must have shape {tuple(point_coords.shape[:2])} to match point_coords, "
                    f"got {tuple(point_labels.shape)}"
                )
            labels = check_labels(to_float_array(point_labels.detach().cpu(), "point_labels"), SAM_POINT_LABELS,
                                  "point_labels")
            coords = to_float_array(point_coords.detach().cpu(), "point_coords")
            check_outside_points(coords, labels, self.input_size, "point_coords (resized frame)")
            batch_sizes["point_coords"] = point_coords.shape[0]
        if boxes is not None:
            if isinstance(boxes, torch.Tensor) and boxes.ndim == 3:
                check_tensor(boxes, "boxes", "Bx1x4", ndim=3, last=4)
                if boxes.shape[1] != 1:
                    raise ValueError(f"boxes must have shape Bx4 (or Bx1x4), got {tuple(boxes.shape)}")
            else:
                check_tensor(boxes, "boxes", "Bx4", ndim=2, last=4)
            rows = to_float_array(boxes.detach().cpu(), "boxes").reshape(-1, 4)
            check_box_order(rows, "boxes")
            check_outside_boxes(rows, self.input_size, "boxes (resized frame)")
            batch_sizes["boxes"] = boxes.shape[0]
        if mask_input is not None:
            check_tensor(mask_input, "mask_input", "Bx1xHxW", ndim=4)
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size, batch=mask_input.shape[0])
            batch_sizes["mask_input"] = mask_input.shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"prompts must have the same batch size B, got {batch_sizes}")

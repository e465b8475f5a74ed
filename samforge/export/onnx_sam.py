"""ONNX export of SAM (v1): the image encoder and the prompt-encoder + mask-decoder, as two files.

The decoder has the interface of the official ``segment_anything`` ONNX model (``SamOnnxModel`` and
``scripts/export_onnx_model.py``), so code written for the official ``sam_onnx_*.onnx`` files runs on ours:

=================  =========================  ===========================================================
input              shape / dtype              meaning
=================  =========================  ===========================================================
image_embeddings   1 x C x h x w  float32     the encoder's output
point_coords       1 x N x 2      float32     (x, y) in the *resized* input frame (``apply_coords``);
                                              N is dynamic; box corners are two points labelled 2 and 3
point_labels       1 x N          float32     1 foreground, 0 background, 2 / 3 box top-left / bottom-right,
                                              -1 padding; add one padding point (0, 0) / -1 when there is
                                              no box, as ``SamPredictor`` does
mask_input         1 x 1 x 4h x 4w float32    low-res logits of a previous prediction (zeros when unused)
has_mask_input     1              float32     1 when ``mask_input`` is used, else 0
orig_im_size       2              float32     (H, W) of the original image
=================  =========================  ===========================================================

Outputs: ``masks`` (1 x M x H x W logits at ``orig_im_size``, H and W dynamic), ``iou_predictions``
(1 x M) and ``low_res_masks`` (1 x M x 4h x 4w). With ``return_single_mask=False`` (the default, as in the
official script) M = 4: the single-mask token first, then the three multimask tokens (``SamPredictor`` returns
``[1:]`` with ``multimask_output`` and ``[0:1]`` without). With ``return_single_mask=True`` M = 1, chosen by the
official rule: the single-mask token when N >= 3 (counting the padding point), else the multimask token with
the highest predicted IoU.

The encoder file takes ``image``: 1 x 3 x S x S float32, the image already resized so its long side is S
(``ResizeLongestSide``, Pillow bilinear), normalised with the model's pixel mean / std (recorded in the file's
metadata) and zero-padded at the bottom and right (what ``Sam.preprocess`` returns); it outputs
``image_embeddings`` 1 x C x h x w.

Both files carry metadata (``samforge.*`` keys: image size, pixel mean / std, mask threshold, ...), which
:class:`samforge.export.onnx_predictor.OnnxSamPredictor` reads.

Exporting uses PyTorch's TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs the
``onnxscript`` package, and the TorchScript exporter supports opsets up to 20.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from samforge.export.onnx_predictor import DECODER_INPUTS, DECODER_OUTPUTS, OnnxDependencyError
from samforge.models.lora import has_lora, merge_lora
from samforge.models.sam import Sam
from samforge.predict.amg_utils import calculate_stability_score
from samforge.utils.atomic import atomic_path

SUPPORTED_OPSETS = range(14, 21)  # 14..20: the TorchScript exporter stops at 20
DEFAULT_OPSET = 17
QUANTIZE_MODES = ("int8",)
PARTS = ("encoder", "decoder")
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
FILE_NAMES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "decoder_int8": "decoder.int8.onnx"}
# protobuf cannot hold a model over 2 GiB; past this size weights go to an external ``<name>.data`` file
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
INSTALL_HINT = "ONNX export needs the onnx and onnxruntime packages: pip install samforge[onnx]"


def require_onnx():
    """The ``onnx`` module, or an :class:`OnnxDependencyError` saying how to install it."""
    try:
        import onnx
    except ImportError as e:
        raise OnnxDependencyError(f"{INSTALL_HINT} ({e})") from e
    return onnx


def _require_quantization():
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise OnnxDependencyError(f"int8 quantization needs onnxruntime: {INSTALL_HINT} ({e})") from e
    return QuantType, quantize_dynamic


def _check_sam(model: object) -> Sam:
    if not isinstance(model, Sam):
        kind = type(model).__name__
        extra = " (export SAM 2 models with samforge.export.export_sam2_onnx)" if "SAM2" in kind else ""
        raise TypeError(f"model must be a samforge SAM (v1) Sam model, got {kind}{extra}")
    return model


class SamOnnxEncoder(nn.Module):
    """``image`` 1 x 3 x S x S (normalised, padded: ``Sam.preprocess``'s output) -> ``image_embeddings``."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.image_encoder = _check_sam(model).image_encoder
        self.img_size = int(self.image_encoder.img_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class SamOnnxDecoder(nn.Module):
    """Prompt encoder + mask decoder + mask post-processing with the official ONNX decoder interface
    (see the module docstring). Works on batch 1, as the official model.

    The official ``SamOnnxModel`` options: ``use_stability_score`` replaces the predicted IoU with the
    stability score of the low-res masks (offset 1.0); ``return_extra_metrics`` makes ``forward`` return five
    outputs, ``(masks, scores, stability_scores, areas, low_res_masks)``, the stability scores and areas (pixels
    above the threshold) of the full-resolution masks."""

    def __init__(self, model: Sam, return_single_mask: bool = False, use_stability_score: bool = False,
                 return_extra_metrics: bool = False) -> None:
        super().__init__()
        model = _check_sam(model)
        for name, value in (("return_single_mask", return_single_mask), ("use_stability_score", use_stability_score),
                            ("return_extra_metrics", return_extra_metrics)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = int(model.image_encoder.img_size)
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        self.return_extra_metrics = return_extra_metrics
        self.stability_score_offset = 1.0
        self.mask_threshold = float(model.mask_threshold)
        with torch.no_grad():
            self.register_buffer("dense_pe", model.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)
        reweight = torch.zeros(1, self.mask_decoder.num_mask_tokens)
        reweight[0, 0] = 1000.0
        self.register_buffer("score_reweight", reweight, persistent=False)

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (point_coords + 0.5) / self.img_size
        embedding = pe.pe_layer._pe_encoding(coords)
        labels = point_labels.unsqueeze(-1)
        embedding = torch.where(labels == -1, pe.not_a_point_embed.weight, embedding)
        for i in range(pe.num_point_embeddings):  # 0 background, 1 foreground, 2 / 3 box corners
            embedding = embedding + pe.point_embeddings[i].weight * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        embedding = has_mask_input * pe.mask_downscaling(mask_input)
        return embedding + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _select_single(
        self, masks: torch.Tensor, iou: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official rule, without control flow: with N >= 3 points (padding included) the single-mask token,
        otherwise the multimask token of highest predicted IoU."""
        num_points = torch.ones_like(point_labels).sum(dim=1, keepdim=True)
        best = torch.argmax(iou + (num_points - 2.5) * self.score_reweight, dim=1)
        return masks.index_select(1, best), iou.index_select(1, best)

    def _postprocess(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """As ``Sam.postprocess_masks``; the pre-padding size is computed in float64 like ``ResizeLongestSide``."""
        s = self.img_size
        masks = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float64)
        scale = s / torch.max(size)
        prepadded = torch.floor(size * scale + 0.5).to(torch.int64)
        masks = masks[:, :, : prepadded[0], : prepadded[1]]
        hw = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        if self.use_stability_score:
            iou = calculate_stability_score(masks, self.mask_threshold, self.stability_score_offset)
        if self.return_single_mask:
            masks, iou = self._select_single(masks, iou, point_labels)
        upscaled = self._postprocess(masks, orig_im_size)
        if self.return_extra_metrics:
            stability = calculate_stability_score(upscaled, self.mask_threshold, self.stability_score_offset)
            areas = (upscaled > self.mask_threshold).sum(-1).sum(-1)
            return upscaled, iou, stability, areas, masks
        return upscaled, iou, masks

    def dummy_inputs(self, num_points: int = 5) -> tuple[torch.Tensor, ...]:
        """Example inputs of the right shapes (as the official export script's)."""
        c = self.prompt_encoder.embed_dim
        h, w = self.prompt_encoder.image_embedding_size
        g = torch.Generator().manual_seed(0)
        return (
            torch.randn(1, c, h, w, generator=g),
            torch.randint(0, self.img_size, (1, num_points, 2), generator=g).float(),
            torch.randint(0, 4, (1, num_points), generator=g).float(),
            torch.randn(1, 1, 4 * h, 4 * w, generator=g),
            torch.tensor([1.0]),
            torch.tensor([1500.0, 2250.0]) * self.img_size / 1024,
        )


def check_opset(opset: object) -> int:
    """An ONNX opset the exporter supports (14..20)."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int in {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}, "
                        f"got {type(opset).__name__} {opset!r}")
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"unsupported ONNX opset {opset}; supported: {SUPPORTED_OPSETS.start}.."
                         f"{SUPPORTED_OPSETS.stop - 1} (the TorchScript exporter's range from 14 up)")
    return opset


def check_quantize(quantize: object) -> str | None:
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be None or one of {list(QUANTIZE_MODES)}, got {quantize!r}")
    return quantize


def check_out_dir(out_dir: object) -> Path:
    """A directory that exists or can be created, and is writable; nothing is created here."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path (str or os.PathLike), got {type(out_dir).__name__}")
    out = Path(out_dir)
    if str(out_dir) == "":
        raise ValueError("out_dir must be a directory path, got an empty string")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} exists and is not a directory")
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"output directory {out} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {out} is not writable (no write permission on {existing})")
    return out


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A private work directory inside ``out`` (created if needed); removed afterwards, as is ``out`` itself
    when it was created here and is still empty."""
    created = []
    missing = out
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        work = out / f".samforge-export-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()
    except OSError as e:
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise ValueError(f"cannot write to output directory {out}: {e}") from e
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for d in created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                d.rmdir()


@contextlib.contextmanager
def _export_model(model: Sam) -> Iterator[Sam]:
    """A plain float32 CPU model in eval mode to trace: a merged copy when ``model`` has LoRA adapters (or
    lives elsewhere), else ``model`` itself, its training flag restored afterwards."""
    dtypes = {p.dtype for p in model.parameters()}
    devices = {p.device.type for p in model.parameters()}
    if has_lora(model) or dtypes != {torch.float32} or devices != {"cpu"}:
        work = copy.deepcopy(model).to("cpu", torch.float32)
        if has_lora(work):
            merge_lora(work)
        yield work.eval()
        return
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def _torch_export(module: nn.Module, args: tuple, path: Path, opset: int, inputs: Iterable[str],
                  outputs: Iterable[str], dynamic_axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=dynamic_axes,
            )


def _finish(path: Path, metadata: dict[str, str], external_data: bool | None,
            output_shapes: dict[str, list[int | str]] | None = None) -> None:
    """Add metadata (and declare output shapes the exporter left symbolic) and check the file; weights go to
    ``<name>.data`` beside it when asked or when too large. Files other than ``path`` (external tensors the
    exporter may write) are folded in."""
    onnx = require_onnx()
    proto = onnx.load(str(path))  # loads external tensors too
    for output in proto.graph.output:
        if output_shapes and output.name in output_shapes:
            dims = output.type.tensor_type.shape.dim
            del dims[:]
            for d in output_shapes[output.name]:
                if isinstance(d, str):
                    dims.add().dim_param = d
                else:
                    dims.add().dim_value = d
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    for other in path.parent.iterdir():
        if other != path:
            other.unlink() if other.is_file() else shutil.rmtree(other)
    size = sum(t.ByteSize() for t in proto.graph.initializer)
    external = size > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024, convert_attribute=True)
        onnx.checker.check_model(str(path))
    else:
        onnx.save_model(proto, str(path))
        onnx.checker.check_model(proto)


def _metadata(model: Sam, part: str, opset: int, **extra: object) -> dict[str, str]:
    from samforge import __version__

    cfg = getattr(model, "config", None)
    h, w = model.prompt_encoder.image_embedding_size
    meta = {
        "samforge.version": __version__,
        "samforge.part": part,
        "samforge.opset": opset,
        "samforge.img_size": int(model.image_encoder.img_size),
        "samforge.embedding_size": [int(h), int(w)],
        "samforge.embed_dim": int(model.prompt_encoder.embed_dim),
        "samforge.mask_input_size": [4 * int(h), 4 * int(w)],
        "samforge.pixel_mean": [float(v) for v in model.pixel_mean.flatten().tolist()],
        "samforge.pixel_std": [float(v) for v in model.pixel_std.flatten().tolist()],
        "samforge.mask_threshold": float(model.mask_threshold),
        "samforge.image_format": model.image_format,
    }
    if cfg is not None and hasattr(cfg, "to_dict"):
        meta["samforge.sam_config"] = cfg.to_dict()
    meta.update({f"samforge.{k}": v for k, v in extra.items()})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _export_encoder(model: Sam, directory: Path, opset: int, external_data: bool | None) -> list[Path]:
    """``encoder.onnx`` (and ``encoder.onnx.data`` when external) in ``directory``, which holds nothing else."""
    s = int(model.image_encoder.img_size)
    example = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    path = directory / FILE_NAMES["encoder"]
    _torch_export(SamOnnxEncoder(model), (example,), path, opset, ENCODER_INPUTS, ENCODER_OUTPUTS, {})
    _finish(path, _metadata(model, "encoder", opset), external_data)
    return sorted(directory.iterdir(), key=lambda p: p == path)  # weights first, the model file last


def _export_decoder(model: Sam, directory: Path, opset: int, return_single_mask: bool) -> Path:
    """``decoder.onnx`` in ``directory``, which holds nothing else."""
    decoder = SamOnnxDecoder(model, return_single_mask=return_single_mask)
    dynamic_axes = {
        "point_coords": {1: "num_points"},
        "point_labels": {1: "num_points"},
        "masks": {2: "height", 3: "width"},
    }
    path = directory / FILE_NAMES["decoder"]
    _torch_export(decoder, decoder.dummy_inputs(), path, opset, DECODER_INPUTS, DECODER_OUTPUTS, dynamic_axes)
    m = 1 if return_single_mask else int(model.mask_decoder.num_mask_tokens)
    h, w = (4 * int(s) for s in model.prompt_encoder.image_embedding_size)
    shapes = {"masks": [1, m, "height", "width"], "iou_predictions": [1, m], "low_res_masks": [1, m, h, w]}
    meta = _metadata(model, "decoder", opset, return_single_mask=return_single_mask, num_mask_outputs=m)
    _finish(path, meta, external_data=False, output_shapes=shapes)
    return path


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of the weights (unsigned 8-bit, per tensor, as the official script)."""
    QuantType, quantize_dynamic = _require_quantization()
    onnx = require_onnx()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # onnxruntime logs a pre-processing suggestion on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8)
    finally:
        logging.disable(previous)
    proto = onnx.load(str(dst))
    metadata = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    metadata["samforge.quantize"] = "int8"
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(dst))


def export_sam_onnx(
    model: Sam,
    out_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    *,
    return_single_mask: bool = False,
    parts: Iterable[str] = PARTS,
    external_data: bool | None = None,
) -> dict[str, Path]:
    """Export ``model`` to ONNX files in ``out_dir`` (created if needed) and return them by part.

    Writes ``encoder.onnx`` (key ``"encoder"``) and ``decoder.onnx`` (``"decoder"``); with ``quantize="int8"``
    also ``decoder.int8.onnx`` (``"decoder_int8"``, dynamically quantized weights; the float32 decoder is kept
    beside it). ``parts`` picks ``"encoder"`` and/or ``"decoder"``. A model with LoRA adapters is exported
    merged (a merged copy is traced; ``model`` is left as it is). ``external_data``: store the encoder's weights
    in ``encoder.onnx.data`` beside it; by default only when they exceed protobuf's 2 GB limit (vit_h).

    Every file is produced in a private work directory first and moved into place (atomically, each) only
    when all of them are complete: a failure leaves no new file behind. Existing files are replaced.
    """
    return write_onnx_parts(_check_sam(model), out_dir, opset, quantize, return_single_mask, parts, external_data,
                            _export_encoder, _export_decoder)


def write_onnx_parts(model: nn.Module, out_dir: str | os.PathLike, opset: int, quantize: str | None,
                     return_single_mask: bool, parts: Iterable[str], external_data: bool | None,
                     export_encoder: Callable[..., list[Path]], export_decoder: Callable[..., Path]) -> dict[str, Path]:
    """The checks, staging and atomic moves shared by the SAM and SAM 2 exports: ``export_encoder(model,
    directory, opset, external_data)`` and ``export_decoder(model, directory, opset, return_single_mask)``
    write one model family's files (see :func:`export_sam_onnx`)."""
    opset = check_opset(opset)
    quantize = check_quantize(quantize)
    if not isinstance(return_single_mask, bool):
        raise TypeError(f"return_single_mask must be a bool, got {type(return_single_mask).__name__}")
    if external_data is not None and not isinstance(external_data, bool):
        raise TypeError(f"external_data must be None or a bool, got {type(external_data).__name__}")
    if isinstance(parts, str):
        parts = (parts,)
    try:
        parts = tuple(parts)
    except TypeError as e:
        raise TypeError(f"parts must be a sequence of names from {list(PARTS)}, got {type(parts).__name__}") from e
    bad = [p for p in parts if p not in PARTS]
    if not parts or bad or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct names from {list(PARTS)}, got {list(parts)}")
    if quantize is not None and "decoder" not in parts:
        raise ValueError(f"quantize={quantize!r} quantizes the decoder, but parts {list(parts)} leave it out")
    out = check_out_dir(out_dir)
    require_onnx()
    if quantize is not None:
        _require_quantization()

    with _staging(out) as work, _export_model(model) as plain:
        staged: dict[str, list[Path]] = {}
        if "encoder" in parts:
            (work / "encoder").mkdir()
            staged["encoder"] = export_encoder(plain, work / "encoder", opset, external_data)
        if "decoder" in parts:
            (work / "decoder").mkdir()
            staged["decoder"] = [export_decoder(plain, work / "decoder", opset, return_single_mask)]
            if quantize == "int8":
                (work / "decoder_int8").mkdir()
                target = work / "decoder_int8" / FILE_NAMES["decoder_int8"]
                _quantize_int8(staged["decoder"][0], target)
                staged["decoder_int8"] = [target]
        written: dict[str, Path] = {}
        for key, files in staged.items():
            for f in files:
                with atomic_path(out / f.name) as tmp:
                    os.replace(f, tmp)
            written[key] = out / FILE_NAMES[key]
        stale = out / (FILE_NAMES["encoder"] + ".data")  # weights of an earlier export with external data
        if "encoder" in staged and stale.name not in {f.name for f in staged["encoder"]} and stale.is_file():
            stale.unlink()
    return written

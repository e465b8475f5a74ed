"""``samforge export onnx``: write a SAM (v1) model, optionally with a LoRA adapter folded in, or a SAM 2 image
model as ONNX files (``encoder.onnx``, ``decoder.onnx`` and, with ``--quantize int8``, ``decoder.int8.onnx``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from samforge.cli.common import prepare_out_dir
from samforge.models.configs import SAM_CONFIGS
from samforge.models.load import load_model
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base
from samforge.weights import resolve_checkpoint

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model for deployment (ONNX)")
    formats = p.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    o = formats.add_parser(
        "onnx",
        help="SAM (v1) or SAM 2 to ONNX: image encoder and prompt decoder",
        description="Load a SAM checkpoint (and a LoRA adapter, checked against it and merged), then write "
        "encoder.onnx (input: the normalised, padded 1x3xSxS image) and decoder.onnx (the interface of the official "
        "segment_anything ONNX decoder) to --out; --quantize int8 adds decoder.int8.onnx. Run them with "
        "samforge.export.OnnxSamPredictor (onnxruntime, no PyTorch). With a SAM 2 model (--model sam2.1_hiera_t, "
        "..., or a SAM 2 checkpoint) the encoder outputs image_embed, high_res_feats_0 and high_res_feats_1 and the "
        "decoder takes them (samforge.export.OnnxSAM2ImagePredictor runs them). Needs: pip install samforge[onnx].",
    )
    o.add_argument(
        "--model-type",
        "--model",
        dest="model_type",
        default=None,
        metavar="MODEL",
        help=f"model configuration: SAM ({', '.join(['default', *SAM_CONFIGS])}) or SAM 2 "
        f"({', '.join(SAM2_CONFIGS)}); optional with a samforge checkpoint (which records it), guessed from the "
        "weights' shapes otherwise",
    )
    o.add_argument("--checkpoint", required=True,
                   help="weights file (.pth/.pt official SAM or SAM 2, or samforge; .safetensors)")
    o.add_argument(
        "--adapter", default=None,
        help="LoRA adapter (.safetensors) trained on --checkpoint (SAM or SAM 2), merged before export",
    )
    o.add_argument("--out", required=True, help="output directory (created if needed; files in it are replaced)")
    o.add_argument("--opset", type=int, default=None, help="ONNX opset, 14..20 (default 17)")
    o.add_argument("--quantize", default=None, choices=["int8"], help="also write decoder.int8.onnx (dynamic int8)")
    o.add_argument(
        "--return-single-mask",
        action="store_true",
        help="decoder outputs one mask chosen by the official rule instead of all four (M = 1); for SAM 2 the "
        "mask SAM2ImagePredictor gives with multimask_output=False",
    )
    o.add_argument("--decoder-only", action="store_true", help="write the decoder only (no encoder.onnx)")
    o.set_defaults(run=run_onnx)


def run_onnx(args: argparse.Namespace) -> int:
    # Every check that needs no model comes first, so that a bad flag fails fast and writes nothing.
    from samforge.export.onnx_sam import (
        DEFAULT_OPSET,
        OnnxDependencyError,
        _require_quantization,
        check_opset,
        check_out_dir,
        export_sam_onnx,
        require_onnx,
    )

    opset = check_opset(DEFAULT_OPSET if args.opset is None else args.opset)
    if args.model_type is not None and args.model_type not in ("default", *SAM_CONFIGS, *SAM2_CONFIGS):
        raise ValueError(f"--model-type must be one of {['default', *SAM_CONFIGS, *SAM2_CONFIGS]}, "
                         f"got {args.model_type!r}")
    out = check_out_dir(prepare_out_dir(args.out))  # the message every subcommand gives; then the exporter's own
    checkpoint = resolve_checkpoint(args.checkpoint, what="--checkpoint")  # a name, URL or hub id -> a file
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint not found: {checkpoint}")
    if args.adapter is not None and not Path(args.adapter).is_file():
        raise FileNotFoundError(f"--adapter not found: {args.adapter}")
    try:
        require_onnx()
        if args.quantize:
            _require_quantization()
    except OnnxDependencyError as e:
        raise ValueError(str(e)) from e  # printed as a plain error, exit code 2

    from samforge.models.lora import merge_lora
    from samforge.train.adapter_file import load_adapter

    model = load_model(checkpoint, args.model_type)
    note = ""
    if args.adapter is not None:
        config = load_adapter(model, args.adapter)  # raises when the adapter was trained on another base
        merge_lora(model)
        note = f" with adapter {args.adapter} (rank {config.rank}) merged"
    if isinstance(model, SAM2Base):
        from samforge.export.onnx_sam2 import export_sam2_onnx

        parts = ("decoder",) if args.decoder_only else ("encoder", "decoder")
        files = export_sam2_onnx(model, out, opset=opset, quantize=args.quantize,
                                 return_single_mask=args.return_single_mask, parts=parts)
        print(f"exported {checkpoint}{note} (SAM 2, {model.config_name}) to ONNX (opset {opset}):")
        for key, path in files.items():
            print(f"  {key}: {path.resolve()}")
        return 0
    parts = ("decoder",) if args.decoder_only else ("encoder", "decoder")
    files = export_sam_onnx(model, out, opset=opset, quantize=args.quantize,
                            return_single_mask=args.return_single_mask, parts=parts)
    print(f"exported {checkpoint}{note} to ONNX (opset {opset}):")
    for key, path in files.items():
        print(f"  {key}: {path.resolve()}")
    return 0

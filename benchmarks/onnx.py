"""SAM and SAM 2 decoder latency, onnxruntime vs PyTorch, side by side in one process.

    .venv/bin/python benchmarks/onnx.py [--model vit_b] [--sam2 sam2.1_hiera_t] [--repeats 30] [--threads N] [--encoder]

The model holds random weights (latency does not depend on them); the decoder is exported with
``samforge.export.export_sam_onnx`` (fp32 and dynamic int8) into a temporary directory. Rows:

- ``decoder``: the decoder graph alone on the same inputs (one point + padding, 1024x768 original image, all four
  masks upsampled): ``SamOnnxDecoder`` in PyTorch vs the exported file in onnxruntime;
- ``predict``: ``SamPredictor.predict`` vs ``OnnxSamPredictor.predict`` (one point, multimask), given the embedding;
- with ``--encoder``, ``set_image`` too (exports the encoder: slow for vit_b, several minutes on 2 cores).

The same rows follow for the SAM 2 model of ``--sam2`` (``none`` to skip; exported with
``samforge.export.export_sam2_onnx``): ``SAM2OnnxDecoder`` vs its file, and ``SAM2ImagePredictor.predict`` vs
``OnnxSAM2ImagePredictor.predict`` given the image features.

Timings interleave the runtimes and report medians; ratio = PyTorch time / onnxruntime time (> 1: ONNX faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# This file is named onnx.py: drop its folder from the path, or "import onnx" would find this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from samforge import SamPredictor, build_sam  # noqa: E402
from samforge import SAM2ImagePredictor, build_sam2  # noqa: E402
from samforge.export import (  # noqa: E402
    DECODER_INPUTS,
    SAM2_DECODER_INPUTS,
    OnnxSAM2ImagePredictor,
    OnnxSamPredictor,
    SAM2OnnxDecoder,
    SamOnnxDecoder,
    export_sam2_onnx,
    export_sam_onnx,
)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: list, repeats: int) -> list[float]:
    """Median seconds of each function, run in turn ``repeats`` times (after one warm-up call each)."""
    for fn in fns:
        fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples):
            out.append(timed(fn, 1))
    return [statistics.median(s) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for both runtimes")
    parser.add_argument("--encoder", action="store_true", help="also export the encoder and time set_image")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--sam2", default="sam2.1_hiera_t", help="SAM 2 model to time as well ('none' to skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    sam = build_sam(args.model)
    size = (768, 1024)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        parts = ("encoder", "decoder") if args.encoder else ("decoder",)
        files = export_sam_onnx(sam, tmp, opset=args.opset, quantize="int8", parts=parts)
        export_s = time.perf_counter() - start
        sizes = {k: p.stat().st_size / 2**20 for k, p in files.items()}

        torch_pred = SamPredictor(sam)
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        encoder = files.get("encoder")
        onnx_fp32 = OnnxSamPredictor(encoder, files["decoder"], num_threads=args.threads)
        onnx_int8 = OnnxSamPredictor(None, files["decoder_int8"], num_threads=args.threads)
        rows = []
        if args.encoder:
            t_torch, t_onnx = interleaved([lambda: torch_pred.set_image(image), lambda: onnx_fp32.set_image(image)],
                                          max(1, args.repeats // 10))
            rows.append(("set_image", t_torch, {"fp32": t_onnx}))
        else:
            c, h, w = sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size
            embedding = torch.randn(1, c, h, w)
            torch_pred.reset_image()
            torch_pred.features = embedding
            torch_pred.original_size = size
            torch_pred.input_size = torch_pred.transform.get_preprocess_shape(*size, sam.image_encoder.img_size)
            torch_pred.is_image_set = True
        embedding_np = torch_pred.features.numpy()
        for p in (onnx_fp32, onnx_int8):
            p.set_image_embedding(embedding_np, size)

        # the decoder graph alone
        module = SamOnnxDecoder(sam)
        feed = dict(zip(DECODER_INPUTS, module.dummy_inputs(num_points=2)))
        feed["image_embeddings"] = torch_pred.features
        feed["point_coords"] = torch.tensor([[[500.0, 375.0], [0.0, 0.0]]])
        feed["point_labels"] = torch.tensor([[1.0, -1.0]])
        feed["has_mask_input"] = torch.tensor([0.0])
        feed["orig_im_size"] = torch.tensor([float(size[0]), float(size[1])])
        feed_np = {k: v.numpy() for k, v in feed.items()}

        def torch_decoder():
            with torch.no_grad():
                module(*feed.values())

        t = interleaved(
            [torch_decoder, lambda: onnx_fp32.decoder.run(None, feed_np), lambda: onnx_int8.decoder.run(None, feed_np)],
            args.repeats,
        )
        rows.append(("decoder", t[0], {"fp32": t[1], "int8": t[2]}))

        point = dict(point_coords=np.array([[500.0, 375.0]]), point_labels=np.array([1]))
        runs = [lambda: torch_pred.predict(**point), lambda: onnx_fp32.predict(**point),
                lambda: onnx_int8.predict(**point)]
        t = interleaved(runs, args.repeats)
        rows.append(("predict (1 point)", t[0], {"fp32": t[1], "int8": t[2]}))

    report(args.model, size, args, sizes, export_s, rows)
    if args.sam2 != "none":
        report(args.sam2, size, args, *bench_sam2(args.sam2, size, args))


def bench_sam2(name: str, size: tuple[int, int], args: argparse.Namespace) -> tuple[dict, float, list]:
    """The SAM 2 rows: decoder graph and ``predict`` (one point, multimask) on random image features."""
    torch.manual_seed(0)
    model = build_sam2(name, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        files = export_sam2_onnx(model, tmp, opset=args.opset, quantize="int8", parts=("decoder",))
        export_s = time.perf_counter() - start
        sizes = {k: p.stat().st_size / 2**20 for k, p in files.items()}
        module = SAM2OnnxDecoder(model)
        feed = dict(zip(SAM2_DECODER_INPUTS, module.dummy_inputs(num_points=2)))
        feed["point_coords"] = torch.tensor([[[500.0, 375.0], [0.0, 0.0]]])
        feed["point_labels"] = torch.tensor([[1.0, -1.0]])
        feed["has_mask_input"] = torch.tensor([0.0])
        feed["orig_im_size"] = torch.tensor([float(size[0]), float(size[1])])
        feed_np = {k: v.numpy() for k, v in feed.items()}

        torch_pred = SAM2ImagePredictor(model)  # the features set_image would cache, without running the encoder
        torch_pred._features = {"image_embed": feed["image_embed"],
                                "high_res_feats": [feed["high_res_feats_0"], feed["high_res_feats_1"]]}
        torch_pred._orig_hw = [size]
        torch_pred._is_image_set = True
        onnx_fp32 = OnnxSAM2ImagePredictor(None, files["decoder"], num_threads=args.threads)
        onnx_int8 = OnnxSAM2ImagePredictor(None, files["decoder_int8"], num_threads=args.threads)
        for p in (onnx_fp32, onnx_int8):
            p.set_image_embedding(feed_np["image_embed"], [feed_np["high_res_feats_0"], feed_np["high_res_feats_1"]],
                                  size)

        def torch_decoder():
            with torch.no_grad():
                module(*feed.values())

        rows = []
        t = interleaved(
            [torch_decoder, lambda: onnx_fp32.decoder.run(None, feed_np), lambda: onnx_int8.decoder.run(None, feed_np)],
            args.repeats,
        )
        rows.append(("decoder", t[0], {"fp32": t[1], "int8": t[2]}))
        point = dict(point_coords=np.array([[500.0, 375.0]]), point_labels=np.array([1]))
        t = interleaved([lambda: torch_pred.predict(**point), lambda: onnx_fp32.predict(**point),
                         lambda: onnx_int8.predict(**point)], args.repeats)
        rows.append(("predict (1 point)", t[0], {"fp32": t[1], "int8": t[2]}))
    return sizes, export_s, rows


def report(model: str, size: tuple[int, int], args: argparse.Namespace, sizes: dict, export_s: float,
           rows: list) -> None:
    print(f"{model} random weights, {size[1]}x{size[0]} image, torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}, {args.threads} threads, opset {args.opset}")
    print("export: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items()) + f" in {export_s:.1f} s")
    print(f"{'':20s} {'pytorch':>10s} {'ort fp32':>10s} {'ratio':>7s} {'ort int8':>10s} {'ratio':>7s}")
    for name, t_torch, onnx_times in rows:
        cells = ""
        for key in ("fp32", "int8"):
            if key in onnx_times:
                cells += f" {onnx_times[key] * 1e3:8.1f}ms {t_torch / onnx_times[key]:6.2f}x"
        print(f"{name:20s} {t_torch * 1e3:8.1f}ms{cells}")


if __name__ == "__main__":
    main()

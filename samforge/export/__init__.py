"""Export of trained models for deployment: SAM (v1) to ONNX, and a predictor that runs the files.

    from samforge.export import export_sam_onnx, OnnxSamPredictor
    files = export_sam_onnx(sam, "exported/", quantize="int8")   # encoder.onnx, decoder.onnx, decoder.int8.onnx
    predictor = OnnxSamPredictor(files["encoder"], files["decoder"])  # onnxruntime + numpy, no PyTorch

The ``onnx`` and ``onnxruntime`` packages are optional (``pip install samforge[onnx]``) and imported only when
exporting or running.
"""

from samforge.export.onnx_predictor import NumpyResizeLongestSide, OnnxSamPredictor
from samforge.export.onnx_sam import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    SUPPORTED_OPSETS,
    OnnxDependencyError,
    SamOnnxDecoder,
    SamOnnxEncoder,
    export_sam_onnx,
)

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "NumpyResizeLongestSide",
    "OnnxDependencyError",
    "OnnxSamPredictor",
    "SUPPORTED_OPSETS",
    "SamOnnxDecoder",
    "SamOnnxEncoder",
    "export_sam_onnx",
]

"""Export of trained models for deployment: SAM (v1) and SAM 2 to ONNX, and predictors that run the files.

    from samforge.export import export_sam_onnx, OnnxSamPredictor
    files = export_sam_onnx(sam, "exported/", quantize="int8")   # encoder.onnx, decoder.onnx, decoder.int8.onnx
    predictor = OnnxSamPredictor(files["encoder"], files["decoder"])  # onnxruntime + numpy, no PyTorch

    files = export_sam2_onnx(sam2, "exported2/")                     # SAM 2: the decoder also takes the
    predictor = OnnxSAM2ImagePredictor(files["encoder"], files["decoder"])  # high-res features

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
from samforge.export.onnx_sam2 import SAM2OnnxDecoder, SAM2OnnxEncoder, export_sam2_onnx
from samforge.export.onnx_sam2_predictor import (
    SAM2_DECODER_INPUTS,
    SAM2_DECODER_OUTPUTS,
    SAM2_ENCODER_OUTPUTS,
    OnnxSAM2ImagePredictor,
)
from samforge.export.sam_onnx_model import SamOnnxModel

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "NumpyResizeLongestSide",
    "OnnxDependencyError",
    "OnnxSAM2ImagePredictor",
    "OnnxSamPredictor",
    "SAM2OnnxDecoder",
    "SAM2OnnxEncoder",
    "SAM2_DECODER_INPUTS",
    "SAM2_DECODER_OUTPUTS",
    "SAM2_ENCODER_OUTPUTS",
    "SUPPORTED_OPSETS",
    "SamOnnxDecoder",
    "SamOnnxEncoder",
    "SamOnnxModel",
    "export_sam2_onnx",
    "export_sam_onnx",
]

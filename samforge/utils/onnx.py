"""``segment_anything.utils.onnx`` under samforge: ``SamOnnxModel`` (``samforge.export.sam_onnx_model``),
for the official ``scripts/export_onnx_model.py`` with only its import changed."""

from samforge.export.sam_onnx_model import SamOnnxModel

__all__ = ["SamOnnxModel"]

"""``segment_anything.build_sam`` under samforge: the official builder names, each the registry's entry.

``build_sam_vit_h(checkpoint=None)`` (also ``build_sam`` *in this module*, as officially),
``build_sam_vit_l``, ``build_sam_vit_b`` and ``sam_model_registry``. Note that the package-level
``samforge.build_sam`` is samforge's general builder, ``build_sam(model_type="vit_b", checkpoint=None)``.
"""

from samforge.models.build import sam_model_registry

build_sam_vit_h = sam_model_registry["vit_h"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_b = sam_model_registry["vit_b"]
build_sam = build_sam_vit_h  # the official module's alias

__all__ = ["build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "sam_model_registry"]

"""The module paths of the official ``sam2`` package under ``samforge.sam2``, each re-exporting samforge's objects:

=======================================  ==============================================================
official                                 samforge
=======================================  ==============================================================
``sam2.build_sam``                       ``samforge.sam2.build_sam``
``sam2.sam2_image_predictor``            ``samforge.sam2.sam2_image_predictor``
``sam2.sam2_video_predictor``            ``samforge.sam2.sam2_video_predictor``
``sam2.automatic_mask_generator``        ``samforge.sam2.automatic_mask_generator``
``sam2.modeling.sam2_base``              ``samforge.sam2.modeling.sam2_base``
``sam2.utils.misc`` / ``.transforms``    ``samforge.sam2.utils.misc`` / ``.transforms`` / ``.amg``
=======================================  ==============================================================
"""

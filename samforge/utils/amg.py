"""``segment_anything.utils.amg`` (and ``sam2.utils.amg``) under samforge: the automatic-mask utilities of
``samforge.predict.amg_utils`` (``MaskData``, ``batch_iterator``, ``calculate_stability_score``,
``mask_to_rle_pytorch``, ``remove_small_regions``, ...), re-exported under their official names."""

from samforge.predict.amg_utils import *  # noqa: F403  (the names of its __all__)
from samforge.predict.amg_utils import __all__  # noqa: F401

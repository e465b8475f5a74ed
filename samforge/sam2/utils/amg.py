"""``sam2.utils.amg`` under samforge: the same utilities as ``samforge.utils.amg``."""

from samforge.utils.amg import *  # noqa: F403  (the official names, listed there)
from samforge.utils.amg import __all__  # noqa: F401

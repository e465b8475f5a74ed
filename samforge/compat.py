"""An opt-in switch for code that imports ``segment_anything`` / ``sam2`` and cannot be edited.

    import samforge.compat
    samforge.compat.enable()     # from here on, `import segment_anything` and `from sam2.build_sam import
                                 # build_sam2` give samforge's modules (see ALIASES)
    ...
    samforge.compat.disable()    # sys.modules as it was (the official packages again, where installed)

or ``with samforge.compat.aliases(): ...``. Off by default: importing samforge changes nothing. ``enable`` sets
the module names of :data:`ALIASES` in ``sys.modules`` to samforge's modules and sets aside (until ``disable``)
any official module already imported under those roots, so that the two are never mixed. Official submodules
that samforge does not offer (e.g. ``sam2.modeling.backbones``) fail to import while the aliases are on.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from types import ModuleType
from typing import Iterator

ROOTS = ("segment_anything", "sam2")
# official module name -> samforge module
ALIASES = {
    "segment_anything": "samforge",
    "segment_anything.build_sam": "samforge.build_sam",
    "segment_anything.predictor": "samforge.predict.predictor",
    "segment_anything.automatic_mask_generator": "samforge.predict.automatic_mask_generator",
    "segment_anything.modeling": "samforge.modeling",
    "segment_anything.utils": "samforge.utils",
    "segment_anything.utils.transforms": "samforge.utils.transforms",
    "segment_anything.utils.amg": "samforge.utils.amg",
    "segment_anything.utils.onnx": "samforge.utils.onnx",
    "sam2": "samforge.sam2",
    "sam2.build_sam": "samforge.sam2.build_sam",
    "sam2.sam2_image_predictor": "samforge.sam2.sam2_image_predictor",
    "sam2.sam2_video_predictor": "samforge.sam2.sam2_video_predictor",
    "sam2.automatic_mask_generator": "samforge.sam2.automatic_mask_generator",
    "sam2.modeling": "samforge.sam2.modeling",
    "sam2.modeling.sam2_base": "samforge.sam2.modeling.sam2_base",
    "sam2.utils": "samforge.sam2.utils",
    "sam2.utils.misc": "samforge.sam2.utils.misc",
    "sam2.utils.transforms": "samforge.sam2.utils.transforms",
    "sam2.utils.amg": "samforge.sam2.utils.amg",
}

_set_aside: dict[str, ModuleType] | None = None  # the official modules enable() took out of sys.modules


def _under_roots(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in ROOTS)


def is_enabled() -> bool:
    """Whether the aliases are on."""
    return _set_aside is not None


def enable() -> None:
    """Make ``segment_anything`` and ``sam2`` (and the submodules of :data:`ALIASES`) samforge's, process-wide.
    Calling it again while enabled changes nothing."""
    global _set_aside
    if _set_aside is not None:
        return
    targets = {alias: importlib.import_module(target) for alias, target in ALIASES.items()}  # fails before any change
    set_aside = {name: module for name, module in sys.modules.items() if _under_roots(name)}
    for name in set_aside:
        del sys.modules[name]
    sys.modules.update(targets)
    _set_aside = set_aside


def disable() -> None:
    """Undo :func:`enable`: remove every ``segment_anything`` / ``sam2`` entry and put back the modules it set
    aside. Calling it while disabled changes nothing."""
    global _set_aside
    if _set_aside is None:
        return
    for name in [n for n in sys.modules if _under_roots(n)]:
        del sys.modules[name]
    sys.modules.update(_set_aside)
    _set_aside = None


@contextlib.contextmanager
def aliases() -> Iterator[None]:
    """The aliases on inside a ``with`` block (left as they were found afterwards)."""
    was_enabled = is_enabled()
    enable()
    try:
        yield
    finally:
        if not was_enabled:
            disable()

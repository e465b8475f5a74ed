"""What a round checkpoint records to rebuild a SAM 2 model: its packaged config name and, as ``key=value``
overrides, every setting where the model's configuration differs from that packaged config (a shrunk test model,
a resized input, the decoder's post-processing). :func:`samforge.models.load.load_model` rebuilds the model from
exactly this record (``sam_config``: ``{"family": "sam2", "config_name", "overrides"}``, as ``samforge train``
writes it), so a retrained SAM 2 round loads back as any other checkpoint."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import OmegaConf

from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base
from samforge.models.sam2.config import load_sam2_config


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def sam2_model_record(model: SAM2Base) -> dict[str, Any]:
    """``{"family": "sam2", "config_name": NAME, "overrides": [...]}`` for ``model`` (built by ``build_sam2`` or
    ``load_model``, which set ``model.config`` and ``model.config_name``). Raises ``ValueError`` for a model of a
    custom YAML file (no packaged name to rebuild it from) or one without its configuration."""
    if not isinstance(model, SAM2Base):
        raise TypeError(f"model must be a SAM2Base, got {type(model).__name__}")
    name, config = getattr(model, "config_name", None), getattr(model, "config", None)
    if name not in SAM2_CONFIGS or config is None:
        raise ValueError(f"a round checkpoint records a SAM 2 model by its packaged config name (one of "
                         f"{list(SAM2_CONFIGS)}) and configuration; this model has config_name {name!r}"
                         f"{' and no config' if config is None else ''}: build it with build_sam2(NAME, ...)")
    packaged = _leaves(OmegaConf.to_container(OmegaConf.structured(load_sam2_config(name)[1]), resolve=True))
    own = _leaves(OmegaConf.to_container(OmegaConf.structured(config), resolve=True))
    overrides = [f"++{key}={json.dumps(value)}" for key, value in own.items()
                 if key not in packaged or packaged[key] != value]
    return {"family": "sam2", "config_name": name, "overrides": overrides}

"""DESIGN.md's layers hold: models/ imports nothing above it, predict/ knows models only,
and samforge never imports the official packages (they are test oracles)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "samforge"
ALLOWED = {
    "weights": {"weights"},  # the official weights by name: download, verify, cache (the bottom layer)
    "models": {"models", "weights"},
    "predict": {"models", "predict", "weights"},
    "data": {"data", "utils", "viz"},
    "viz": {"viz"},
    "utils": {"utils"},
    "export": {"export", "models", "predict", "utils"},  # deployment: the predictors' preprocessing constants
    "serve": {"serve", "predict", "data", "models", "utils", "engine"},  # a face: cli/ is the only layer it may not use
    "engine": {"engine", "models", "data", "predict", "train", "evaluate", "utils", "weights", "viz"},  # not the faces
}


# the official module paths segment_anything.utils.{transforms,amg,onnx} under samforge.utils: thin re-exports
# of the objects of the layer that holds them (README, "Drop-in")
DROP_IN = {"utils/transforms.py": {"predict"}, "utils/amg.py": {"predict"}, "utils/onnx.py": {"export"}}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_there_are_files_to_check():
    assert len(files()) > 10


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_down(layer):
    for path in (ROOT / layer).rglob("*.py"):
        for name in imported_modules(path):
            if name.startswith("samforge."):
                target = name.split(".")[1]
                allowed = ALLOWED[layer] | DROP_IN.get(path.relative_to(ROOT).as_posix(), set())
                assert target in allowed, f"{path.relative_to(ROOT)} imports {name} (layer {layer})"


def test_no_official_package_imports():
    for path in files():
        for name in imported_modules(path):
            assert name.split(".")[0] not in {"segment_anything", "sam2"}, f"{path} imports {name}"

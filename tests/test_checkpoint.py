"""Checkpoint files: official files load as they are, strictly, safely, with clear errors."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from samforge import build_sam, sam_model_registry


@pytest.fixture(scope="module")
def small_state():
    torch.manual_seed(0)
    return sam_model_registry["vit_small"]().state_dict()


def same_weights(model, state):
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_official_vit_b_file_loads_as_is(vit_b_pair, tmp_path):
    official, _ = vit_b_pair
    path = tmp_path / "sam_vit_b.pth"
    torch.save(official.state_dict(), path)  # the official release format: a raw state dict
    model = sam_model_registry["vit_b"](checkpoint=path)
    assert same_weights(model, official.state_dict())
    assert not model.training


@pytest.mark.parametrize("fmt", ["raw", "wrapped", "safetensors"])
def test_formats(small_state, tmp_path, fmt):
    if fmt == "safetensors":
        path = tmp_path / "m.safetensors"
        save_file({k: v.contiguous() for k, v in small_state.items()}, str(path))
    else:
        path = tmp_path / "m.pt"
        torch.save(small_state if fmt == "raw" else {"model": small_state, "step": 3}, path)
    assert same_weights(build_sam("vit_small", path), small_state)


def test_missing_and_unexpected_keys_are_named(small_state, tmp_path):
    state = dict(small_state)
    del state["mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "m.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as e:
        build_sam("vit_small", path)
    msg = str(e.value)
    assert "missing keys (1): mask_decoder.iou_token.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert str(path) in msg


def test_wrong_model_type_says_what_the_file_is(small_state, tmp_path):
    path = tmp_path / "small.pt"
    torch.save(small_state, path)
    with pytest.raises(ValueError, match="looks like a 'vit_small' checkpoint"):
        sam_model_registry["vit_b"](checkpoint=path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        sam_model_registry["vit_small"](checkpoint=tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(small_state, tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        torch.save(small_state, path)
    else:
        save_file({k: v.contiguous() for k, v in small_state.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        build_sam("vit_small", path)


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        build_sam("vit_small", empty)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="could not read checkpoint"):
        build_sam("vit_small", garbage)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        build_sam("vit_small", path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        build_sam("vit_small", path)


def test_checkpoint_path_type():
    with pytest.raises(TypeError, match="path"):
        build_sam("vit_small", checkpoint=123)

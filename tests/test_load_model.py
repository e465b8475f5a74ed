"""``samforge.models.load_model``: one loader for official SAM / SAM 2 files and samforge checkpoints of either
family (a SAM 2 one rebuilds its recorded config overrides, e.g. a smaller image size)."""

from __future__ import annotations

import pytest
import torch
from sam2_oracle import SMALL_OVERRIDES

from samforge.models import Sam, SAM2Base, build_sam, build_sam2, load_model
from samforge.models.sam import Sam as SamClass

RECORD = {"family": "sam2", "config_name": "sam2.1_hiera_t", "overrides": list(SMALL_OVERRIDES)}


@pytest.fixture(scope="module")
def small_sam2():
    torch.manual_seed(3)
    return build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))


def test_a_samforge_sam2_checkpoint_rebuilds_its_overrides(tmp_path, small_sam2):
    path = tmp_path / "run.pt"
    torch.save({"model": small_sam2.state_dict(), "sam_config": RECORD, "step": 7}, path)
    for model_type in (None, "sam2.1_hiera_t"):
        model = load_model(path, model_type)
        assert isinstance(model, SAM2Base) and not model.training
        assert model.image_size == 256 and model.image_encoder.trunk.patch_embed.proj.out_channels == 16
        assert all(torch.equal(v, small_sam2.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="holds a 'sam2.1_hiera_t' SAM 2 model, but model_type 'sam2.1_hiera_s'"):
        load_model(path, "sam2.1_hiera_s")
    with pytest.raises(ValueError, match="not SAM \\(v1\\)"):
        from samforge.models import load_sam

        load_sam(path)


def test_official_style_files_of_both_families(tmp_path, small_sam2):
    sam2_file = tmp_path / "sam2.pt"
    torch.save({"model": small_sam2.state_dict()}, sam2_file)  # no record: an official file of no known size
    with pytest.raises(ValueError, match="SAM 2 checkpoint of no known size"):
        load_model(sam2_file)
    with pytest.raises(ValueError, match="sam2.1_hiera_t"):  # the full-size config: shapes differ, named
        load_model(sam2_file, "sam2.1_hiera_t")
    torch.manual_seed(0)
    sam = build_sam("vit_small")
    sam_file = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), sam_file)
    for model_type in (None, "vit_small"):
        loaded = load_model(sam_file, model_type)
        assert isinstance(loaded, SamClass) and isinstance(loaded, Sam)
        assert all(torch.equal(v, sam.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(ValueError, match="is not a SAM 2 checkpoint"):
        load_model(sam_file, "sam2.1_hiera_t")
    with pytest.raises(ValueError, match="model_type must be one of"):
        load_model(sam_file, "vit_xl")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")

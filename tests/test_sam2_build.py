"""build_sam2: the official configurations (layout and settings), names, overrides, checkpoints."""

from __future__ import annotations

import os
from dataclasses import fields

import pytest
import torch
from sam2_oracle import SMALL_OVERRIDES, official_sam2, official_sam2_meta

from samforge import SAM2_CONFIGS, SAM2ImagePredictor, build_sam2
from samforge.models.sam2.config import VIDEO_PREDICTOR_KEYS, ModelConfig, load_sam2_config


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(SAM2_CONFIGS))
def test_official_layout(name):
    """Every official model: the same state-dict keys and shapes, the same parameter count (meta device)."""
    with torch.device("meta"):
        ours = build_sam2(name, device="meta")
    official = official_sam2_meta(name)
    assert shapes(ours) == shapes(official)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in official.parameters())


def settings(model) -> dict:
    """Every setting of a SAM2Base and of its modules that its constructor arguments decide."""
    skip = {"image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder_extra_args"}
    skip.add("compile_image_encoder")
    skip.update(VIDEO_PREDICTOR_KEYS)  # SAM2VideoPredictor's settings (tests/test_sam2_video.py checks them)
    out = {f.name: getattr(model, f.name) for f in fields(ModelConfig) if f.name not in skip}
    out["no_obj_embed_spatial"] = out["no_obj_embed_spatial"] is not None  # a parameter, or None
    dec = model.sam_mask_decoder
    out["decoder"] = [getattr(dec, a) for a in (
        "dynamic_multimask_via_stability", "dynamic_multimask_stability_delta", "dynamic_multimask_stability_thresh",
        "pred_obj_scores", "use_high_res_features", "use_multimask_token_for_obj_ptr", "num_mask_tokens")]
    out["iou_sigmoid"] = dec.iou_prediction_head.sigmoid_output
    trunk, neck = model.image_encoder.trunk, model.image_encoder.neck
    out["trunk"] = [list(trunk.window_spec), list(trunk.global_att_blocks), trunk.stage_ends, trunk.q_pool_blocks,
                    trunk.channel_list, [(b.window_size, b.dim, b.dim_out, b.attn.num_heads, b.q_stride)
                                         for b in trunk.blocks]]
    out["neck"] = [neck.fpn_top_down_levels, neck.fpn_interp_model, neck.fuse_type, model.image_encoder.scalp]
    layer = model.memory_attention.layers[0]
    out["memory_attention"] = [
        layer.pos_enc_at_attn, layer.pos_enc_at_cross_attn_keys, layer.pos_enc_at_cross_attn_queries,
        layer.dropout_value, layer.activation_str, layer.self_attn.dropout_p, layer.cross_attn_image.rope_k_repeat,
        layer.self_attn.rope_k_repeat, model.memory_attention.pos_enc_at_input, len(model.memory_attention.layers)]
    out["pe"] = [(pe.num_pos_feats, pe.temperature, pe.normalize, pe.scale) for pe in
                 (neck.position_encoding, model.memory_encoder.position_encoding)]
    return out


@pytest.mark.parametrize("apply_postprocessing", [True, False])
def test_settings_match_official_build(apply_postprocessing):
    official = official_sam2("sam2.1_hiera_t", apply_postprocessing=apply_postprocessing)
    ours = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu", apply_postprocessing=apply_postprocessing)
    assert settings(ours) == settings(official)
    assert ours.sam_mask_decoder.dynamic_multimask_via_stability is apply_postprocessing
    assert not ours.training and not official.training


def test_settings_of_sam2_first_release():
    with torch.device("meta"):
        ours = build_sam2("sam2_hiera_l", device="meta")
    official = official_sam2_meta("sam2_hiera_l")
    official.sam_mask_decoder.dynamic_multimask_via_stability = True  # the official build_sam2 adds these
    assert settings(ours) == settings(official)


@pytest.mark.parametrize(
    "spelling",
    ["configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_s.yaml", "sam2.1_hiera_s"],
)
def test_config_spellings(spelling):
    name, cfg = load_sam2_config(spelling)
    assert name == "sam2.1_hiera_s"
    assert cfg.model.image_encoder.trunk.stages == [1, 2, 11, 2]


def test_unknown_config_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown SAM 2 config 'sam2.1_hiera_xl'") as e:
        build_sam2("sam2.1_hiera_xl")
    assert "sam2.1_hiera_t" in str(e.value) and "sam2_hiera_b+" in str(e.value)
    with pytest.raises(TypeError, match="config name"):
        build_sam2(3)


def test_overrides():
    ours = build_sam2("sam2.1_hiera_t", device="meta", hydra_overrides_extra=list(SMALL_OVERRIDES))
    assert ours.image_size == 256 and ours.image_encoder.trunk.channel_list == [128, 64, 32, 16]
    with pytest.raises(ValueError, match="not_a_key"):
        build_sam2("sam2.1_hiera_t", device="meta", hydra_overrides_extra=["++model.not_a_key=1"])
    with pytest.raises(ValueError, match="key=value"):
        build_sam2("sam2.1_hiera_t", device="meta", hydra_overrides_extra=["model.image_size"])
    with pytest.raises(ValueError, match="image_size"):
        build_sam2("sam2.1_hiera_t", device="meta", hydra_overrides_extra=["model.image_size=big"])


def test_custom_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "model:\n  image_size: 512\n  image_encoder:\n    scalp: 1\n"
        "    trunk: {embed_dim: 8, num_heads: 1, stages: [1, 1, 1, 1], global_att_blocks: [2]}\n"
        "    neck: {backbone_channel_list: [64, 32, 16, 8], fpn_top_down_levels: [2, 3]}\n"
    )
    model = build_sam2(str(path), device="meta")
    assert model.config_name == "custom" and model.image_size == 512 and len(model.image_encoder.trunk.blocks) == 4


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def official_tiny_file(tmp_path_factory):
    """An official-format SAM 2.1 tiny checkpoint: ``{"model": state_dict}``."""
    torch.manual_seed(5)
    official = official_sam2("sam2.1_hiera_t")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": official.state_dict()}, path)
    return path, official.state_dict()


def test_official_checkpoint_loads_as_is(official_tiny_file):
    path, state = official_tiny_file
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", path, device="cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model.training


def test_wrong_config_names_keys_and_what_the_file_is(official_tiny_file):
    path, _ = official_tiny_file
    with pytest.raises(ValueError) as e:
        build_sam2("sam2_hiera_t", path, device="meta")
    msg = str(e.value)
    assert "unexpected keys (3): no_obj_embed_spatial, obj_ptr_tpos_proj.bias, obj_ptr_tpos_proj.weight" in msg
    assert "looks like a 'sam2.1_hiera_t' checkpoint" in msg and str(path) in msg


def test_missing_keys_are_named(tmp_path):
    model = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    state = model.state_dict()
    del state["no_mem_embed"]
    path = tmp_path / "m.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"missing keys \(1\): no_mem_embed"):
        build_sam2("sam2.1_hiera_t", path, hydra_overrides_extra=list(SMALL_OVERRIDES))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        build_sam2("sam2.1_hiera_t", path)


def test_from_pretrained_local_file(official_tiny_file):
    path, state = official_tiny_file
    predictor = SAM2ImagePredictor.from_pretrained(path, device="cpu", mask_threshold=0.5)
    assert predictor.model.config_name == "sam2.1_hiera_t" and predictor.mask_threshold == 0.5
    assert torch.equal(predictor.model.no_mem_embed, state["no_mem_embed"])
    with pytest.raises(ValueError, match="looks like a 'sam2.1_hiera_t' checkpoint"):
        SAM2ImagePredictor.from_pretrained(path, config_file="sam2.1_hiera_s")
    with pytest.raises(FileNotFoundError):
        SAM2ImagePredictor.from_pretrained(path.parent / "nope.pt")


def test_from_pretrained_fetches_an_official_id_through_the_hub(official_tiny_file, tmp_path, monkeypatch):
    """An official id goes through samforge.weights (huggingface_hub, then the table's size and hash check);
    without huggingface_hub the message says what to install. No network: the hub is a stand-in."""
    import dataclasses
    import hashlib
    import sys
    import types

    from samforge.weights import WEIGHTS

    path, state = official_tiny_file
    body = path.read_bytes()
    entry = dataclasses.replace(WEIGHTS["sam2.1_hiera_tiny"], size=len(body), sha256=hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(WEIGHTS, "sam2.1_hiera_tiny", entry)
    monkeypatch.setenv("SAMFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed: the import fails
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        SAM2ImagePredictor.from_pretrained("facebook/sam2.1-hiera-tiny")
    calls = []

    def hf_hub_download(repo_id, filename, local_files_only=False):
        calls.append((repo_id, filename))
        return str(path)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    predictor = SAM2ImagePredictor.from_pretrained("facebook/sam2.1-hiera-tiny", mask_threshold=0.5)
    assert calls == [("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")]
    assert predictor.model.config_name == "sam2.1_hiera_t" and predictor.mask_threshold == 0.5
    assert torch.equal(predictor.model.no_mem_embed, state["no_mem_embed"])
    monkeypatch.setitem(WEIGHTS, "sam2.1_hiera_tiny", dataclasses.replace(entry, sha256="0" * 64))
    (tmp_path / "cache" / "weights" / "hub").mkdir(parents=True, exist_ok=True)
    for stamp in (tmp_path / "cache").rglob("*.verified.json"):
        stamp.unlink()
    with pytest.raises(ValueError, match="mismatch"):  # the hub's file is checked against the table
        SAM2ImagePredictor.from_pretrained("facebook/sam2.1-hiera-tiny")

"""Fine-tuning: LoRA adapters (counts, Q/V only, zero start, merge), the adapter file (round trip, wrong base),
what each mode trains, layer-wise decay, the embedding cache (reuse, invalidation), and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from samforge.cli.main import main
from samforge.models.build import build_sam, load_sam, sam_model_registry
from samforge.models.configs import SAM_CONFIGS
from samforge.models.lora import LoraConfig, LoRALinear, add_lora, has_lora, lora_state_dict, merge_lora
from samforge.train.adapter_file import load_adapter, read_adapter, save_adapter, weights_fingerprint
from samforge.train.config import FinetuneConfig, OptimConfig, load_config
from samforge.train.embedding_cache import EmbeddingCache
from samforge.train.finetune import apply_finetune, layer_decay_scales
from samforge.train.optim import build_optimizer
from samforge.train.trainer import train

from test_train_run import TINY

TINY_SAM = SAM_CONFIGS["vit_small"].__class__(
    64, 2, 2, (1,), image_size=64, patch_size=8, window_size=4, prompt_embed_dim=32, decoder_num_heads=2,
    decoder_mlp_dim=64, iou_head_hidden_dim=32,
)


def tiny_sam(seed: int = 0):
    torch.manual_seed(seed)
    model = build_sam(TINY_SAM)
    with torch.no_grad():  # pos_embed / rel_pos start at zero: give every weight a value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def randomize_lora(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def outputs(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 64, 64, generator=g) * 255
    record = {"image": image, "original_size": (64, 64), "boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]),
              "point_coords": torch.tensor([[[20.0, 30.0]]]), "point_labels": torch.tensor([[1]])}
    model.eval()
    with torch.no_grad():
        out = model([record], multimask_output=True)[0]
    return out["low_res_logits"], out["iou_predictions"]


def test_lora_vit_b_rank_4_has_147456_parameters():
    model = build_sam("vit_b")
    assert add_lora(model, LoraConfig(rank=4, alpha=4)) == 768 * 4 * 2 * 2 * 12 == 147_456
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 147_456
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 12


def test_lora_adapts_q_and_v_only_and_starts_at_the_base():
    model = tiny_sam()
    before = outputs(model)
    add_lora(model, LoraConfig(rank=2, alpha=4))
    after = outputs(model)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # B = 0: exactly the base
    randomize_lora(model)
    qkv = model.image_encoder.blocks[0].attn.qkv
    x = torch.randn(5, qkv.in_features)
    base = torch.nn.functional.linear(x, qkv.weight, qkv.bias)
    adapted = qkv(x)
    d = qkv.in_features
    assert torch.equal(adapted[:, d : 2 * d], base[:, d : 2 * d])  # K untouched
    assert not torch.allclose(adapted[:, :d], base[:, :d]) and not torch.allclose(adapted[:, 2 * d :], base[:, 2 * d :])
    assert not torch.allclose(outputs(model)[0], before[0])


@pytest.mark.parametrize("decoder", [False, True])
def test_merged_and_unmerged_models_agree(decoder):
    model = tiny_sam()
    add_lora(model, LoraConfig(rank=3, alpha=6, decoder=decoder))
    randomize_lora(model)
    unmerged = outputs(model)
    merge_lora(model)
    assert not has_lora(model)
    assert not any("lora_" in k for k in model.state_dict())
    merged = outputs(model)
    torch.testing.assert_close(merged[0], unmerged[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged[1], unmerged[1], atol=1e-5, rtol=1e-5)
    plain = build_sam(TINY_SAM)
    plain.load_state_dict(model.state_dict())  # strict: a plain SAM again


def test_decoder_adapters_switch():
    model = tiny_sam()
    add_lora(model, LoraConfig(rank=2, alpha=2, decoder=True))
    names = [k for k in lora_state_dict(model) if k.startswith("mask_decoder.")]
    assert names and all(".q_proj." in k or ".v_proj." in k for k in names)


@pytest.mark.parametrize("rank, alpha", [(0, 4), (-1, 4), (2.5, 4), (4, 0), (4, -1.0), (True, 4)])
def test_bad_lora_settings_are_clear_errors(rank, alpha):
    with pytest.raises(ValueError, match="rank|alpha"):
        LoraConfig(rank=rank, alpha=alpha)


def test_adapter_file_round_trip_and_wrong_base(tmp_path):
    base = tiny_sam(seed=0)
    fingerprint = weights_fingerprint(base)
    model = tiny_sam(seed=0)
    config = LoraConfig(rank=2, alpha=4)
    add_lora(model, config)
    randomize_lora(model)
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)  # the decoder trained along
    assert weights_fingerprint(model) != fingerprint
    path = save_adapter(tmp_path / "a.safetensors", model, config, fingerprint, "tiny", ("mask_decoder.",))
    tensors, meta = read_adapter(path)
    assert meta["lora"] == config and meta["base_fingerprint"] == fingerprint
    assert "mask_decoder.iou_token.weight" in tensors and not any(k.startswith("image_encoder.") and "lora_" not in k
                                                                  for k in tensors)
    restored = tiny_sam(seed=0)
    assert load_adapter(restored, path) == config
    for a, b in zip(outputs(model), outputs(restored)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(tiny_sam(seed=5), path)
    with pytest.raises(ValueError, match="not a samforge LoRA adapter"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        read_adapter(tmp_path / "other.safetensors")


def test_what_each_mode_trains():
    decoder = tiny_sam()
    plan = apply_finetune(decoder, FinetuneConfig(mode="decoder"))
    trainable = {n for n, p in decoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("mask_decoder.") for n in trainable)
    assert plan.trainable == sum(p.numel() for n, p in decoder.named_parameters() if n in trainable)

    lora = tiny_sam()
    plan = apply_finetune(lora, FinetuneConfig(mode="lora", rank=2, train_decoder=False))
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == set(lora_state_dict(lora))
    lora2 = tiny_sam()
    apply_finetune(lora2, FinetuneConfig(mode="lora", rank=2, train_decoder=True))
    trainable = {n for n, p in lora2.named_parameters() if p.requires_grad}
    assert any(n.startswith("mask_decoder.") for n in trainable)
    assert not any(n.startswith(("image_encoder.", "prompt_encoder.")) and "lora_" not in n for n in trainable)

    full = tiny_sam()
    plan = apply_finetune(full, FinetuneConfig(mode="full", layer_decay=0.5))
    assert plan.trainable == plan.total
    optimizer = build_optimizer(full, OptimConfig(lr=1.0), plan.lr_scales)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(full.named_parameters())
    assert lr_of[id(named["mask_decoder.iou_token.weight"])] == 1.0
    assert lr_of[id(named["image_encoder.blocks.1.attn.qkv.weight"])] == 0.5  # top of 2 blocks
    assert lr_of[id(named["image_encoder.blocks.0.attn.qkv.weight"])] == 0.25
    assert lr_of[id(named["image_encoder.patch_embed.proj.weight"])] == 0.125
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_scales(full, 1.5)


def test_embedding_cache_reuses_and_invalidates(tmp_path):
    model = tiny_sam()
    for p in model.image_encoder.parameters():
        p.requires_grad_(False)
    images = torch.randn(3, 3, 64, 64)
    cache = EmbeddingCache(tmp_path, model.image_encoder)
    first = cache(images)
    assert (cache.hits, cache.misses) == (0, 3)
    with torch.no_grad():
        torch.testing.assert_close(first, model.image_encoder(images))
    again = cache(images)
    assert (cache.hits, cache.misses) == (3, 3) and torch.equal(first, again)
    changed = images.clone()
    changed[1, 0, 0, 0] += 1.0  # one pixel of one image
    cache(changed)
    assert (cache.hits, cache.misses) == (5, 4)
    with torch.no_grad():  # other weights: another model key, nothing reused
        model.image_encoder.neck[0].weight.mul_(1.5)
    other = EmbeddingCache(tmp_path, model.image_encoder)
    assert other.directory != cache.directory
    other(images)
    assert (other.hits, other.misses) == (0, 3)
    model.image_encoder.neck[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen encoder"):
        EmbeddingCache(tmp_path, model.image_encoder)


def test_decoder_mode_run_uses_the_cache_and_freezes_the_encoders(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [*TINY, f"out={out}", "steps=6", "val_every=6", "checkpoint_every=6",
                             "eval_at_end=false", "finetune.mode=decoder"])
    outcome = train(cfg)
    files = list((out / "embedding_cache").rglob("*.safetensors"))
    assert len(files) == 6  # synthetic:6:64 -> each image embedded once, reused afterwards (6 steps x 2 images)
    torch.manual_seed(cfg.seed)
    initial = build_sam(outcome.model.config)  # the same seeded random init the run started from
    for name, p in outcome.model.named_parameters():
        if name.startswith(("image_encoder.", "prompt_encoder.")):
            assert torch.equal(p, initial.state_dict()[name]), name


def test_finetune_lora_cli_then_merge(tmp_path, capsys):
    base_run = tmp_path / "base"
    train(load_config(None, [*TINY, f"out={base_run}", "steps=2", "eval_at_end=false", "val_every=2"]))
    base_ckpt = base_run / "checkpoints" / "last.pt"
    tiny_overrides = [o for o in TINY if not o.startswith(("model.", "data.train"))]
    out = tmp_path / "ft"
    rc = main(["finetune", "--base", str(base_ckpt), "--data", "synthetic:6:64", "--mode", "lora", "--rank", "2",
               "--alpha", "4", "--out", str(out), *tiny_overrides, "steps=4", "val_every=4", "eval_at_end=false"])
    assert rc == 0
    adapter = out / "adapter.safetensors"
    with safe_open(str(adapter), framework="pt") as f:
        meta = f.metadata()
        assert json.loads(meta["lora"]) == {"rank": 2, "alpha": 4.0, "decoder": False}
    assert adapter.stat().st_size < 0.25 * base_ckpt.stat().st_size

    merged = tmp_path / "merged.pth"
    assert main(["lora", "merge", "--base", str(base_ckpt), "--adapter", str(adapter), "--out", str(merged)]) == 0
    plain = build_sam(load_sam(base_ckpt).config, merged)  # a plain state dict: strict load into a plain SAM
    unmerged = load_sam(base_ckpt)
    load_adapter(unmerged, adapter)
    for a, b in zip(outputs(plain), outputs(unmerged)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the trained model in the run folder is the same as base + adapter
    trained = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    lora_keys = {k for k in trained if "lora_" in k}
    assert lora_keys == set(lora_state_dict(unmerged))

    # evaluate shows the base and the fine-tuned model side by side
    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(base_ckpt), "--adapter", str(adapter), "--data", "synthetic:3:64:50",
                 "--max-images", "2", "--out", str(ev)]) == 0
    comparison = json.loads((ev / "comparison.json").read_text())
    model_metrics = json.loads((ev / "metrics.json").read_text())
    base_metrics = json.loads((ev / "baseline" / "metrics.json").read_text())
    for protocol in ("box", "center_point", "random_point", "points_3"):
        row = comparison[protocol]["dice"]
        assert row["model"] == model_metrics[protocol]["dice"] and row["baseline"] == base_metrics[protocol]["dice"]
        assert row["delta"] == pytest.approx(row["model"] - row["baseline"])
    assert (ev / "before_after.png").stat().st_size > 1000 and (ev / "baseline" / "best_worst.png").is_file()

    capsys.readouterr()
    other_base = tmp_path / "other"
    train(load_config(None, [*TINY, f"out={other_base}", "steps=2", "eval_at_end=false", "val_every=2", "seed=7"]))
    rc = main(["lora", "merge", "--base", str(other_base / "checkpoints" / "last.pt"), "--adapter", str(adapter),
               "--out", str(tmp_path / "bad.pth")])
    assert rc == 2 and "another base model" in capsys.readouterr().err
    assert not (tmp_path / "bad.pth").exists()


def test_registry_loads_a_merged_vit_small(tmp_path):
    torch.manual_seed(0)
    model = build_sam("vit_small")
    base_file = tmp_path / "base.pth"
    torch.save(model.state_dict(), base_file)
    fingerprint = weights_fingerprint(model)
    add_lora(model, LoraConfig(rank=2, alpha=2))
    randomize_lora(model)
    adapter = save_adapter(tmp_path / "a.safetensors", model, LoraConfig(rank=2, alpha=2), fingerprint, "vit_small")
    out = tmp_path / "merged.pth"
    assert main(["lora", "merge", "--base", f"vit_small:{base_file}", "--adapter", str(adapter), "--out", str(out)]) == 0
    merged = sam_model_registry["vit_small"](checkpoint=str(out))
    expected = merge_lora(model).state_dict()
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(v, expected[k])


@pytest.mark.parametrize("flags, message", [
    (["--rank", "0"], "--rank"),
    (["--alpha", "-1"], "--alpha"),
])
def test_finetune_cli_bad_values(tmp_path, capsys, flags, message):
    rc = main(["finetune", "--base", "vit_small:nothing.pth", "--data", "synthetic:2:64", "--mode", "lora",
               "--out", str(tmp_path / "x"), *flags])
    assert rc == 2 and message in capsys.readouterr().err


def test_finetune_base_of_another_model_type_is_a_clear_error(tmp_path, capsys):
    torch.manual_seed(0)
    small = tmp_path / "small.pth"
    torch.save(build_sam("vit_small").state_dict(), small)
    rc = main(["finetune", "--base", f"vit_b:{small}", "--data", "synthetic:2:64", "--mode", "lora",
               "--out", str(tmp_path / "x"), "steps=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "vit_small" in err and str(small) in err


def test_finetune_without_usable_data_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "data"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    rc = main(["finetune", "--base", "vit_small:x.pth", "--data", str(empty), "--mode", "decoder",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and str(empty) in capsys.readouterr().err


def test_image_key_sees_one_pixel():
    from samforge.train.embedding_cache import image_key

    a = torch.zeros(3, 8, 8)
    b = a.clone()
    b[2, 7, 7] = 1e-3
    assert image_key(a) != image_key(b) and image_key(a) == image_key(a.clone())


def test_finetune_on_a_nifti_folder(tmp_path, capsys):
    import nibabel as nib

    data = tmp_path / "ct"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        image = rng.normal(40, 30, (64, 64, 5)).astype(np.float32)
        label = np.zeros((64, 64, 5), np.uint8)
        label[10:30, 12:40, 1:4] = 1
        label[35:55, 20:50, 2:5] = 2
        image[label == 1] += 200
        image[label == 2] -= 100
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(data / "images" / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(data / "labels" / f"{case}.nii.gz"))
    # a pair whose shapes differ is reported, not used
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 3), np.float32), np.eye(4)), str(data / "images" / "c.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((64, 60, 3), np.uint8), np.eye(4)), str(data / "labels" / "c.nii.gz"))
    base_run = tmp_path / "base"
    train(load_config(None, [*TINY, f"out={base_run}", "steps=1", "eval_at_end=false", "val_every=1"]))
    capsys.readouterr()
    tiny_overrides = [o for o in TINY if not o.startswith(("model.", "data.train", "data.val"))]
    rc = main(["finetune", "--base", str(base_run / "checkpoints" / "last.pt"), "--data", str(data),
               "--val", str(data), "--mode", "decoder", "--out", str(tmp_path / "ft"), *tiny_overrides,
               "steps=2", "val_every=2", "eval_at_end=false"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "c.nii.gz" in printed and "1 bad sample" in printed  # the mismatched pair, named
    assert "slices without objects skipped" in printed  # slices 0 of a and b have no label
    assert (tmp_path / "ft" / "checkpoints" / "last.pt").is_file()

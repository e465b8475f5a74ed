"""Fast inference paths (issue #10): fused rel-pos attention ("folded", "sdpa_bias"), the predictors'
``precision="fp32-fast"`` / ``"bf16"``, checked for agreement with the exact fp32 path (which the parity tests
hold bit-for-bit to the official code). Small configurations for the logic, real vit_b block shapes for the
attention itself. No timings here: speed lives in benchmarks/."""

from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity import prompt_cases, scale_mask_input
from sam2_oracle import SMALL_OVERRIDES, make_sam2_pair
from sam2_oracle import prompt_cases as sam2_prompt_cases

from samforge import SAM2ImagePredictor, SamPredictor
from samforge.models.build import build_sam
from samforge.models.configs import SAM_CONFIGS
from samforge.models.image_encoder import (
    Block,
    RelPosAttention,
    attention_mode,
    biased_sdpa_attention,
    chunked_rel_pos_attention,
    folded_rel_pos_attention,
    set_attention_mode,
)
from samforge.models.sam2.hiera import MultiScaleAttention

pytestmark = pytest.mark.usefixtures("one_thread")
FAST_MODES = ("folded", "sdpa_bias", "chunked")
MIN_IOU = 0.98


def perturbed_sam(config, seed: int):
    """A small SAM whose weights are moved well off their initial values, so masks are non-trivial."""
    torch.manual_seed(seed)
    model = build_sam(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_masks_agree(fast, exact, name: str) -> None:
    """Same shapes and dtypes, float32 scores/logits, every mask IoU >= MIN_IOU."""
    for a, b in zip(fast, exact):
        assert a.shape == b.shape and a.dtype == b.dtype, name
    masks_fast, masks_exact = fast[0], exact[0]
    if masks_exact.dtype != bool and masks_exact.dtype != np.float32:
        raise AssertionError(f"{name}: unexpected mask dtype {masks_exact.dtype}")
    if masks_exact.dtype == np.float32 and not set(np.unique(masks_exact)) <= {0.0, 1.0}:
        return  # logits: compared by the caller
    masks_fast = masks_fast.reshape(-1, *masks_fast.shape[-2:])
    masks_exact = masks_exact.reshape(-1, *masks_exact.shape[-2:])
    for i, (a, b) in enumerate(zip(masks_fast > 0, masks_exact > 0)):
        assert mask_iou(a, b) >= MIN_IOU, f"{name} mask {i}: IoU {mask_iou(a, b):.4f} < {MIN_IOU}"


# --- attention --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("hw", [(6, 6), (5, 7)])
def test_fast_attention_equals_reference(mode, hw):
    torch.manual_seed(0)
    attn = RelPosAttention(dim=32, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=hw)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(3, *hw, 32)
    with torch.no_grad():
        exact = attn(x)
        set_attention_mode(attn, mode)
        fast = attn(x)
    assert (fast - exact).abs().max().item() <= 1e-5 * exact.abs().max().item()


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 4 * 2 * 30 * 4, 2**30], ids=["one_query", "some_queries", "all"])
def test_biased_sdpa_chunks_agree(chunk_bytes):
    """"sdpa_bias" holds at most ``chunk_bytes`` of bias: one query, a few, or all at a time give the same result
    as the official order (within float rounding), laid out so that merging the heads is a view."""
    torch.manual_seed(3)
    b, heads, hw, c = 3, 4, (5, 6), 8
    q, k, v = (torch.randn(b, heads, hw[0] * hw[1], c) for _ in range(3))
    rel_h, rel_w = torch.randn(2 * hw[0] - 1, c), torch.randn(2 * hw[1] - 1, c)
    exact = chunked_rel_pos_attention(q, k, v, rel_h, rel_w, hw, 0.3, chunk=hw[0] * hw[1])
    out = biased_sdpa_attention(q, k, v, rel_h, rel_w, hw, 0.3, chunk_bytes=chunk_bytes)
    assert out.shape == exact.shape and (out - exact).abs().max().item() <= 1e-5
    if chunk_bytes < 2**30:  # chunked: written straight into a B x N x heads x C buffer
        assert out.transpose(1, 2).is_contiguous()
    grads = []
    for attend in (lambda *a: chunked_rel_pos_attention(*a, chunk=hw[0] * hw[1]),
                   lambda *a: biased_sdpa_attention(*a, chunk_bytes=chunk_bytes)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, rel_h, rel_w)]
        attend(*leaves, hw, 0.3).square().sum().backward()  # training through the chunks: the same gradients
        grads.append([t.grad for t in leaves])
    assert all((a - b).abs().max().item() <= 1e-4 for a, b in zip(*grads))
    with pytest.raises(ValueError, match="chunk_bytes"):
        biased_sdpa_attention(q, k, v, rel_h, rel_w, hw, 0.3, chunk_bytes=0)


def test_folded_checks_inputs():
    q = torch.randn(1, 2, 12, 8)
    table = torch.randn(7, 8)
    with pytest.raises(ValueError, match="grid"):
        folded_rel_pos_attention(q, q, q, table, table, (4, 4), 1.0)
    with pytest.raises(ValueError, match="one shape"):
        folded_rel_pos_attention(q, q[:, :1], q, table, table, (3, 4), 1.0)


def test_attention_mode_context_restores_and_checks():
    model = perturbed_sam("vit_small", seed=0)
    modes = lambda: {m.mode for m in model.modules() if isinstance(m, RelPosAttention)}  # noqa: E731
    assert modes() == {"exact"}
    with attention_mode(model, "folded"):
        assert modes() == {"folded"}
        with attention_mode(model.image_encoder.blocks[0], "sdpa_bias"):  # nested: the inner block wins
            assert model.image_encoder.blocks[0].attn.mode == "sdpa_bias" and modes() == {"folded", "sdpa_bias"}
        assert modes() == {"folded"}
    assert modes() == {"exact"}
    with pytest.raises(ValueError, match="attention mode must be one of"):
        with attention_mode(model, "flash"):
            pass
    with pytest.raises(ValueError, match="attention mode must be one of"):
        set_attention_mode(model, "flash")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        set_attention_mode("model", "folded")
    assert modes() == {"exact"}


def test_attention_mode_holds_for_its_own_thread_only():
    """Two threads run the same encoder at once, one inside ``attention_mode(..., "folded")``: each sees its own
    mode while the other is inside its forward (a server's prefetch beside a request of another precision)."""
    import threading

    model = perturbed_sam("vit_small", seed=0)
    attn = model.image_encoder.blocks[0].attn
    inside, release, seen = threading.Event(), threading.Event(), {}

    def fast_thread():
        with attention_mode(model, "folded"):
            seen["fast"] = attn.mode
            inside.set()
            release.wait(10)
            seen["fast_after"] = attn.mode

    t = threading.Thread(target=fast_thread)
    t.start()
    assert inside.wait(10)
    seen["main"] = attn.mode  # while the other thread is inside its block
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a = model.image_encoder(x)
    release.set()
    t.join(10)
    with torch.no_grad():
        b = model.image_encoder(x)
    assert seen == {"fast": "folded", "main": "exact", "fast_after": "folded"}
    assert torch.equal(a, b)  # the main thread ran the exact path while the other held "folded"


@pytest.mark.parametrize("window_size,grid", [(14, 64), (0, 32)], ids=["window14_grid64", "global_grid32"])
def test_vit_b_block_fast_paths(window_size, grid):
    """A vit_b block (width 768, 12 heads): window 14 on the real 64x64 grid (padded to 70) and a global one."""
    torch.manual_seed(1)
    block = Block(768, 12, 4.0, True, True, window_size, (grid, grid)).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    x = torch.randn(1, grid, grid, 768)
    with torch.no_grad():
        exact = block(x)
        for mode in FAST_MODES:
            with attention_mode(block, mode):
                fast = block(x)
            scale = exact.abs().max().item()
            assert (fast - exact).abs().max().item() <= 1e-4 * scale, mode


@pytest.mark.parametrize("window_size", [8, 6], ids=["no_padding", "padding"])
def test_encoder_fast_paths_agree(window_size):
    cfg = dataclasses.replace(SAM_CONFIGS["vit_small"], window_size=window_size)
    model = perturbed_sam(cfg, seed=2)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        exact = model.image_encoder(x)
        for mode in FAST_MODES:
            with attention_mode(model, mode):
                fast = model.image_encoder(x)
            assert (fast - exact).abs().max().item() <= 1e-4 * exact.abs().max().item(), mode


def test_hiera_attention_is_sdpa():
    attn = MultiScaleAttention(16, 32, num_heads=2, q_pool=torch.nn.MaxPool2d(2, 2))
    sdpa = F.scaled_dot_product_attention
    with mock.patch("samforge.models.sam2.hiera.F.scaled_dot_product_attention", wraps=sdpa) as spy:
        out = attn(torch.randn(1, 8, 8, 16))
    assert spy.call_count == 1 and out.shape == (1, 4, 4, 32)


# --- SamPredictor -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_and_image():
    model = perturbed_sam("vit_small", seed=3)
    image = np.random.default_rng(3).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    exact = SamPredictor(model)
    exact.set_image(image)
    return model, image, exact


@pytest.mark.parametrize("precision", ["fp32-fast", "bf16"])
def test_sam_predictor_precision_agrees(sam_and_image, precision):
    model, image, exact = sam_and_image
    fast = SamPredictor(model, precision=precision)
    fast.set_image(image)
    emb, emb_exact = fast.get_image_embedding(), exact.get_image_embedding()
    assert emb.dtype == torch.float32
    tol = 1e-4 if precision == "fp32-fast" else 0.05
    assert (emb - emb_exact).abs().max().item() <= tol * emb_exact.abs().max().item()
    assert {m.attention_mode for m in model.modules() if isinstance(m, RelPosAttention)} == {"exact"}
    rng = np.random.default_rng(4)
    nontrivial = 0
    for name, kwargs in prompt_cases(*image.shape[:2], rng).items():
        kwargs = scale_mask_input(kwargs, model.prompt_encoder.mask_input_size[0])
        out_fast, out_exact = fast.predict(**kwargs), exact.predict(**kwargs)
        assert out_fast[1].dtype == np.float32 and out_fast[2].dtype == np.float32, name
        assert_masks_agree(out_fast, out_exact, name)
        if out_exact[0].dtype == bool:
            frac = out_exact[0].mean(axis=(-2, -1))
            nontrivial += int(((frac > 0.02) & (frac < 0.98)).sum())
        logit_tol = 1e-3 if precision == "fp32-fast" else 0.1
        diff = np.abs(out_fast[2] - out_exact[2]).max()
        assert diff <= logit_tol * max(1.0, np.abs(out_exact[2]).max()), f"{name}: low-res logits differ by {diff}"
    assert nontrivial >= 5, "masks are (almost) all empty or full: the agreement check would prove nothing"


def test_sam_predictor_predict_torch_bf16(sam_and_image):
    model, image, exact = sam_and_image
    fast = SamPredictor(model, precision="bf16")
    fast.set_image(image)
    boxes = torch.tensor([[10.0, 10.0, 150.0, 120.0], [40.0, 30.0, 200.0, 170.0]])
    out_fast = fast.predict_torch(None, None, boxes=boxes)
    out_exact = exact.predict_torch(None, None, boxes=boxes)
    assert [t.dtype for t in out_fast] == [torch.bool, torch.float32, torch.float32]
    for a, b in zip(out_fast[0].flatten(0, 1), out_exact[0].flatten(0, 1)):
        assert mask_iou(a.numpy(), b.numpy()) >= MIN_IOU


def test_sam_predictor_default_is_exact(small_pair):
    """The default and an explicit "fp32" run the official operations: bit-identical embeddings."""
    from segment_anything import SamPredictor as OfficialPredictor

    official, ours = small_pair
    image = np.random.default_rng(5).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    p_official = OfficialPredictor(official)
    p_official.set_image(image)
    for predictor in (SamPredictor(ours), SamPredictor(ours, precision="fp32")):
        assert predictor.precision == "fp32"
        predictor.set_image(image)
        assert torch.equal(predictor.features, p_official.features)


@pytest.mark.parametrize("bad", ["fp16", "BF16", None, 16])
def test_bad_precision_refused(small_pair, bad):
    _, ours = small_pair
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'bf16', 'fp32', 'fp32-fast', 'int8'\]"):
        SamPredictor(ours, precision=bad)


def test_precision_is_keyword_only(small_pair):
    _, ours = small_pair
    with pytest.raises(TypeError):
        SamPredictor(ours, "bf16")  # type: ignore[misc]


# --- SAM2ImagePredictor -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam2_small():
    _, ours = make_sam2_pair("sam2.1_hiera_t", seed=11, overrides=SMALL_OVERRIDES)
    image = np.random.default_rng(6).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    exact = SAM2ImagePredictor(ours)
    exact.set_image(image)
    return ours, image, exact


def test_sam2_fp32_fast_is_fp32(sam2_small):
    """On a CPU fp32-fast runs the encoder's chunked copy (samforge.predict.sam2_cpu_encoder): the same float32
    arithmetic in another order, so every output agrees to float32 rounding and the masks are the exact path's."""
    model, image, exact = sam2_small
    fast = SAM2ImagePredictor(model, precision="fp32-fast")
    fast.set_image(image)
    emb, emb_exact = fast.get_image_embedding(), exact.get_image_embedding()
    assert (emb - emb_exact).abs().max().item() <= 1e-5 * emb_exact.abs().max().item()
    for level, level_exact in zip(fast._features["high_res_feats"], exact._features["high_res_feats"]):
        assert (level - level_exact).abs().max().item() <= 1e-5 * level_exact.abs().max().item()
    for name, kwargs in sam2_prompt_cases(*image.shape[:2], np.random.default_rng(8), low_res=64).items():
        out_fast, out_exact = fast.predict(**kwargs), exact.predict(**kwargs)
        if out_exact[0].dtype == bool:  # a pixel may flip only where the exact logit is at the threshold
            assert (out_fast[0] != out_exact[0]).mean() <= 1e-3, name
        np.testing.assert_allclose(out_fast[1], out_exact[1], atol=1e-4, err_msg=name)


def test_sam2_bf16_agrees(sam2_small):
    model, image, exact = sam2_small
    fast = SAM2ImagePredictor(model, precision="bf16")
    fast.set_image(image)
    emb, emb_exact = fast.get_image_embedding(), exact.get_image_embedding()
    assert emb.dtype == torch.float32
    assert (emb - emb_exact).abs().max().item() <= 0.05 * emb_exact.abs().max().item()
    rng = np.random.default_rng(7)
    nontrivial = 0
    for name, kwargs in sam2_prompt_cases(*image.shape[:2], rng, low_res=64).items():
        out_fast, out_exact = fast.predict(**kwargs), exact.predict(**kwargs)
        assert all(o.dtype == np.float32 for o in out_fast), name
        assert_masks_agree(out_fast, out_exact, name)
        if not kwargs.get("return_logits"):
            frac = out_exact[0].reshape(-1, *image.shape[:2]).mean(axis=(-2, -1))
            nontrivial += int(((frac > 0.02) & (frac < 0.98)).sum())
    assert nontrivial >= 5, "masks are (almost) all empty or full: the agreement check would prove nothing"


def test_sam2_bad_precision_refused(sam2_small):
    model, _, _ = sam2_small
    with pytest.raises(ValueError, match="precision must be one of"):
        SAM2ImagePredictor(model, precision="float16")
    with pytest.raises(TypeError):
        SAM2ImagePredictor(model, 0.0, 0.0, 0.0, "bf16")  # type: ignore[misc]


def test_automatic_mask_generator_precision(sam_and_image):
    """The generator's encoder path follows ``precision``; the masks of fp32-fast and bf16 agree with fp32."""
    from samforge import SamAutomaticMaskGenerator

    sam, image, _ = sam_and_image
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    exact = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    assert len(exact) > 0
    for precision, floor in (("fp32-fast", 0.99), ("bf16", 0.95)):
        records = SamAutomaticMaskGenerator(sam, **settings, precision=precision).generate(image)
        assert len(records) == len(exact)
        for rec in records:
            best = max(mask_iou(rec["segmentation"], e["segmentation"]) for e in exact)
            assert best >= floor, f"{precision}: a mask matches fp32 with IoU {best}"
    with pytest.raises(ValueError, match="precision"):
        SamAutomaticMaskGenerator(sam, precision="fp16")

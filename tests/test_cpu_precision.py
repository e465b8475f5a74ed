"""CPU precisions (issue #25): ``precision="int8"`` (the image encoder's linear layers dynamically quantised, on a
copy), ``precision="auto"`` (picked from the CPU's capabilities) and the bf16 fallback on CPUs without native bf16.

Agreement is with our exact fp32 path on perturbed weights whose masks are not trivial. Stated tolerances for int8
(per-tensor activations on random weights, the hardest case for it): the embedding within 8% of its largest value
(max abs) and 6% in norm; masks: mean IoU >= 0.97 over the prompts, none below 0.9. No timings here
(benchmarks/cpu_speed.py)."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest
import torch
from parity import prompt_cases, scale_mask_input
from sam2_oracle import prompt_cases as sam2_prompt_cases
from test_fast_paths import mask_iou, perturbed_sam, sam2_small, sam_and_image  # noqa: F401 (fixtures)
from torch import nn

from samforge import SAM2ImagePredictor, SamAutomaticMaskGenerator, SamPredictor
from samforge.cli.main import build_parser, main
from samforge.data import make_scene
from samforge.models.image_encoder import RelPosAttention, chunked_rel_pos_attention
from samforge.predict import precision as precision_module
from samforge.predict.quantize import Int8Linear, float_linears, int8_encoder, quantize_linears
from samforge.predict.sam2_automatic_mask_generator import SAM2AutomaticMaskGenerator
from samforge.predict.sam2_predictor import forward_image_in
from samforge.predict.sam2_video_predictor import video_predictor_for
from samforge.utils import save_png

pytestmark = pytest.mark.usefixtures("one_thread")
REAL_NATIVE_CPU_BF16 = precision_module.native_cpu_bf16  # conftest makes it say True for the bf16 tests
EMB_MAX_REL, EMB_NORM_REL, MEAN_IOU, MIN_IOU = 0.08, 0.06, 0.97, 0.9


def assert_embedding_close(emb: torch.Tensor, exact: torch.Tensor) -> None:
    assert emb.dtype == torch.float32 and emb.shape == exact.shape
    assert (emb - exact).abs().max().item() <= EMB_MAX_REL * exact.abs().max().item()
    assert ((emb - exact).norm() / exact.norm()).item() <= EMB_NORM_REL


def assert_masks_agree(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """``(fast, exact)`` C x H x W boolean mask stacks: IoU mean and min over all masks, on enough non-trivial ones."""
    ious = [mask_iou(a, b) for fast, exact in pairs for a, b in zip(fast, exact)]
    fractions = np.concatenate([exact.mean(axis=(-2, -1)) for _, exact in pairs])
    assert ((fractions > 0.02) & (fractions < 0.98)).sum() >= 5, "masks are (almost) all empty or full"
    assert np.mean(ious) >= MEAN_IOU and min(ious) >= MIN_IOU, f"mask IoU mean {np.mean(ious)}, min {min(ious)}"


def test_int8_sam_predictor_agrees_with_fp32(sam_and_image):
    model, image, exact = sam_and_image
    fast = SamPredictor(model, precision="int8")
    assert fast.precision == "int8" and fast.decoder_mode == "folded"
    fast.set_image(image)
    assert_embedding_close(fast.get_image_embedding(), exact.get_image_embedding())
    pairs = []
    for name, kwargs in prompt_cases(*image.shape[:2], np.random.default_rng(4)).items():
        kwargs = scale_mask_input(kwargs, model.prompt_encoder.mask_input_size[0])
        out_fast, out_exact = fast.predict(**kwargs), exact.predict(**kwargs)
        assert [o.dtype for o in out_fast] == [o.dtype for o in out_exact], name
        if out_exact[0].dtype == bool:
            pairs.append((out_fast[0], out_exact[0]))
    assert_masks_agree(pairs)


def test_int8_leaves_the_model_and_the_exact_path_alone(sam_and_image):
    """The quantised copy is the predictor's: the model keeps its float layers and weights, a fp32 predictor on the
    same model still gives the embedding it gave before (bit for bit), and the copy shares the float tensors."""
    model, image, exact = sam_and_image
    before = {k: v.clone() for k, v in model.state_dict().items()}
    SamPredictor(model, precision="int8").set_image(image)
    assert all(type(m) is nn.Linear for m in model.image_encoder.modules() if isinstance(m, nn.Linear))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = SamPredictor(model)
    again.set_image(image)
    assert torch.equal(again.features, exact.features)
    quantized = int8_encoder(model.image_encoder)
    assert quantized is int8_encoder(model.image_encoder)  # one copy per model, shared by predictors
    assert quantized.pos_embed is model.image_encoder.pos_embed
    still_float = {name for name, m in quantized.named_modules() if type(m) is nn.Linear}
    assert still_float == set(float_linears(model.image_encoder))  # the first blocks', see quantize.py
    assert still_float and all(name.startswith(("blocks.0.", "blocks.1.")) for name in still_float)
    assert sum(isinstance(m, Int8Linear) for m in quantized.modules()) == 4 * (len(quantized.blocks) - 2)


def test_int8_copy_follows_weight_changes():
    model = perturbed_sam("vit_small", seed=5)
    first = int8_encoder(model.image_encoder)
    with torch.no_grad():
        model.image_encoder.blocks[0].mlp.lin1.weight.mul_(0.5)  # fine-tuning, loading, ...
    assert int8_encoder(model.image_encoder) is not first


def test_quantize_checks_its_input():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantize_linears("encoder")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_linears(nn.Conv2d(3, 3, 1))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_int8_linear_is_finer_than_torch_ao_dynamic_linear():
    """7-bit weights x 8-bit activations against torch.ao's 8-bit weights x 7-bit activations: smaller output error on
    Gaussian inputs and with an outlier token (which sets the per-tensor activation scale)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.manual_seed(0)
    lin = nn.Linear(256, 512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    ours = Int8Linear(lin)
    gaussian = torch.randn(300, 256)
    outlier = gaussian.clone()
    outlier[7] = 40.0
    with torch.no_grad():
        for x in (gaussian, outlier):
            ref = lin(x)
            err, err_ao = relative_error(ours(x), ref), relative_error(ao(x), ref)
            assert err < 0.8 * err_ao and err < 0.05, (err, err_ao)
        assert ours(gaussian.reshape(3, 100, 256)).shape == (3, 100, 512)  # any leading dims, as nn.Linear


@pytest.mark.parametrize("weight_bits", [7, 8])
def test_int8_linear_mean_correction_removes_the_shared_shift(weight_bits):
    """Tokens that share a large mean (as attention outputs and GELU outputs do): the weights' rounding error times
    that mean is one shift of every output, which the correction adds back; per-token variation is left alone."""
    torch.manual_seed(1)
    lin = nn.Linear(384, 256)
    shared = 3.0 * torch.randn(384)
    x = shared + 0.1 * torch.randn(500, 384)
    plain = Int8Linear(lin, weight_bits=weight_bits)
    corrected = Int8Linear(lin, weight_bits=weight_bits, mean_correction=True)
    with torch.no_grad():
        ref, out_plain, out_corrected = lin(x), plain(x), corrected(x)
        # the shift every token shares (the outputs' mean over tokens): mostly gone; the whole error: not worse
        shift_plain = relative_error(out_plain.mean(0), ref.mean(0))
        shift_corrected = relative_error(out_corrected.mean(0), ref.mean(0))
        assert shift_corrected < 0.3 * shift_plain, (shift_corrected, shift_plain)
        assert relative_error(out_corrected, ref) <= relative_error(out_plain, ref)
        shift = (corrected(x) - plain(x)).std(dim=0).max().item()  # the same correction for every token
        assert shift < 1e-4 * ref.abs().max().item()
        assert corrected(x.reshape(5, 100, 384)).shape == (5, 100, 256)
    assert "mean_correction" not in repr(plain) and quantize_linears(nn.Sequential(lin)).get_submodule("0")._rounding \
        is not None  # quantize_linears corrects by default
    with pytest.raises(TypeError, match="mean_correction must be a bool, got 1"):
        Int8Linear(lin, mean_correction=1)


def test_int8_linear_does_not_saturate():
    """The worst case for AVX2's int16 pair sums: every activation at the top of the uint8 range times every weight at
    the top of its range. With 8-bit weights the sums would clip at 32767; with 7-bit ones the output is right."""
    lin = nn.Linear(64, 4, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    x = torch.ones(2, 64)
    x[:, 0] = -1.0  # the range [-1, 1]: all other activations quantise to 255
    with torch.no_grad():
        assert relative_error(Int8Linear(lin)(x), lin(x)) < 0.01


def test_quantize_keeps_the_named_linears_float():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    quantized = quantize_linears(model, keep_float=("0",))
    assert type(quantized[0]) is nn.Linear and quantized[0].weight is model[0].weight
    assert isinstance(quantized[2], Int8Linear)
    with pytest.raises(ValueError, match="not: \\['1'\\]"):
        quantize_linears(model, keep_float=("1",))
    with pytest.raises(TypeError, match="nn.Linear"):
        Int8Linear(nn.Conv2d(3, 3, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last size 8"):
        quantized[2](torch.ones(2, 5))


def test_float_linears_are_the_first_blocks(sam2_small):
    model = sam2_small[0]
    names = float_linears(model.image_encoder, blocks=2)
    assert names and {n.split(".")[2] for n in names} == {"0", "1"} and all(n.startswith("trunk.blocks.") for n in names)
    assert float_linears(model.image_encoder, blocks=0) == () and float_linears(nn.Linear(2, 2)) == ()
    with pytest.raises(ValueError, match="blocks must be an int >= 0"):
        float_linears(model.image_encoder, blocks=-1)


def test_int8_sam2_predictor_agrees_with_fp32(sam2_small):
    model, image, exact = sam2_small
    fast = SAM2ImagePredictor(model, precision="int8")
    fast.set_image(image)
    assert_embedding_close(fast.get_image_embedding(), exact.get_image_embedding())
    for a, b in zip(fast._features["high_res_feats"], exact._features["high_res_feats"]):
        assert ((a - b).norm() / b.norm()).item() <= EMB_NORM_REL
    pairs = []
    for kwargs in sam2_prompt_cases(*image.shape[:2], np.random.default_rng(7), low_res=64).values():
        if not kwargs.get("return_logits"):
            out_fast, out_exact = fast.predict(**kwargs), exact.predict(**kwargs)
            pairs.append(tuple(o[0].reshape(-1, *image.shape[:2]) > 0 for o in (out_fast, out_exact)))
    assert_masks_agree(pairs)


def test_int8_video_frames_use_the_quantised_encoder(sam2_small):
    """``track --precision int8``: the video predictor embeds frames with the same int8 path as the image one."""
    model, image, exact = sam2_small
    video = video_predictor_for(model, video_postprocessing=False, precision="int8")
    assert video.precision == "int8" and model.__dict__.get("precision") is None  # the predictor's, not the model's
    batch = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32, int8 = model.forward_image(batch), forward_image_in(model, batch, "int8")
    for a, b in zip(int8["backbone_fpn"], fp32["backbone_fpn"]):
        assert ((a - b).norm() / b.norm()).item() <= EMB_NORM_REL
    # the first blocks keep float linears (samforge.predict.quantize.FLOAT_BLOCKS); the later levels are int8
    assert not torch.equal(int8["vision_features"], fp32["vision_features"])
    with pytest.raises(ValueError, match="precision must be one of"):
        video_predictor_for(model, precision="int4")


def best_match_ious(records: list[dict], exact: list[dict]) -> list[float]:
    return [max(mask_iou(r["segmentation"], e["segmentation"]) for e in exact) for r in records]


@pytest.mark.parametrize("which", ["sam", "sam2"])
def test_int8_automatic_mask_generators(request, which):
    """Both generators take precision="int8"; their masks match fp32's (best-match IoU; with random weights a few
    SAM 2 masks sit at the thresholds, so its count may differ by a few and the median is compared)."""
    model, image, _ = request.getfixturevalue("sam_and_image" if which == "sam" else "sam2_small")
    make = SamAutomaticMaskGenerator if which == "sam" else SAM2AutomaticMaskGenerator
    settings = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    exact = make(model, **settings).generate(image)
    generator = make(model, **settings, precision="int8")
    assert generator.predictor.precision == "int8"
    records = generator.generate(image)
    assert len(exact) > 0 and abs(len(records) - len(exact)) <= (0 if which == "sam" else max(2, len(exact) // 10))
    ious = best_match_ious(records, exact)
    assert np.median(ious) >= MEAN_IOU
    if which == "sam":
        assert np.mean(ious) >= MEAN_IOU and min(ious) >= MIN_IOU, ious


# --- auto and the bf16 fallback ----------------------------------------------------------------------------------


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU the capability queries describe: ``cpu(machine, capability, avx512_bf16, amx)``."""
    monkeypatch.setattr(precision_module, "native_cpu_bf16", REAL_NATIVE_CPU_BF16)
    monkeypatch.setattr(precision_module, "_WARNED", set())

    def set_cpu(machine: str, capability: str, avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(precision_module.platform, "machine", lambda: machine)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return set_cpu


@pytest.mark.parametrize(
    "machine, capability, avx512_bf16, amx, expected",
    [
        ("x86_64", "AVX512", True, True, "bf16"),  # AMX
        ("x86_64", "AVX512", True, False, "bf16"),  # AVX512-BF16
        ("x86_64", "AVX512", False, False, "int8"),  # AVX-512 without BF16
        ("x86_64", "AVX2", False, False, "int8"),  # the development machine: int8 fastest for SAM, see precision.py
        ("x86_64", "DEFAULT", False, False, "fp32"),  # no AVX2: no fast int8 kernels
        ("aarch64", "DEFAULT", False, False, "fp32"),
    ],
)
def test_auto_picks_by_capability(cpu, sam_and_image, sam2_small, machine, capability, avx512_bf16, amx, expected):
    cpu(machine, capability, avx512_bf16, amx)
    model = sam_and_image[0]
    assert precision_module.auto_precision("cpu") == expected
    assert SamPredictor(model, precision="auto").precision == expected
    # Hiera: int8 not worth it (precision.py): fp32-fast where it runs, fp32 on AVX-512 CPUs
    sam2_expected = {"int8": "fp32-fast" if capability == "AVX2" else "fp32"}.get(expected, expected)
    assert SAM2ImagePredictor(sam2_small[0], precision="auto").precision == sam2_expected
    assert precision_module.auto_precision("cuda") == "bf16"  # a device string needs no GPU to be resolved


def test_bf16_without_native_bf16_warns_once_and_runs_fp32_fast(cpu, sam_and_image):
    cpu("x86_64", "AVX2", False, False)
    model = sam_and_image[0]
    with pytest.warns(RuntimeWarning, match="no native bf16.*running 'fp32-fast'"):
        predictor = SamPredictor(model, precision="bf16")
    assert predictor.precision == "fp32-fast"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SamPredictor(model, precision="bf16").precision == "fp32-fast"  # said once
    cpu("x86_64", "AVX512", True, False)
    assert SamPredictor(model, precision="bf16").precision == "bf16"


def test_int8_off_the_cpu_is_refused():
    with pytest.raises(ValueError, match="CPU only"):
        precision_module.resolve_precision("int8", "cuda")
    with pytest.raises(ValueError, match="torch device"):
        precision_module.auto_precision("not-a-device")


@pytest.mark.parametrize("bad", ["int4", "INT8", "float16", None])
def test_bad_precision_lists_the_known_ones(sam_and_image, sam2_small, bad):
    known = r"\['auto', 'bf16', 'fp32', 'fp32-fast', 'int8'\]"
    with pytest.raises(ValueError, match=f"precision must be one of {known}"):
        SamPredictor(sam_and_image[0], precision=bad)
    with pytest.raises(ValueError, match=f"precision must be one of {known}"):
        SAM2ImagePredictor(sam2_small[0], precision=bad)


# --- the command line ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--model", "vit_small", "--image", "x.png", "--point", "1,1", "--out", "o"],
        ["segment-everything", "imgs", "--model", "vit_small", "--out", "o"],
        ["annotate", "imgs", "--model", "vit_small", "--out", "o"],
        ["track", "--video", "v", "--point", "1,1", "--model", "sam2.1_hiera_t", "--out", "o"],
    ],
)
def test_precision_flag_on_each_subcommand(argv, capsys):
    parser = build_parser()
    for precision in ("int8", "auto", "fp32"):
        args = parser.parse_args([*argv, "--precision", precision])
        assert isinstance(args, argparse.Namespace) and args.precision == precision
    assert parser.parse_args(argv).precision == "fp32"  # the default stays exact
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--precision", "int4"])
    err = capsys.readouterr().err
    assert "'int4'" in err and "'int8'" in err and "'auto'" in err


def test_predict_cli_runs_int8(tmp_path, capsys):
    scene = make_scene(seed=3, image_size=(64, 80))
    png = tmp_path / "scene.png"
    save_png(scene.image, png)
    out = tmp_path / "out"
    code = main(["predict", "--model-type", "vit_small", "--image", str(png), "--box", "5,6,50,40",
                 "--precision", "int8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "scores.json").read_text())
    assert result["precision"] == "int8" and len(result["scores"]) >= 1


# --- query-chunked attention -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("hw", [(4, 4), (5, 3)])
def test_chunked_attention_matches_the_official_order(hw, chunk):
    """Any chunking gives the official unfused attention's values (float rounding at most)."""
    attn = RelPosAttention(32, 2, True, True, hw)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
        qkv = torch.randn(3, 2, 2, hw[0] * hw[1], 16)
        reference = attn._reference_attention(qkv, hw)
        out = chunked_rel_pos_attention(*qkv.unbind(0), attn.rel_pos_h, attn.rel_pos_w, hw, attn.scale, chunk)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_rel_pos_attention(*qkv.unbind(0), attn.rel_pos_h, attn.rel_pos_w, hw, attn.scale, 0)


def test_bf16_on_a_cpu_runs_chunked_attention(sam_and_image, monkeypatch):
    model, image, exact = sam_and_image
    seen = []
    real = chunked_rel_pos_attention

    def spy(*args, **kwargs):
        seen.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr("samforge.models.image_encoder.chunked_rel_pos_attention", spy)
    predictor = SamPredictor(model, precision="bf16")  # conftest: as on a CPU with native bf16
    predictor.set_image(image)
    assert seen and set(seen) == {torch.bfloat16}
    emb, emb_exact = predictor.get_image_embedding(), exact.get_image_embedding()
    assert (emb - emb_exact).abs().max().item() <= 0.05 * emb_exact.abs().max().item()


def test_chunked_attention_has_the_official_gradients():
    """The in-place bias adds keep autograd working (a "chunked" encoder may be trained)."""
    attn = RelPosAttention(32, 2, True, True, (4, 4))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
    qkv = torch.randn(3, 1, 2, 16, 16, requires_grad=True)
    grads = []
    for fn in (lambda t: attn._reference_attention(t, (4, 4)),
               lambda t: chunked_rel_pos_attention(*t.unbind(0), attn.rel_pos_h, attn.rel_pos_w, (4, 4), attn.scale,
                                                   5)):
        qkv.grad = None
        attn.rel_pos_h.grad = None
        fn(qkv).square().sum().backward()
        grads.append((qkv.grad.clone(), attn.rel_pos_h.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

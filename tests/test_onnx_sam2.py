"""ONNX export of SAM 2 image models: the exported files run by onnxruntime against our PyTorch
``SAM2ImagePredictor``, ``OnnxSAM2ImagePredictor`` (numpy + onnxruntime), SAM 2's single-mask rule, int8
quantization, the CLI, and failures that must leave no file behind.

Most tests use the shrunk SAM 2.1 tiny of ``sam2_oracle`` (256 input, narrow trunk; the prompt encoder and mask
decoder keep their real widths) with perturbed random weights; one test exports a real hiera_t (1024 input)
through the CLI.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import perturb_  # noqa: E402
from sam2_oracle import SMALL_OVERRIDES  # noqa: E402

from samforge import SAM2ImagePredictor, build_sam2  # noqa: E402
from samforge.cli.main import main  # noqa: E402
from samforge.data.synthetic import make_scene  # noqa: E402
from samforge.export import (  # noqa: E402
    DECODER_INPUTS,
    SAM2_DECODER_INPUTS,
    SAM2_DECODER_OUTPUTS,
    SAM2_ENCODER_OUTPUTS,
    OnnxSAM2ImagePredictor,
    OnnxSamPredictor,
    SAM2OnnxDecoder,
    export_sam2_onnx,
    export_sam_onnx,
)
from samforge.export import onnx_sam  # noqa: E402
from samforge.export.onnx_predictor import ImageNotSetError  # noqa: E402
from samforge.export.onnx_sam2_predictor import sam2_preprocess, stability_choice  # noqa: E402
from samforge.models.build import build_sam  # noqa: E402
from samforge.predict.sam2_transforms import SAM2Transforms  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # PyTorch and onnxruntime on one thread each
ATOL = 1e-3
H, W = 200, 300
EXPORT_DIR = Path(__file__).resolve().parents[1] / "samforge" / "export"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def assert_close(got, want, atol=ATOL):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.abs(g.astype(np.float64) - w).max() <= atol


def assert_same_masks(got: np.ndarray, want: np.ndarray, want_logits: np.ndarray) -> None:
    """Identical 0/1 masks, except where a logit is within float32 rounding of the threshold (the runtimes' logits
    differ by ~1e-5)."""
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    differ = got != want
    assert np.all(np.abs(want_logits[differ]) <= 1e-4), want_logits[differ]
    assert differ.mean() <= 1e-4


def decode(value: str):
    """A metadata value: JSON where it is JSON, else the string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def features_of(predictor: SAM2ImagePredictor) -> tuple:
    f = predictor._features
    return f["image_embed"].numpy(), [x.numpy() for x in f["high_res_feats"]], tuple(predictor._orig_hw[0])


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    """The shrunk SAM 2.1 tiny with every parameter perturbed."""
    torch.manual_seed(3)
    model = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    perturb_(model, 3)
    return model


@pytest.fixture(scope="module")
def sharp(small):
    """``small`` with the single-mask token's logits scaled up 30x, so that its mask is stable and SAM 2's rule
    keeps it (with ``small`` the rule falls back to the best multimask output)."""
    model = copy.deepcopy(small)
    last = model.sam_mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():
        last.weight.mul_(30.0)
        last.bias.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def exported(small, tmp_path_factory) -> dict[str, Path]:
    return export_sam2_onnx(small, tmp_path_factory.mktemp("onnx") / "small", quantize="int8")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=4, image_size=(H, W))


@pytest.fixture(scope="module")
def torch_predictor(small, scene) -> SAM2ImagePredictor:
    predictor = SAM2ImagePredictor(small)
    predictor.set_image(scene.image)
    return predictor


@pytest.fixture(scope="module")
def onnx_predictor(exported, torch_predictor) -> OnnxSAM2ImagePredictor:
    """The ONNX decoder on our PyTorch features: compares the decoders alone."""
    predictor = OnnxSAM2ImagePredictor(None, exported["decoder"], num_threads=1)
    predictor.set_image_embedding(*features_of(torch_predictor))
    return predictor


def object_prompts(scene, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A point inside object ``k`` and its bounding box, in original pixel coordinates."""
    ys, xs = np.nonzero(scene.masks[k])
    i = len(ys) // 2
    return np.array([[xs[i], ys[i]]], dtype=float), np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)


# -- the files ----------------------------------------------------------------------------------------------------


def test_files_interface_and_metadata(exported):
    assert set(exported) == {"encoder", "decoder", "decoder_int8"}
    assert leftovers(exported["encoder"].parent) == ["decoder.int8.onnx", "decoder.onnx", "encoder.onnx"]
    dec = session(exported["decoder"])
    assert [i.name for i in dec.get_inputs()] == list(SAM2_DECODER_INPUTS)
    assert [o.name for o in dec.get_outputs()] == list(SAM2_DECODER_OUTPUTS)
    assert all(i.type == "tensor(float)" for i in dec.get_inputs())
    shapes = {i.name: i.shape for i in dec.get_inputs()}
    assert shapes["image_embed"] == [1, 256, 16, 16]
    assert shapes["high_res_feats_0"] == [1, 32, 64, 64] and shapes["high_res_feats_1"] == [1, 64, 32, 32]
    coords = shapes["point_coords"]
    assert coords[0] == 1 and isinstance(coords[1], str) and coords[2] == 2  # N dynamic
    assert shapes["mask_input"] == [1, 1, 64, 64] and shapes["has_mask_input"] == [1] and shapes["orig_im_size"] == [2]
    outs = {o.name: o.shape for o in dec.get_outputs()}
    assert outs["masks"][:2] == [1, 4] and all(isinstance(d, str) for d in outs["masks"][2:])
    assert outs["iou_predictions"] == [1, 4] and outs["low_res_masks"] == [1, 4, 64, 64]
    enc = session(exported["encoder"])
    assert [(i.name, i.shape) for i in enc.get_inputs()] == [("image", [1, 3, 256, 256])]
    assert [o.name for o in enc.get_outputs()] == list(SAM2_ENCODER_OUTPUTS)
    meta = {k: decode(v) for k, v in dec.get_modelmeta().custom_metadata_map.items()}
    assert meta["samforge.family"] == "sam2" and meta["samforge.image_size"] == 256
    assert meta["samforge.dynamic_multimask_via_stability"] is True
    assert (meta["samforge.stability_delta"], meta["samforge.stability_thresh"]) == (0.05, 0.98)
    assert meta["samforge.num_mask_outputs"] == 4
    assert {o.domain: o.version for o in onnx.load(str(exported["decoder"])).opset_import}[""] == 17


def test_encoder_matches_pytorch(exported, scene, torch_predictor):
    """set_image end to end: numpy preprocessing + encoder.onnx against SAM2ImagePredictor's cached features."""
    predictor = OnnxSAM2ImagePredictor(exported["encoder"], exported["decoder"], num_threads=1)
    predictor.set_image(scene.image)
    want_embed, want_high, _ = features_of(torch_predictor)
    assert np.abs(predictor.get_image_embedding() - want_embed).max() <= ATOL
    for got, want in zip(predictor._features["high_res_feats"], want_high):
        assert got.shape == want.shape and np.abs(got - want).max() <= ATOL
    assert predictor._orig_hw == [(H, W)]


def test_numpy_preprocess_matches_sam2_transforms():
    transforms = SAM2Transforms(256, 0.0)
    rng = np.random.default_rng(0)
    for shape in [(200, 300), (90, 100), (513, 700)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        want = transforms(image).numpy()[None]
        got = sam2_preprocess(image, 256)
        assert got.shape == want.shape == (1, 3, 256, 256) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-5


# -- the decoder against SAM2ImagePredictor -----------------------------------------------------------------------

PROMPTS = ["points", "box", "points+box", "mask_input", "points+mask_input", "none", "boxes_batched", "normalized"]


def prompt_kwargs(kind: str, scene, torch_predictor) -> dict:
    point, box = object_prompts(scene, 0)
    far, other_box = object_prompts(scene, len(scene.masks) - 1)
    kw: dict = {}
    if "points" in kind:
        kw.update(point_coords=np.concatenate([point, far]), point_labels=np.array([1, 0]))
    if "box" in kind:
        kw["box"] = box
    if "mask_input" in kind:
        _, scores, low_res = torch_predictor.predict(point_coords=point, point_labels=np.array([1]))
        kw["mask_input"] = low_res[np.argmax(scores)][None]
    if kind == "boxes_batched":
        kw["box"] = np.stack([box, other_box])
    if kind == "normalized":
        kw.update(point_coords=point / [W, H], point_labels=np.array([1]), normalize_coords=False)
    return kw


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("kind", PROMPTS)
def test_decoder_matches_sam2_predictor(kind, multimask, scene, torch_predictor, onnx_predictor):
    kw = prompt_kwargs(kind, scene, torch_predictor)
    want = torch_predictor.predict(**kw, multimask_output=multimask, return_logits=True)
    got = onnx_predictor.predict(**kw, multimask_output=multimask, return_logits=True)
    c = 3 if multimask else 1
    assert want[0].shape == ((2, c, H, W) if kind == "boxes_batched" else (c, H, W))
    assert_close(got, want)
    masks_want, scores_want, _ = torch_predictor.predict(**kw, multimask_output=multimask)
    masks_got, scores_got, _ = onnx_predictor.predict(**kw, multimask_output=multimask)
    assert_same_masks(masks_got, masks_want, want[0])
    assert 0.01 < masks_want.mean() < 0.99  # not a trivial mask
    assert np.abs(scores_got - scores_want).max() <= ATOL


def test_single_mask_rule_both_branches(small, sharp, exported, scene, tmp_path):
    """multimask_output=False: SAM 2 keeps the single-mask output when it is stable (``sharp``) and falls back to
    the best multimask output when it is not (``small``). Both the predictor's numpy rule (on the 4 outputs) and
    the in-graph rule (``return_single_mask=True``) agree with PyTorch in both cases."""
    for model, name, expect_stable in [(small, "small", False), (sharp, "sharp", True)]:
        files = {"all": exported["decoder"]} if name == "small" else {}
        if name == "sharp":
            files["all"] = export_sam2_onnx(model, tmp_path / "all", parts="decoder")["decoder"]
        files["one"] = export_sam2_onnx(model, tmp_path / name, parts="decoder", return_single_mask=True)["decoder"]
        assert session(files["one"]).get_outputs()[0].shape == [1, 1, "height", "width"]
        torch_pred = SAM2ImagePredictor(model)
        torch_pred.set_image(scene.image)
        all_pred = OnnxSAM2ImagePredictor(None, files["all"], num_threads=1)
        one_pred = OnnxSAM2ImagePredictor(None, files["one"], num_threads=1)
        assert one_pred.num_mask_outputs == 1
        for p in (all_pred, one_pred):
            p.set_image_embedding(*features_of(torch_pred))
        choices = []
        for k in range(len(scene.masks)):
            point, box = object_prompts(scene, k)
            for kw in (dict(point_coords=point, point_labels=np.array([1])), dict(box=box)):
                want = torch_pred.predict(**kw, multimask_output=False, return_logits=True)
                for p in (all_pred, one_pred):
                    got = p.predict(**kw, multimask_output=False, return_logits=True)
                    assert_close(got, want)
                choices.append(_choice(all_pred, kw))
        assert (0 in choices) == expect_stable and all((c == 0) == expect_stable for c in choices), choices
        with pytest.raises(ValueError, match="return_single_mask=True"):
            one_pred.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)


def _choice(predictor: OnnxSAM2ImagePredictor, kw: dict) -> int:
    """Which of the four decoder outputs SAM 2's rule picks for these prompts."""
    coords, labels, mask = predictor._prompt_sets(kw.get("point_coords"), kw.get("point_labels"), kw.get("box"),
                                                  None, predictor._orig_hw[0], predictor._orig_hw[0], True)[0]
    feed = {
        "image_embed": predictor._features["image_embed"],
        "high_res_feats_0": predictor._features["high_res_feats"][0],
        "high_res_feats_1": predictor._features["high_res_feats"][1],
        "point_coords": coords[None],
        "point_labels": labels[None],
        "mask_input": np.zeros((1, 1, 64, 64), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array([H, W], dtype=np.float32),
    }
    _, iou, low_res = predictor.decoder.run(list(SAM2_DECODER_OUTPUTS), feed)
    return stability_choice(low_res[0], iou[0], predictor.stability_delta, predictor.stability_thresh)


def test_stability_choice_matches_the_decoder(small):
    """The numpy rule against SAM2MaskDecoder._dynamic_multimask_via_stability, including empty masks."""
    decoder = small.sam_mask_decoder
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.2, 5.0, 200.0):
        logits = torch.randn(1, 4, 32, 32, generator=g) * scale + torch.randn(1, 4, 1, 1, generator=g) * scale
        iou = torch.rand(1, 4, generator=g)
        want_masks, want_iou = decoder._dynamic_multimask_via_stability(logits, iou)
        k = stability_choice(logits[0].numpy(), iou[0].numpy(), 0.05, 0.98)
        assert torch.equal(logits[:, k : k + 1], want_masks) and torch.equal(iou[:, k : k + 1], want_iou)
    empty = -torch.ones(1, 4, 8, 8)
    assert stability_choice(empty[0].numpy(), np.array([0.1, 0.9, 0.2, 0.3]), 0.05, 0.98) == 0  # stable by definition


def test_dynamic_points_and_image_sizes(small, exported):
    """One decoder file: 1 to 6 points (with the padding point), and originals of any shape."""
    torch_pred = SAM2ImagePredictor(small)
    onnx_pred = OnnxSAM2ImagePredictor(None, exported["decoder"], num_threads=1)
    rng = np.random.default_rng(3)
    for size, n in [((120, 310), 1), ((410, 97), 5)]:
        torch_pred.set_image(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        onnx_pred.set_image_embedding(*features_of(torch_pred))
        coords = rng.uniform(0, 1, (n, 2)) * [size[1], size[0]]
        labels = rng.integers(0, 2, n)
        want = torch_pred.predict(coords, labels, return_logits=True)
        got = onnx_pred.predict(coords, labels, return_logits=True)
        assert got[0].shape == (3, *size)
        assert_close(got, want)


def test_raw_decoder_graph_matches_module(small, exported):
    """Raw inputs (every label -1..3, has_mask_input 0 and 1) against SAM2OnnxDecoder run in PyTorch."""
    module = SAM2OnnxDecoder(small)
    decoder = session(exported["decoder"])
    rng = np.random.default_rng(0)
    for n, size, has_mask in [(1, (200, 300), 0.0), (4, (300, 120), 1.0), (7, (1000, 37), 1.0)]:
        feed = {k: v.numpy() for k, v in zip(SAM2_DECODER_INPUTS, module.dummy_inputs(n))}
        feed["point_labels"] = rng.integers(-1, 4, (1, n)).astype(np.float32)
        feed["has_mask_input"] = np.array([has_mask], dtype=np.float32)
        feed["orig_im_size"] = np.array(size, dtype=np.float32)
        with torch.no_grad():
            want = [t.numpy() for t in module(*[torch.from_numpy(feed[k]) for k in SAM2_DECODER_INPUTS])]
        assert_close(decoder.run(list(SAM2_DECODER_OUTPUTS), feed), want)


# -- int8 ---------------------------------------------------------------------------------------------------------


def test_int8_decoder_close_to_fp32(exported, scene, torch_predictor):
    """Masks of the int8 decoder against the fp32 one, prompted with a point in and the box of each object, with
    all four outputs' choices (multimask and SAM 2's single mask). The fp32 masks are not trivial (they cover 5 to
    80% of the image). Random weights give no confident boundaries, so int8 flips more pixels than on a trained
    model: mean IoU >= 0.95 over all masks (0.97 here) and >= 0.85 for each."""
    fp32 = OnnxSAM2ImagePredictor(None, exported["decoder"], num_threads=1)
    int8 = OnnxSAM2ImagePredictor(None, exported["decoder_int8"], num_threads=1)
    assert exported["decoder_int8"].stat().st_size < 0.5 * exported["decoder"].stat().st_size
    meta = session(exported["decoder_int8"]).get_modelmeta().custom_metadata_map
    assert meta["samforge.quantize"] == "int8" and meta["samforge.family"] == "sam2"
    for p in (fp32, int8):
        p.set_image_embedding(*features_of(torch_predictor))
    ious, coverage = [], []
    for k in range(len(scene.masks)):
        point, box = object_prompts(scene, k)
        for kw in (dict(point_coords=point, point_labels=np.array([1])), dict(box=box)):
            for multimask in (True, False):
                a, score_a, _ = fp32.predict(**kw, multimask_output=multimask)
                b, score_b, _ = int8.predict(**kw, multimask_output=multimask)
                assert np.abs(score_a - score_b).max() <= 0.05
                a, b = a > 0, b > 0
                ious += [(m_a & m_b).sum() / max(1, (m_a | m_b).sum()) for m_a, m_b in zip(a, b)]
                coverage += [m.mean() for m in a]
    assert 0.02 < min(coverage) and max(coverage) < 0.98
    assert min(ious) >= 0.85 and np.mean(ious) >= 0.95, (min(ious), np.mean(ious))


# -- a real hiera_t through the CLI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hiera_t_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """A real-shape SAM 2.1 hiera_t (1024 input), perturbed, saved as official files are: {"model": state_dict}."""
    torch.manual_seed(5)
    model = build_sam2("sam2.1_hiera_t", device="cpu")
    perturb_(model, 5)
    path = tmp_path_factory.mktemp("hiera_t") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, model


def test_cli_exports_real_hiera_t(hiera_t_checkpoint, tmp_path, capsys):
    """``samforge export onnx --checkpoint sam2.1_hiera_tiny.pt`` (SAM 2 recognised from the weights): the files
    have hiera_t's shapes and agree with SAM2ImagePredictor end to end (image in, masks out)."""
    checkpoint, model = hiera_t_checkpoint
    code, out, err = run_cli(capsys, "export", "onnx", "--checkpoint", checkpoint, "--out", tmp_path)
    assert code == 0, err
    assert "SAM 2, sam2.1_hiera_t" in out
    assert leftovers(tmp_path) == ["decoder.onnx", "encoder.onnx"]
    enc = session(tmp_path / "encoder.onnx")
    assert [o.shape for o in enc.get_outputs()] == [[1, 256, 64, 64], [1, 32, 256, 256], [1, 64, 128, 128]]
    meta = enc.get_modelmeta().custom_metadata_map
    assert meta["samforge.model"] == "sam2.1_hiera_t" and meta["samforge.part"] == "encoder"
    del enc
    image = make_scene(seed=6, image_size=(300, 400)).image
    torch_pred = SAM2ImagePredictor(model)
    torch_pred.set_image(image)
    onnx_pred = OnnxSAM2ImagePredictor(tmp_path / "encoder.onnx", tmp_path / "decoder.onnx", num_threads=1)
    onnx_pred.set_image(image)
    want_embed, want_high, _ = features_of(torch_pred)
    assert np.abs(onnx_pred.get_image_embedding() - want_embed).max() <= ATOL
    for got, want in zip(onnx_pred._features["high_res_feats"], want_high):
        assert np.abs(got - want).max() <= ATOL
    for kw in (dict(point_coords=np.array([[150.0, 120.0], [300.0, 200.0]]), point_labels=np.array([1, 0])),
               dict(box=np.array([50.0, 40.0, 250.0, 220.0]), multimask_output=False)):
        want = torch_pred.predict(**kw, return_logits=True)
        got = onnx_pred.predict(**kw, return_logits=True)
        assert_close(got, want)
        assert_same_masks(onnx_pred.predict(**kw)[0], torch_pred.predict(**kw)[0], want[0])


def test_cli_errors_write_nothing(hiera_t_checkpoint, tmp_path, capsys):
    checkpoint, _ = hiera_t_checkpoint
    out = tmp_path / "out" / "nested"
    sam2 = ["export", "onnx", "--model", "sam2.1_hiera_t", "--checkpoint"]
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"x")
    code, _, err = run_cli(capsys, *sam2, checkpoint, "--adapter", adapter, "--out", out)
    assert code == 2 and "adapter" in err  # not an adapter file: refused before anything is written
    code, _, err = run_cli(capsys, *sam2, checkpoint, "--opset", 13, "--out", out)
    assert code == 2 and "unsupported ONNX opset 13" in err
    torch.manual_seed(0)
    torch.save(build_sam("vit_small").state_dict(), tmp_path / "sam_v1.pth")
    code, _, err = run_cli(capsys, *sam2, tmp_path / "sam_v1.pth", "--out", out)
    assert code == 2 and "not a SAM 2 checkpoint" in err
    code, _, err = run_cli(capsys, "export", "onnx", "--model", "sam3_hiera_t", "--checkpoint", checkpoint,
                           "--out", out)
    assert code == 2 and "sam2.1_hiera_t" in err
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == ["adapter.safetensors", "sam_v1.pth"]


# -- the predictor without PyTorch, and its input checks ----------------------------------------------------------


def test_onnx_predictor_runs_without_torch(exported, scene, tmp_path):
    """onnx_sam2_predictor.py and onnx_predictor.py copied into a folder and imported, in a process where PyTorch
    cannot be imported; the results equal those of the predictor inside samforge."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("onnx_predictor.py", "onnx_sam2_predictor.py"):
        shutil.copy(EXPORT_DIR / name, deploy / name)
    np.save(tmp_path / "image.npy", scene.image)
    point, box = object_prompts(scene, 0)
    out = tmp_path / "result.npz"
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch fails
sys.path.insert(0, {str(deploy)!r})
import numpy as np
from onnx_sam2_predictor import OnnxSAM2ImagePredictor
p = OnnxSAM2ImagePredictor({str(exported["encoder"])!r}, {str(exported["decoder"])!r}, num_threads=1)
p.set_image(np.load({str(tmp_path / "image.npy")!r}))
masks, scores, low = p.predict(np.array({point.tolist()}), np.array([1]), box=np.array({box.tolist()}),
                               multimask_output=False)
assert not any(k == "samforge" or k.startswith("samforge.") for k in sys.modules), "imported samforge"
np.savez({str(out)!r}, masks=masks, scores=scores, low=low, emb=p.get_image_embedding())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ours = OnnxSAM2ImagePredictor(exported["encoder"], exported["decoder"], num_threads=1)
    ours.set_image(scene.image)
    masks, scores, low = ours.predict(point, np.array([1]), box=box, multimask_output=False)
    saved = np.load(out)
    assert np.array_equal(saved["emb"], ours.get_image_embedding()) and np.array_equal(saved["masks"], masks)
    assert np.array_equal(saved["scores"], scores) and np.array_equal(saved["low"], low)


def test_onnx_predictor_input_errors(exported, scene, tmp_path):
    predictor = OnnxSAM2ImagePredictor(exported["encoder"], exported["decoder"], num_threads=1)
    with pytest.raises(ImageNotSetError, match="set_image"):
        predictor.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(TypeError, match="uint8"):
        predictor.set_image([[1, 2, 3]])
    with pytest.raises(ValueError, match="HxWx3"):
        predictor.set_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype uint8"):
        predictor.set_image(np.zeros((10, 10, 3), dtype=np.float32))
    embed = np.zeros((1, 256, 16, 16), dtype=np.float32)
    high = [np.zeros((1, 32, 64, 64), dtype=np.float32), np.zeros((1, 64, 32, 32), dtype=np.float32)]
    with pytest.raises(ValueError, match=r"high_res_feats_1 must have shape \(1, 64, 32, 32\)"):
        predictor.set_image_embedding(embed, [high[0], high[0]], (H, W))
    with pytest.raises(ValueError, match="two arrays"):
        predictor.set_image_embedding(embed, high[0], (H, W))
    with pytest.raises(ValueError, match="orig_hw"):
        predictor.set_image_embedding(embed, high, (H, 0))
    predictor.set_image_embedding(embed, high, (H, W))
    with pytest.raises(ValueError, match="Nx2"):
        predictor.predict(np.array([1.0, 2.0]), np.array([1]))
    with pytest.raises(ValueError, match="point_labels must have shape"):
        predictor.predict(np.array([[1.0, 2.0]]), np.array([1, 1]))
    with pytest.raises(ValueError, match="point_labels must be 1"):
        predictor.predict(np.array([[1.0, 2.0]]), np.array([5]))
    with pytest.warns(UserWarning, match="a point lies outside the image"):  # used as given, as in PyTorch
        predictor.predict(np.array([[W + 5.0, 2.0]]), np.array([1]))
    with pytest.warns(UserWarning, match="outside the image"):  # normalized coordinates: the image is [0, 1]
        predictor.predict(np.array([[2.0, 0.5]]), np.array([1]), normalize_coords=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a box overshooting the border is everyday input: no warning
        predictor.predict(box=np.array([-1.0, 0.0, W + 1.0, 10.0]))
    with pytest.raises(ValueError, match="x0 <= x1"):
        predictor.predict(box=np.array([50.0, 10.0, 20.0, 40.0]))
    with pytest.raises(ValueError, match="same batch size"):
        predictor.predict(np.zeros((2, 1, 2)), np.ones((2, 1)), box=np.array([[0, 0, 5, 5]] * 3))
    with pytest.raises(ValueError, match=r"mask_input must have shape \(1, 64, 64\)"):
        predictor.predict(mask_input=np.zeros((1, 256, 256), dtype=np.float32))
    with pytest.raises(ValueError, match="without point_coords"):
        predictor.predict(point_labels=np.array([1]))
    with pytest.raises(TypeError, match="multimask_output"):
        predictor.predict(np.array([[1.0, 2.0]]), np.array([1]), multimask_output="yes")
    with pytest.raises(FileNotFoundError, match="decoder_path"):
        OnnxSAM2ImagePredictor(exported["encoder"], tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="mask_threshold"):
        OnnxSAM2ImagePredictor(None, exported["decoder"], mask_threshold="0")
    with pytest.raises(ValueError, match="not a SAM 2 decoder"):
        OnnxSAM2ImagePredictor(None, exported["encoder"])
    with pytest.raises(ValueError, match="not a SAM decoder"):  # and the SAM v1 predictor refuses SAM 2 files
        OnnxSamPredictor(None, exported["decoder"])
    torch.manual_seed(0)
    v1 = export_sam_onnx(build_sam("vit_small"), tmp_path / "v1", parts="decoder")["decoder"]
    assert [i.name for i in session(v1).get_inputs()] == list(DECODER_INPUTS)
    with pytest.raises(ValueError, match="not a SAM 2 decoder"):
        OnnxSAM2ImagePredictor(None, v1)
    decoder_only = OnnxSAM2ImagePredictor(None, exported["decoder"], num_threads=1)
    with pytest.raises(ValueError, match="set_image_embedding"):
        decoder_only.set_image(scene.image)


# -- bad exports leave nothing behind -----------------------------------------------------------------------------


def test_export_argument_errors_write_nothing(small, tmp_path):
    out = tmp_path / "out"
    for opset, error in [(13, ValueError), (21, ValueError), ("17", TypeError), (True, TypeError)]:
        with pytest.raises(error, match="opset"):
            export_sam2_onnx(small, out, opset=opset)
    with pytest.raises(ValueError, match="quantize"):
        export_sam2_onnx(small, out, quantize="int4")
    with pytest.raises(ValueError, match="parts"):
        export_sam2_onnx(small, out, parts=("neck",))
    with pytest.raises(ValueError, match="leave it out"):
        export_sam2_onnx(small, out, parts=("encoder",), quantize="int8")
    with pytest.raises(TypeError, match="SAM 2"):
        export_sam2_onnx(torch.nn.Linear(2, 2), out)
    with pytest.raises(TypeError, match="export_sam_onnx"):
        export_sam2_onnx(build_sam("vit_small"), out)
    with pytest.raises(TypeError, match="out_dir"):
        export_sam2_onnx(small, 3)
    with pytest.raises(TypeError, match="return_single_mask"):
        export_sam2_onnx(small, out, return_single_mask=1)
    assert not out.exists()


def test_non_writable_folder(small, tmp_path, monkeypatch):
    """A folder without write permission (simulated when running as root, whom permissions do not stop) and one
    where the OS refuses to create anything: clear errors, nothing written."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
        try:
            with pytest.raises(ValueError, match="not writable"):
                export_sam2_onnx(small, locked / "sub", parts="decoder")
        finally:
            locked.chmod(0o700)
    else:
        with monkeypatch.context() as m:
            m.setattr(os, "access", lambda *a, **k: False)
            with pytest.raises(ValueError, match="not writable"):
                export_sam2_onnx(small, locked / "sub", parts="decoder")
    assert leftovers(locked) == []
    if Path("/sys/kernel").is_dir():  # sysfs: the OS refuses to create a folder even for root
        with pytest.raises(ValueError, match="cannot write to output directory"):
            export_sam2_onnx(small, "/sys/samforge-onnx-test/out", parts="decoder")
        assert not Path("/sys/samforge-onnx-test").exists()


def test_failure_during_export_leaves_no_file(small, tmp_path, monkeypatch):
    """Encoder and decoder already in the work directory when quantization fails: nothing appears in the output
    folder, an existing file there is untouched, and a folder created for the export is removed."""
    def broken(src, dst):
        Path(dst).write_bytes(b"half")
        raise RuntimeError("quantization failed")

    monkeypatch.setattr(onnx_sam, "_quantize_int8", broken)  # the staging both exports share
    fresh = tmp_path / "fresh" / "dir"
    with pytest.raises(RuntimeError, match="quantization failed"):
        export_sam2_onnx(small, fresh, quantize="int8")
    assert not (tmp_path / "fresh").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "decoder.onnx").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="quantization failed"):
        export_sam2_onnx(small, existing, parts="decoder", quantize="int8")
    assert leftovers(existing) == ["decoder.onnx"] and (existing / "decoder.onnx").read_bytes() == b"old"


def test_cli_merges_a_sam2_lora_adapter(hiera_t_checkpoint, tmp_path, capsys):
    """A LoRA adapter trained on the SAM 2 checkpoint (Hiera Q/V adapters + the decoder side it replaces) is
    merged before export: the exported decoder computes what the merged PyTorch model's decoder computes; an
    adapter of another base is refused and nothing is written."""
    from samforge.models.lora import merge_lora
    from samforge.train.adapter_file import save_adapter, weights_fingerprint
    from samforge.train.config import FinetuneConfig
    from samforge.train.finetune import apply_finetune

    checkpoint, _ = hiera_t_checkpoint
    model = build_sam2("sam2.1_hiera_t", checkpoint, device="cpu")
    base = weights_fingerprint(model)
    plan = apply_finetune(model, FinetuneConfig(mode="lora", rank=2, alpha=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("sam_mask_decoder.output_upscaling"):
                p.add_(torch.randn_like(p) * 0.05)
    adapter = save_adapter(tmp_path / "ft.safetensors", model, plan.lora, base, "sam2.1_hiera_t", plan.trained_prefixes)
    out = tmp_path / "onnx"
    code, printed, err = run_cli(capsys, "export", "onnx", "--model", "sam2.1_hiera_t", "--checkpoint", checkpoint,
                                 "--adapter", adapter, "--decoder-only", "--out", out)
    assert code == 0, err
    assert "merged" in printed
    module = SAM2OnnxDecoder(merge_lora(model).eval())
    feed = {k: v.numpy() for k, v in zip(SAM2_DECODER_INPUTS, module.dummy_inputs(2))}
    with torch.no_grad():
        want = [t.numpy() for t in module(*[torch.from_numpy(feed[k]) for k in SAM2_DECODER_INPUTS])]
    assert_close(session(out / "decoder.onnx").run(list(SAM2_DECODER_OUTPUTS), feed), want)
    torch.manual_seed(9)
    other = tmp_path / "other.pt"
    torch.save({"model": build_sam2("sam2.1_hiera_t", device="cpu").state_dict()}, other)
    code, _, err = run_cli(capsys, "export", "onnx", "--model", "sam2.1_hiera_t", "--checkpoint", other,
                           "--adapter", adapter, "--out", tmp_path / "onnx2")
    assert code == 2 and "another base" in err and not (tmp_path / "onnx2").exists()

"""ONNX export of SAM (v1): the exported files run by onnxruntime against our PyTorch ``SamPredictor`` and the
official ``SamOnnxModel`` (the oracle of the decoder interface), ``OnnxSamPredictor``, int8 quantization,
adapters, the CLI, and failures that must leave no file behind.

Models are small (``vit_small``, random weights, every parameter perturbed); the vit_b-sized decoder is checked
on a stand-in whose encoder is one small block (the prompt encoder and mask decoder are vit_b's exactly).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import make_pair, perturb_  # noqa: E402
from segment_anything.utils.onnx import SamOnnxModel  # noqa: E402

from samforge import SamPredictor  # noqa: E402
from samforge.cli.main import main  # noqa: E402
from samforge.data.synthetic import make_scene  # noqa: E402
from samforge.export import (  # noqa: E402
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    NumpyResizeLongestSide,
    OnnxDependencyError,
    OnnxSamPredictor,
    SamOnnxDecoder,
    export_sam_onnx,
)
from samforge.export import onnx_sam  # noqa: E402
from samforge.export.onnx_predictor import ImageNotSetError  # noqa: E402
from samforge.models.build import build_sam  # noqa: E402
from samforge.models.configs import SAM_CONFIGS  # noqa: E402
from samforge.models.lora import LoraConfig, add_lora, has_lora, merge_lora  # noqa: E402
from samforge.predict.transforms import ResizeLongestSide  # noqa: E402
from samforge.train.adapter_file import save_adapter, weights_fingerprint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # PyTorch and onnxruntime on one thread each
ATOL = 1e-3
H, W = 200, 300  # a landscape image: the resized input is padded at the bottom
PREDICTOR_FILE = Path(__file__).resolve().parents[1] / "samforge" / "export" / "onnx_predictor.py"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def decoder_feed(rng: np.random.Generator, embed_shape, mask_hw, n: int, size, has_mask: float) -> dict:
    """Raw decoder inputs: random points with every label (-1 .. 3), a random mask input."""
    return {
        "image_embeddings": rng.standard_normal(embed_shape).astype(np.float32),
        "point_coords": rng.uniform(0, 4 * mask_hw[0], (1, n, 2)).astype(np.float32),
        "point_labels": rng.integers(-1, 4, (1, n)).astype(np.float32),
        "mask_input": rng.standard_normal((1, 1, *mask_hw)).astype(np.float32),
        "has_mask_input": np.array([has_mask], dtype=np.float32),
        "orig_im_size": np.array(size, dtype=np.float32),
    }


def run_torch(module, feed: dict) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*[torch.from_numpy(feed[k]) for k in DECODER_INPUTS])
    return [t.numpy() for t in out]


def assert_close(got, want, atol=ATOL):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g.astype(np.float64) - w).max() <= atol


def assert_same_masks(got: np.ndarray, want: np.ndarray, want_logits: np.ndarray) -> None:
    """Identical masks, except where the logit is within float32 rounding of the threshold: the two runtimes' logits
    differ by ~4e-6, so a pixel whose logit is 1e-7 can fall either side (about 1 pixel in a million here)."""
    assert got.dtype == want.dtype == np.bool_ and got.shape == want.shape
    differ = got != want
    assert np.all(np.abs(want_logits[differ]) <= 1e-4), want_logits[differ]
    assert differ.mean() <= 1e-4


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- fixtures -----------------------------------------------------------------------------------------------------


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def pair():
    """(official, samforge) vit_small with identical perturbed random weights."""
    return make_pair("vit_small", seed=1)


@pytest.fixture(scope="module")
def sam(pair):
    return pair[1]


@pytest.fixture(scope="module")
def exported(sam, tmp_path_factory) -> dict[str, Path]:
    return export_sam_onnx(sam, tmp_path_factory.mktemp("onnx") / "small", quantize="int8")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=4, image_size=(H, W))


@pytest.fixture(scope="module")
def torch_predictor(sam, scene) -> SamPredictor:
    predictor = SamPredictor(sam)
    predictor.set_image(scene.image)
    return predictor


@pytest.fixture(scope="module")
def onnx_predictor(exported, torch_predictor, scene) -> OnnxSamPredictor:
    """The ONNX decoder on our PyTorch embedding: compares the decoders alone."""
    predictor = OnnxSamPredictor(exported["encoder"], exported["decoder"], num_threads=1)
    predictor.set_image_embedding(torch_predictor.features.numpy(), scene.image.shape[:2])
    return predictor


def object_prompts(scene, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A point inside object ``k`` and its bounding box, in original pixel coordinates."""
    ys, xs = np.nonzero(scene.masks[k])
    i = len(ys) // 2
    return np.array([[xs[i], ys[i]]], dtype=float), np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)


# -- the files ----------------------------------------------------------------------------------------------------


def test_files_interface_and_metadata(exported, sam):
    assert set(exported) == {"encoder", "decoder", "decoder_int8"}
    out = exported["encoder"].parent
    assert leftovers(out) == ["decoder.int8.onnx", "decoder.onnx", "encoder.onnx"]  # no temporary file left
    dec = session(exported["decoder"])
    shapes = {i.name: i.shape for i in dec.get_inputs()}
    assert [i.name for i in dec.get_inputs()] == list(DECODER_INPUTS)
    assert [o.name for o in dec.get_outputs()] == list(DECODER_OUTPUTS)
    assert all(i.type == "tensor(float)" for i in dec.get_inputs())  # as the official decoder
    assert shapes["image_embeddings"] == [1, 128, 16, 16]
    coords = shapes["point_coords"]
    assert coords[0] == 1 and isinstance(coords[1], str) and coords[2] == 2  # N dynamic
    assert shapes["mask_input"] == [1, 1, 64, 64] and shapes["has_mask_input"] == [1] and shapes["orig_im_size"] == [2]
    masks = dec.get_outputs()[0].shape
    assert masks[:2] == [1, 4] and all(isinstance(d, str) for d in masks[2:])  # dynamic H, W
    enc = session(exported["encoder"])
    assert [(i.name, i.shape) for i in enc.get_inputs()] == [("image", [1, 3, 256, 256])]
    assert [(o.name, o.shape) for o in enc.get_outputs()] == [("image_embeddings", [1, 128, 16, 16])]
    meta = enc.get_modelmeta().custom_metadata_map
    assert json.loads(meta["samforge.img_size"]) == 256
    assert json.loads(meta["samforge.pixel_mean"]) == pytest.approx(sam.pixel_mean.flatten().tolist())
    assert json.loads(meta["samforge.sam_config"]) == SAM_CONFIGS["vit_small"].to_dict()
    assert {o.domain: o.version for o in onnx.load(str(exported["decoder"])).opset_import}[""] == 17


def test_encoder_matches_pytorch(exported, sam):
    image = torch.randint(0, 256, (1, 3, 170, 256), generator=torch.Generator().manual_seed(0)).float()
    x = sam.preprocess(image)
    with torch.no_grad():
        want = sam.image_encoder(x).numpy()
    (got,) = session(exported["encoder"]).run(None, {"image": x.numpy()})
    assert got.shape == want.shape == (1, 128, 16, 16)
    assert np.abs(got - want).max() <= ATOL


# -- the decoder against SamPredictor -----------------------------------------------------------------------------

PROMPTS = ["points", "box", "points+box", "mask_input", "points+mask_input", "none"]


def prompt_kwargs(kind: str, scene, torch_predictor) -> dict:
    point, box = object_prompts(scene, 0)
    far, _ = object_prompts(scene, len(scene.masks) - 1)
    kw: dict = {}
    if "points" in kind:
        kw.update(point_coords=np.concatenate([point, far]), point_labels=np.array([1, 0]))
    if "box" in kind:
        kw["box"] = box
    if "mask_input" in kind:
        _, scores, low_res = torch_predictor.predict(point_coords=point, point_labels=np.array([1]))
        kw["mask_input"] = low_res[np.argmax(scores)][None]
    return kw


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("kind", PROMPTS)
def test_decoder_matches_sam_predictor(kind, multimask, scene, torch_predictor, onnx_predictor):
    kw = prompt_kwargs(kind, scene, torch_predictor)
    want = torch_predictor.predict(**kw, multimask_output=multimask, return_logits=True)
    got = onnx_predictor.predict(**kw, multimask_output=multimask, return_logits=True)
    assert got[0].shape == want[0].shape == ((3 if multimask else 1), H, W)
    assert got[0].dtype == want[0].dtype == np.float32
    assert_close(got, want)
    masks_want, scores_want, _ = torch_predictor.predict(**kw, multimask_output=multimask)
    masks_got, scores_got, _ = onnx_predictor.predict(**kw, multimask_output=multimask)
    assert_same_masks(masks_got, masks_want, want[0])
    assert np.abs(scores_got - scores_want).max() <= ATOL


def test_dynamic_points_and_image_sizes(sam, exported):
    """One decoder file, 1 or 5 points, and original images of any shape (dynamic masks H x W)."""
    predictor = SamPredictor(sam)
    onnx_pred = OnnxSamPredictor(None, exported["decoder"], num_threads=1)
    rng = np.random.default_rng(3)
    for size in [(120, 310), (410, 97)]:
        embedding = rng.standard_normal((1, 128, 16, 16)).astype(np.float32)
        fake_image(predictor, embedding, size)
        onnx_pred.set_image_embedding(embedding, size)
        assert onnx_pred.input_size == predictor.input_size
        for n in (1, 5):
            coords = rng.uniform(0, 1, (n, 2)) * [size[1], size[0]]
            labels = rng.integers(0, 2, n)
            want = predictor.predict(coords, labels, return_logits=True)
            got = onnx_pred.predict(coords, labels, return_logits=True)
            assert got[0].shape == (3, *size)
            assert_close(got, want)
            assert_same_masks(got[0] > 0, want[0] > 0, want[0])


def test_decoder_matches_official_onnx_model(pair, exported):
    """Raw decoder inputs (every label -1..3, has_mask_input 0 and 1) against the official SamOnnxModel."""
    official, sam = pair
    decoder = session(exported["decoder"])
    oracle = SamOnnxModel(official, return_single_mask=False)
    rng = np.random.default_rng(0)
    for n, size, has_mask in [(1, (200, 300), 0.0), (4, (300, 120), 1.0), (7, (1000, 37), 1.0)]:
        feed = decoder_feed(rng, (1, 128, 16, 16), (64, 64), n, size, has_mask)
        got = decoder.run(list(DECODER_OUTPUTS), feed)
        assert_close(got, run_torch(oracle, feed))
        assert_close(got, run_torch(SamOnnxDecoder(sam), feed), atol=1e-4)


def test_return_single_mask_follows_the_official_rule(pair, exported, tmp_path, scene, torch_predictor):
    official, sam = pair
    single = export_sam_onnx(sam, tmp_path, parts="decoder", return_single_mask=True)["decoder"]
    single_session, multi = session(single), session(exported["decoder"])
    assert single_session.get_outputs()[0].shape == [1, 1, "height", "width"]
    oracle = SamOnnxModel(official, return_single_mask=True)
    rng = np.random.default_rng(1)
    for n in (2, 5):  # 1 point + padding: the best multimask token; 5 points: the single-mask token
        feed = decoder_feed(rng, (1, 128, 16, 16), (64, 64), n, (H, W), 0.0)
        got = single_session.run(list(DECODER_OUTPUTS), feed)
        assert_close(got, run_torch(oracle, feed))
        all_masks, all_iou, _ = multi.run(list(DECODER_OUTPUTS), feed)
        best = 0 if n >= 3 else 1 + int(np.argmax(all_iou[0, 1:]))
        assert np.abs(got[0][0, 0] - all_masks[0, best]).max() <= 1e-5
    onnx_pred = OnnxSamPredictor(None, single)
    onnx_pred.set_image_embedding(torch_predictor.features.numpy(), scene.image.shape[:2])
    point, _ = object_prompts(scene, 0)
    with pytest.raises(ValueError, match="return_single_mask=True"):
        onnx_pred.predict(point, np.array([1]), multimask_output=True)
    masks, scores, low_res = onnx_pred.predict(point, np.array([1]), multimask_output=False)
    assert masks.shape == (1, H, W) and scores.shape == (1,) and low_res.shape == (1, 64, 64)


def fake_image(predictor: SamPredictor, embedding: np.ndarray, size: tuple[int, int]) -> None:
    """Give a SamPredictor an embedding as if ``set_image`` had computed it for an image of ``size``."""
    predictor.reset_image()
    predictor.features = torch.from_numpy(embedding)
    predictor.original_size = size
    predictor.input_size = predictor.transform.get_preprocess_shape(*size, predictor.transform.target_length)
    predictor.is_image_set = True


def test_vit_b_sized_decoder_exports_and_matches(tmp_path):
    """vit_b's prompt encoder + mask decoder (1024 input, 256 channels; the same for vit_l / vit_h) against the
    official SamOnnxModel and our SamPredictor, on random embeddings. A one-block stand-in replaces vit_b's image
    encoder, which the decoder never runs, to keep the test light."""
    vit_b = SAM_CONFIGS["vit_b"]
    cfg = dataclasses.replace(vit_b, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1,
                              encoder_global_attn_indexes=(0,))
    decoder_fields = ["image_size", "patch_size", "prompt_embed_dim", "mask_in_chans", "decoder_depth",
                      "decoder_num_heads", "decoder_mlp_dim", "num_multimask_outputs", "iou_head_depth",
                      "iou_head_hidden_dim"]
    assert all(getattr(cfg, f) == getattr(vit_b, f) for f in decoder_fields)
    official, sam = make_pair(cfg, seed=2)
    path = export_sam_onnx(sam, tmp_path, parts=("decoder",))["decoder"]
    assert leftovers(tmp_path) == ["decoder.onnx"]
    decoder = session(path)
    assert decoder.get_inputs()[0].shape == [1, 256, 64, 64] and decoder.get_inputs()[3].shape == [1, 1, 256, 256]
    rng = np.random.default_rng(2)
    for n, size, has_mask in [(2, (450, 675), 0.0), (6, (300, 200), 1.0)]:
        feed = decoder_feed(rng, (1, 256, 64, 64), (256, 256), n, size, has_mask)
        got = decoder.run(list(DECODER_OUTPUTS), feed)
        assert_close(got, run_torch(SamOnnxModel(official, return_single_mask=False), feed))
        # the official single-mask choice, taken from the four outputs
        best = 0 if n >= 3 else 1 + int(np.argmax(got[1][0, 1:]))
        want = run_torch(SamOnnxModel(official, return_single_mask=True), feed)
        assert_close([g[:, best : best + 1] for g in got], want)
    predictor = SamPredictor(sam)
    fake_image(predictor, feed["image_embeddings"], (480, 640))
    onnx_pred = OnnxSamPredictor(None, path, num_threads=1)
    onnx_pred.set_image_embedding(feed["image_embeddings"], (480, 640))
    kw = dict(point_coords=np.array([[100.0, 200.0], [400.0, 300.0]]), point_labels=np.array([1, 0]),
              box=np.array([50.0, 60.0, 500.0, 400.0]))
    want = predictor.predict(**kw, return_logits=True)
    got = onnx_pred.predict(**kw, return_logits=True)
    assert_close(got, want)
    assert_same_masks(got[0] > 0, want[0] > 0, want[0])


def test_onnx_predictor_runs_an_official_decoder_file(pair, exported, tmp_path):
    """A decoder exported by the official recipe (SamOnnxModel, scripts/export_onnx_model.py) has no samforge
    metadata; OnnxSamPredictor runs it and agrees with ours."""
    official, _ = pair
    g = torch.Generator().manual_seed(0)
    dummy = (torch.randn(1, 128, 16, 16, generator=g), torch.randint(0, 256, (1, 5, 2), generator=g).float(),
             torch.randint(0, 4, (1, 5), generator=g).float(), torch.randn(1, 1, 64, 64, generator=g),
             torch.tensor([1.0]), torch.tensor([1500.0, 2250.0]))
    path = tmp_path / "official.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SamOnnxModel(official, return_single_mask=False), dummy, str(path), dynamo=False,
                          opset_version=17, input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS),
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    theirs = OnnxSamPredictor(None, path, num_threads=1)
    assert (theirs.num_mask_outputs, theirs.img_size, theirs.mask_input_size) == (4, 256, (64, 64))
    ours = OnnxSamPredictor(None, exported["decoder"], num_threads=1)
    embedding = np.random.default_rng(0).standard_normal((1, 128, 16, 16)).astype(np.float32)
    for predictor in (theirs, ours):
        predictor.set_image_embedding(embedding, (H, W))
    for multimask in (True, False):
        kw = dict(point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1]), box=np.array([10, 20, 150, 180]),
                  multimask_output=multimask, return_logits=True)
        assert_close(theirs.predict(**kw), ours.predict(**kw), atol=1e-4)


# -- int8 ---------------------------------------------------------------------------------------------------------


def test_int8_decoder_close_to_fp32(exported, scene, torch_predictor):
    """Masks of the int8 decoder against the fp32 one, prompted with a point in and the box of each object.

    Random weights give no confident object boundaries (logits of a few tenths over large areas, masks covering
    about half the image), so the int8 error flips more pixels than on a trained model: we require a mean IoU
    >= 0.95 over all masks (0.98 here) and >= 0.9 for every one, and IoU predictions within 0.05. (A partially
    trained vit_small checkpoint gave a mean IoU of 0.98 on synthetic scenes, with the same IoU to the true masks
    as fp32.)"""
    fp32 = OnnxSamPredictor(None, exported["decoder"], num_threads=1)
    int8 = OnnxSamPredictor(None, exported["decoder_int8"], num_threads=1)
    assert exported["decoder_int8"].stat().st_size < 0.5 * exported["decoder"].stat().st_size
    meta = session(exported["decoder_int8"]).get_modelmeta().custom_metadata_map
    assert meta["samforge.quantize"] == "int8" and json.loads(meta["samforge.img_size"]) == 256
    embedding = torch_predictor.features.numpy()
    for predictor in (fp32, int8):
        predictor.set_image_embedding(embedding, scene.image.shape[:2])
    ious = []
    for k in range(len(scene.masks)):
        point, box = object_prompts(scene, k)
        for kw in (dict(point_coords=point, point_labels=np.array([1])), dict(box=box)):
            a, score_a, _ = fp32.predict(**kw)
            b, score_b, _ = int8.predict(**kw)
            assert np.abs(score_a - score_b).max() <= 0.05
            ious += [(m_a & m_b).sum() / max(1, (m_a | m_b).sum()) for m_a, m_b in zip(a, b)]
    assert min(ious) >= 0.9 and np.mean(ious) >= 0.95


# -- OnnxSamPredictor end to end ----------------------------------------------------------------------------------


def test_onnx_predictor_end_to_end(exported, sam, scene, torch_predictor):
    predictor = OnnxSamPredictor(exported["encoder"], exported["decoder"], num_threads=1)
    predictor.set_image(scene.image)
    assert predictor.original_size == (H, W) and predictor.input_size == torch_predictor.input_size
    assert np.abs(predictor.get_image_embedding() - torch_predictor.features.numpy()).max() <= ATOL
    for k in range(len(scene.masks)):
        point, box = object_prompts(scene, k)
        for kw in (dict(point_coords=point, point_labels=np.array([1])), dict(box=box, point_coords=point,
                                                                              point_labels=np.array([1]))):
            want = torch_predictor.predict(**kw, return_logits=True)
            got = predictor.predict(**kw, return_logits=True)
            assert_close(got, want)
            assert_same_masks(got[0] > 0, want[0] > 0, want[0])
    # BGR input gives the same embedding as the RGB image
    bgr = OnnxSamPredictor(exported["encoder"], exported["decoder"], num_threads=1)
    bgr.set_image(np.ascontiguousarray(scene.image[..., ::-1]), image_format="BGR")
    assert np.array_equal(bgr.features, predictor.features)


def test_numpy_resize_matches_resize_longest_side():
    ours, numpy_only = ResizeLongestSide(256), NumpyResizeLongestSide(256)
    rng = np.random.default_rng(0)
    for shape in [(200, 300), (511, 77), (256, 256), (13, 1000)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        assert np.array_equal(numpy_only.apply_image(image), ours.apply_image(image))
        coords = rng.uniform(0, 100, (4, 2))
        assert np.array_equal(numpy_only.apply_coords(coords, shape), ours.apply_coords(coords, shape))
        assert np.array_equal(numpy_only.apply_boxes(coords.reshape(2, 4), shape),
                              ours.apply_boxes(coords.reshape(2, 4), shape))


def test_onnx_predictor_runs_without_torch(exported, scene, tmp_path):
    """onnx_predictor.py loaded as a file of its own in a process where PyTorch cannot be imported."""
    out = tmp_path / "result.npz"
    point, _ = object_prompts(scene, 0)
    np.save(tmp_path / "image.npy", scene.image)
    script = f"""
import importlib.util, sys
sys.modules["torch"] = None  # any import of torch fails
import numpy as np
spec = importlib.util.spec_from_file_location("onnx_predictor", {str(PREDICTOR_FILE)!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
p = mod.OnnxSamPredictor({str(exported["encoder"])!r}, {str(exported["decoder"])!r})
p.set_image(np.load({str(tmp_path / "image.npy")!r}))
masks, scores, low = p.predict(np.array({point.tolist()}), np.array([1]))
assert not any(k == "samforge" or k.startswith("samforge.") for k in sys.modules), "imported samforge"
np.savez({str(out)!r}, masks=masks, scores=scores, low=low, emb=p.features)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ours = OnnxSamPredictor(exported["encoder"], exported["decoder"], num_threads=1)
    ours.set_image(scene.image)
    masks, scores, low = ours.predict(point, np.array([1]))
    saved = np.load(out)
    assert np.array_equal(saved["emb"], ours.features) and np.array_equal(saved["masks"], masks)
    assert np.array_equal(saved["scores"], scores) and np.array_equal(saved["low"], low)


def test_onnx_predictor_input_errors(exported, scene, tmp_path):
    predictor = OnnxSamPredictor(exported["encoder"], exported["decoder"], num_threads=1)
    with pytest.raises(ImageNotSetError, match="set_image"):
        predictor.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(TypeError, match="uint8"):
        predictor.set_image([[1, 2, 3]])
    with pytest.raises(ValueError, match="HxWx3"):
        predictor.set_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype uint8"):
        predictor.set_image(np.zeros((10, 10, 3), dtype=np.float32))
    predictor.set_image_embedding(np.zeros((1, 128, 16, 16), dtype=np.float32), (H, W))
    with pytest.raises(ValueError, match="Nx2"):
        predictor.predict(np.array([1.0, 2.0]), np.array([1]))
    with pytest.raises(ValueError, match="point_labels must have shape"):
        predictor.predict(np.array([[1.0, 2.0]]), np.array([1, 1]))
    with pytest.raises(ValueError, match="point_labels must be 1"):
        predictor.predict(np.array([[1.0, 2.0]]), np.array([2]))
    with pytest.warns(UserWarning, match="a point lies outside the image"):  # used as given, as in PyTorch
        masks, _, _ = predictor.predict(np.array([[W + 5.0, 2.0]]), np.array([1]))
    assert masks.shape[-2:] == (H, W)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a box overshooting the border is everyday input: no warning
        predictor.predict(box=np.array([-1.0, 0.0, W + 1.0, 10.0]))
    with pytest.warns(UserWarning, match="a box lies entirely outside the image"):
        predictor.predict(box=np.array([W + 1.0, 0.0, W + 9.0, 10.0]))
    with pytest.raises(ValueError, match="finite"):
        predictor.predict(np.array([[np.nan, 2.0]]), np.array([1]))
    with pytest.raises(ValueError, match="x0 <= x1"):
        predictor.predict(box=np.array([50.0, 10.0, 20.0, 40.0]))
    with pytest.raises(ValueError, match=r"mask_input must have shape \(1, 64, 64\)"):
        predictor.predict(mask_input=np.zeros((1, 256, 256), dtype=np.float32))
    with pytest.raises(ValueError, match="without point_coords"):
        predictor.predict(point_labels=np.array([1]))
    with pytest.raises(ValueError, match=r"shape \(1, 128, 16, 16\)"):
        predictor.set_image_embedding(np.zeros((1, 256, 64, 64), dtype=np.float32), (H, W))
    with pytest.raises(FileNotFoundError, match="decoder_path"):
        OnnxSamPredictor(exported["encoder"], tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="path"):
        OnnxSamPredictor(None, 3)
    with pytest.raises(ValueError, match="not a SAM decoder"):
        OnnxSamPredictor(None, exported["encoder"])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="could not be loaded"):
        OnnxSamPredictor(None, garbage)
    decoder_only = OnnxSamPredictor(None, exported["decoder"], num_threads=1)
    with pytest.raises(ValueError, match="set_image_embedding"):
        decoder_only.set_image(scene.image)


def test_missing_onnx_packages_give_an_install_hint(sam, tmp_path, exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(OnnxDependencyError, match=r"pip install samforge\[onnx\]"):
        export_sam_onnx(sam, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ImportError, match=r"pip install samforge\[onnx\]"):
        OnnxSamPredictor(None, exported["decoder"], num_threads=1)


def test_core_imports_without_onnx_packages():
    script = """
import sys
sys.modules["onnx"] = None
sys.modules["onnxruntime"] = None
import samforge, samforge.export, samforge.cli.main
from samforge.cli.main import build_parser
build_parser().parse_args(["export", "onnx", "--checkpoint", "x.pth", "--out", "o"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- adapters and the CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_setup(tmp_path_factory):
    """A base vit_small saved as a checkpoint, an adapter (encoder and decoder, non-zero) trained on it, and the
    merged model."""
    root = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(7)
    base = build_sam("vit_small")
    perturb_(base, 7)
    torch.save(base.state_dict(), root / "base.pth")
    config = LoraConfig(rank=2, alpha=4.0, decoder=True)
    adapted = copy.deepcopy(base)
    add_lora(adapted, config)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    save_adapter(root / "adapter.safetensors", adapted, config, weights_fingerprint(base), model_type="vit_small")
    merged = merge_lora(copy.deepcopy(adapted))
    return root, base, adapted, merged


def session_outputs(files: dict[str, Path]) -> list[np.ndarray]:
    g = np.random.default_rng(5)
    image = g.standard_normal((1, 3, 256, 256)).astype(np.float32)
    (embedding,) = session(files["encoder"]).run(None, {"image": image})
    feed = decoder_feed(g, (1, 128, 16, 16), (64, 64), 3, (H, W), 1.0)
    feed["image_embeddings"] = embedding
    return [embedding, *session(files["decoder"]).run(list(DECODER_OUTPUTS), feed)]


def test_export_with_adapter_equals_merged_export(adapter_setup, tmp_path, capsys):
    root, base, adapted, merged = adapter_setup
    reference = session_outputs(export_sam_onnx(merged, tmp_path / "merged"))
    # a model carrying adapters is merged (on a copy) before tracing
    from_lora = export_sam_onnx(adapted, tmp_path / "lora")
    assert has_lora(adapted)
    assert_close(session_outputs(from_lora), reference, atol=1e-5)
    # the CLI: base checkpoint + adapter file
    code, out, err = run_cli(capsys, "export", "onnx", "--model-type", "vit_small", "--checkpoint",
                             root / "base.pth", "--adapter", root / "adapter.safetensors", "--out", tmp_path / "cli")
    assert code == 0, err
    assert "adapter" in out and "decoder" in out
    assert leftovers(tmp_path / "cli") == ["decoder.onnx", "encoder.onnx"]
    assert_close(session_outputs({k: tmp_path / "cli" / f"{k}.onnx" for k in ("encoder", "decoder")}),
                 reference, atol=1e-5)
    # and the adapter does change the model
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 3, 256, 256)).astype(np.float32))
    with torch.no_grad():
        assert (base.image_encoder(x) - merged.image_encoder(x)).abs().max() > 1e-3


def test_cli_decoder_only_quantized(adapter_setup, tmp_path, capsys):
    root, *_ = adapter_setup
    code, out, err = run_cli(capsys, "export", "onnx", "--checkpoint", root / "base.pth", "--out", tmp_path / "o",
                             "--decoder-only", "--quantize", "int8", "--opset", 14, "--return-single-mask")
    assert code == 0, err  # the model type is guessed from the checkpoint's shapes
    assert leftovers(tmp_path / "o") == ["decoder.int8.onnx", "decoder.onnx"]
    proto = onnx.load(str(tmp_path / "o" / "decoder.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 14
    predictor = OnnxSamPredictor(None, tmp_path / "o" / "decoder.int8.onnx", num_threads=1)
    assert predictor.num_mask_outputs == 1 and predictor.img_size == 256


def test_cli_errors_write_nothing(adapter_setup, tmp_path, capsys):
    root, *_ = adapter_setup
    torch.manual_seed(99)
    torch.save(build_sam("vit_small").state_dict(), tmp_path / "other.pth")
    args = ["export", "onnx", "--model-type", "vit_small", "--checkpoint"]
    out = tmp_path / "out" / "nested"
    code, _, err = run_cli(capsys, *args, tmp_path / "other.pth", "--adapter", root / "adapter.safetensors",
                           "--out", out)
    assert code == 2 and "another base model" in err
    code, _, err = run_cli(capsys, *args, root / "base.pth", "--opset", 13, "--out", out)
    assert code == 2 and "unsupported ONNX opset 13" in err and "14..20" in err
    code, _, err = run_cli(capsys, *args, root / "base.pth", "--opset", 21, "--out", out)
    assert code == 2 and "opset 21" in err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run_cli(capsys, *args, root / "base.pth", "--out", a_file)
    assert code == 2 and "expected a folder (existing or to be created), got an existing file" in err
    code, _, err = run_cli(capsys, *args, root / "base.pth", "--out", a_file / "sub")
    assert code == 2 and "expected a writable folder, but a part of the path is a file" in err
    code, _, err = run_cli(capsys, *args, tmp_path / "missing.pth", "--out", out)
    assert code == 2 and "--checkpoint not found" in err
    code, _, err = run_cli(capsys, "export", "onnx", "--model-type", "sam2.1_hiera_t", "--checkpoint",
                           root / "base.pth", "--out", out)
    assert code == 2 and "SAM 2" in err
    assert not (tmp_path / "out").exists() and a_file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "other.pth"]


def test_export_argument_errors_write_nothing(sam, tmp_path):
    out = tmp_path / "out"
    for opset, error in [(13, ValueError), (21, ValueError), ("17", TypeError), (True, TypeError)]:
        with pytest.raises(error, match="opset"):
            export_sam_onnx(sam, out, opset=opset)
    with pytest.raises(ValueError, match="quantize"):
        export_sam_onnx(sam, out, quantize="int4")
    with pytest.raises(ValueError, match="parts"):
        export_sam_onnx(sam, out, parts=("neck",))
    with pytest.raises(ValueError, match="leave it out"):
        export_sam_onnx(sam, out, parts=("encoder",), quantize="int8")
    with pytest.raises(TypeError, match="SAM"):
        export_sam_onnx(torch.nn.Linear(2, 2), out)
    with pytest.raises(TypeError, match="out_dir"):
        export_sam_onnx(sam, 3)
    with pytest.raises(TypeError, match="return_single_mask"):
        export_sam_onnx(sam, out, return_single_mask=1)
    assert not out.exists()


def test_failure_during_export_leaves_no_file(sam, tmp_path, monkeypatch):
    """Encoder and decoder already written to the work directory when quantization fails: nothing appears in
    --out, an existing file there is untouched, and a directory created for the export is removed."""
    def broken(src, dst):
        Path(dst).write_bytes(b"half")
        raise RuntimeError("quantization failed")

    monkeypatch.setattr(onnx_sam, "_quantize_int8", broken)
    fresh = tmp_path / "fresh" / "dir"
    with pytest.raises(RuntimeError, match="quantization failed"):
        export_sam_onnx(sam, fresh, parts="decoder", quantize="int8")
    assert not (tmp_path / "fresh").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "decoder.onnx").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="quantization failed"):
        export_sam_onnx(sam, existing, parts="decoder", quantize="int8")
    assert leftovers(existing) == ["decoder.onnx"] and (existing / "decoder.onnx").read_bytes() == b"old"


def test_external_data_encoder(sam, exported, tmp_path, scene):
    """Weights in encoder.onnx.data (automatic past 2 GB, i.e. vit_h); a later plain export removes the stale
    data file."""
    files = export_sam_onnx(sam, tmp_path, parts="encoder", external_data=True)
    assert leftovers(tmp_path) == ["encoder.onnx", "encoder.onnx.data"]
    assert files["encoder"].stat().st_size < 0.05 * (tmp_path / "encoder.onnx.data").stat().st_size
    external = OnnxSamPredictor(files["encoder"], exported["decoder"])
    inline = OnnxSamPredictor(exported["encoder"], exported["decoder"], num_threads=1)
    external.set_image(scene.image)
    inline.set_image(scene.image)
    assert np.abs(external.features - inline.features).max() <= 1e-5
    export_sam_onnx(sam, tmp_path, parts="encoder")
    assert leftovers(tmp_path) == ["encoder.onnx"]

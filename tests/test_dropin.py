"""Drop-in: the official clients run on samforge with only the import changed (issue "A true drop-in").

Each client's code path is written out here with the calls it makes (segment-anything's ``scripts/amg.py`` main
and ``scripts/export_onnx_model.py``, the predictor and ONNX notebooks' cells, sam2's image / video predictor
usage and ``tools/vos_inference.py``'s functions; the pip packages ship neither scripts nor notebooks) and run on
the official package and on samforge's official module paths, with the same random weights (tiny models) and
synthetic inputs; the outputs are compared exactly (file bytes, masks, arrays), except where a line says why not.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import warnings
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch
from conftest import make_pair, official_sam, perturb_
from PIL import Image
from sam2_oracle import SMALL_OVERRIDES, make_sam2_pair
from test_sam2_video import H, W, write_clip

import samforge
from samforge.data.synthetic import make_scene
from samforge.models.configs import SAM_CONFIGS

pytestmark = pytest.mark.usefixtures("one_thread")

SAM2_CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# the notebooks' truck image is 1200 x 1800: their prompts, scaled by 0.1, on a 120 x 180 synthetic scene
SCALE = 0.1
HW = (120, 180)


def scaled(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) * SCALE


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_scene(7, image_size=HW).image


@pytest.fixture(scope="module")
def sam_pair():
    """(official, samforge) vit_small SAM with the same perturbed random weights."""
    return make_pair("vit_small", seed=4)


def official_and_ours(path: str):
    """The official module and samforge's at the same path (``segment_anything.x`` -> ``samforge.x``,
    ``sam2.x`` -> ``samforge.sam2.x``)."""
    ours = "samforge" + path[len("segment_anything"):] if path.startswith("segment_anything") else "samforge." + path
    return importlib.import_module(path), importlib.import_module(ours)


# ------------------------------------------------------------------------------------------------------------
# Item 4: module paths and names


MODULE_NAMES = {
    "segment_anything": ["sam_model_registry", "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_b", "SamPredictor",
                         "SamAutomaticMaskGenerator"],
    "segment_anything.build_sam": ["build_sam", "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_b",
                                   "sam_model_registry"],
    "segment_anything.modeling": ["Sam", "ImageEncoderViT", "MaskDecoder", "PromptEncoder", "TwoWayTransformer"],
    "segment_anything.utils.transforms": ["ResizeLongestSide"],
    "segment_anything.utils.amg": ["MaskData", "is_box_near_crop_edge", "box_xyxy_to_xywh", "batch_iterator",
                                   "mask_to_rle_pytorch", "rle_to_mask", "area_from_rle", "calculate_stability_score",
                                   "build_point_grid", "build_all_layer_point_grids", "generate_crop_boxes",
                                   "uncrop_boxes_xyxy", "uncrop_points", "uncrop_masks", "remove_small_regions",
                                   "coco_encode_rle", "batched_mask_to_box"],
    "segment_anything.utils.onnx": ["SamOnnxModel"],
    "sam2.build_sam": ["build_sam2", "build_sam2_video_predictor", "build_sam2_hf", "build_sam2_video_predictor_hf",
                       "HF_MODEL_ID_TO_FILENAMES"],
    "sam2.sam2_image_predictor": ["SAM2ImagePredictor"],
    "sam2.sam2_video_predictor": ["SAM2VideoPredictor", "SAM2VideoPredictorVOS"],
    "sam2.automatic_mask_generator": ["SAM2AutomaticMaskGenerator"],
    "sam2.modeling.sam2_base": ["SAM2Base", "NO_OBJ_SCORE"],
    "sam2.utils.misc": ["load_video_frames", "fill_holes_in_mask_scores"],
    "sam2.utils.transforms": ["SAM2Transforms"],
    "sam2.utils.amg": ["MaskData", "batch_iterator", "calculate_stability_score", "mask_to_rle_pytorch"],
}

REAL_OBJECTS = {  # thin modules: the names are samforge's own objects, not copies
    ("samforge.utils.transforms", "ResizeLongestSide"): samforge.ResizeLongestSide,
    ("samforge.sam2.sam2_image_predictor", "SAM2ImagePredictor"): samforge.SAM2ImagePredictor,
    ("samforge.sam2.sam2_video_predictor", "SAM2VideoPredictor"): samforge.SAM2VideoPredictor,
    ("samforge.sam2.sam2_video_predictor", "SAM2VideoPredictorVOS"): samforge.SAM2VideoPredictor,
    ("samforge.sam2.automatic_mask_generator", "SAM2AutomaticMaskGenerator"): samforge.SAM2AutomaticMaskGenerator,
    ("samforge.sam2.modeling.sam2_base", "SAM2Base"): samforge.SAM2Base,
    ("samforge.sam2.build_sam", "build_sam2"): samforge.build_sam2,
    ("samforge.sam2.build_sam", "build_sam2_video_predictor"): samforge.build_sam2_video_predictor,
    ("samforge.build_sam", "build_sam_vit_b"): samforge.sam_model_registry["vit_b"],
    ("samforge.build_sam", "build_sam"): samforge.sam_model_registry["vit_h"],
    ("samforge.modeling", "Sam"): samforge.Sam,
}


@pytest.mark.parametrize("path", sorted(MODULE_NAMES))
def test_official_module_paths_exist_under_samforge(path):
    official, ours = official_and_ours(path)
    for name in MODULE_NAMES[path]:
        assert hasattr(official, name), f"{path}.{name} is not official"  # the list is the official surface
        assert hasattr(ours, name), f"{ours.__name__} lacks {name}"
    for (module, name), obj in REAL_OBJECTS.items():
        if module == ours.__name__:
            assert getattr(ours, name) is obj, f"{module}.{name} is not samforge's object"
    if path == "sam2.build_sam":
        assert ours.HF_MODEL_ID_TO_FILENAMES == official.HF_MODEL_ID_TO_FILENAMES


def test_package_build_sam_stays_the_function():
    """``samforge.build_sam`` is both a module path (official names) and samforge's builder function (as in
    ``segment_anything``, where ``import segment_anything.build_sam as m`` also gives the function)."""
    module = importlib.import_module("samforge.build_sam")

    assert callable(samforge.build_sam) and samforge.build_sam is not module
    assert module.build_sam is module.build_sam_vit_h  # as in segment_anything.build_sam


def test_sam_predictor_official_size_attributes(sam_pair, image):
    predictor = samforge.SamPredictor(sam_pair[1])
    assert (predictor.orig_h, predictor.orig_w, predictor.input_h, predictor.input_w) == (None,) * 4
    predictor.set_image(image)
    size = SAM_CONFIGS["vit_small"].image_size
    assert (predictor.orig_h, predictor.orig_w) == HW
    assert (predictor.input_h, predictor.input_w) == samforge.ResizeLongestSide.get_preprocess_shape(*HW, size)
    predictor.reset_image()
    assert predictor.orig_h is None and predictor.input_w is None


def test_modeling_classes_compose_an_official_model(sam_pair):
    """``samforge.modeling``'s classes build a Sam that loads the official state dict strictly."""
    from samforge.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = SAM_CONFIGS["vit_small"]
    grid = cfg.image_embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.encoder_embed_dim,
                                      depth=cfg.encoder_depth, num_heads=cfg.encoder_num_heads, mlp_ratio=cfg.mlp_ratio,
                                      out_chans=cfg.prompt_embed_dim, window_size=cfg.window_size,
                                      global_attn_indexes=cfg.encoder_global_attn_indexes),
        prompt_encoder=PromptEncoder(embed_dim=cfg.prompt_embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans),
        mask_decoder=MaskDecoder(num_multimask_outputs=cfg.num_multimask_outputs, transformer_dim=cfg.prompt_embed_dim,
                                 transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
                                                               mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
                                 iou_head_depth=cfg.iou_head_depth, iou_head_hidden_dim=cfg.iou_head_hidden_dim),
    )
    sam.load_state_dict(sam_pair[0].state_dict(), strict=True)


def test_compat_aliases_are_opt_in_and_undone():
    """samforge.compat: off by default; on, unedited official imports get samforge's objects; off again, the
    official modules are back (the same module objects: nothing leaks into other tests)."""
    import segment_anything as official_sa
    import sam2.build_sam as official_sam2_build
    from sam2.modeling import sam2_base as official_base

    from samforge import compat

    assert not compat.is_enabled() and sys.modules["segment_anything"] is official_sa
    client = (
        "from segment_anything import sam_model_registry, SamPredictor\n"
        "from segment_anything.utils.transforms import ResizeLongestSide\n"
        "from segment_anything.utils.onnx import SamOnnxModel\n"
        "import segment_anything.utils.amg as amg\n"
        "from sam2.build_sam import build_sam2_video_predictor\n"
        "from sam2.modeling.sam2_base import SAM2Base\n"
    )
    ns: dict = {}
    try:
        with compat.aliases():
            assert compat.is_enabled()
            exec(client, ns)
            with pytest.raises(ImportError):
                exec("from sam2.modeling.backbones import hieradet", {})  # not offered: fails, not mixed
    finally:
        compat.disable()
    assert ns["SamPredictor"] is samforge.SamPredictor and ns["SAM2Base"] is samforge.SAM2Base
    assert ns["sam_model_registry"] is samforge.sam_model_registry and ns["amg"].__name__ == "samforge.utils.amg"
    assert ns["build_sam2_video_predictor"] is samforge.build_sam2_video_predictor
    assert not compat.is_enabled()
    assert sys.modules["segment_anything"] is official_sa and sys.modules["sam2.build_sam"] is official_sam2_build
    assert sys.modules["sam2.modeling.sam2_base"] is official_base
    import segment_anything

    assert segment_anything is official_sa and segment_anything.SamPredictor is not samforge.SamPredictor


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory):
    """A shrunk SAM 2.1 tiny checkpoint in the official layout and file name, and the official model it holds."""
    torch.manual_seed(11)
    from sam2.build_sam import build_sam2 as official_build

    official = official_build(SAM2_CFG, device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    perturb_(official, 11)
    folder = tmp_path_factory.mktemp("sam2.1-hiera-tiny")
    torch.save({"model": official.state_dict()}, folder / "sam2.1_hiera_tiny.pt")
    return folder, official


def test_hf_builders_take_local_files_and_folders(sam2_checkpoint, monkeypatch):
    from samforge.sam2.build_sam import build_sam2_hf, build_sam2_video_predictor_hf
    from samforge.sam2.sam2_video_predictor import SAM2VideoPredictor

    folder, official = sam2_checkpoint
    kw = dict(device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    expected = official.state_dict()
    video = SAM2VideoPredictor.from_pretrained(folder, **kw)
    assert isinstance(video, SAM2VideoPredictor) and video.fill_hole_area == 8  # the video build's settings
    for built in (build_sam2_hf(folder, **kw), build_sam2_hf(folder / "sam2.1_hiera_tiny.pt", **kw), video):
        state = built.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    assert isinstance(build_sam2_video_predictor_hf(folder / "sam2.1_hiera_tiny.pt", **kw), SAM2VideoPredictor)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # an official id goes through the hub package
    with pytest.raises(ImportError, match=r"pip install huggingface_hub.*sam2\.1_hiera_tiny"):
        build_sam2_hf("facebook/sam2.1-hiera-tiny")
    with pytest.raises(ValueError, match="neither a local file or folder nor an official SAM 2 model id"):
        SAM2VideoPredictor.from_pretrained("someone/finetuned-sam2")
    with pytest.raises(FileNotFoundError):
        build_sam2_hf(folder / "missing.pt")


def test_load_video_frames_matches_official(tmp_path):
    from sam2.utils.misc import load_video_frames as official_load

    from samforge.sam2.utils.misc import load_video_frames

    video = write_clip(tmp_path / "clip", num_frames=3)
    a = official_load(video, 64, offload_video_to_cpu=True, compute_device=torch.device("cpu"))
    b = load_video_frames(video, 64, offload_video_to_cpu=True, compute_device=torch.device("cpu"))
    assert a[1:] == b[1:] and a[0].dtype == b[0].dtype and torch.equal(a[0], b[0])
    lazy, h, w = load_video_frames(video, 64, offload_video_to_cpu=True, async_loading_frames=True)
    assert (h, w) == a[1:] and torch.equal(lazy[2], a[0][2])
    with pytest.raises(ValueError, match="img_mean"):
        load_video_frames(video, 64, True, img_mean=(0.5, 0.5))


def fit_official_predictor(predictor):
    """The official SAM2ImagePredictor holds the feature sizes of a 1024 input as constants: set those of the
    test's 256 model."""
    s = predictor.model.image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


def test_refine_with_m2m_matches_official(image):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official

    from samforge.sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    official_model, ours_model = make_sam2_pair("sam2.1_hiera_t", seed=2, overrides=SMALL_OVERRIDES)
    official, ours = Official(official_model), SAM2AutomaticMaskGenerator(ours_model)
    g = torch.Generator().manual_seed(0)
    points = torch.rand(5, 2, generator=g) * official_model.image_size
    labels = torch.ones(5, dtype=torch.int)
    low_res = torch.randn(5, 64, 64, generator=g) * 8
    with pytest.raises(RuntimeError, match="image"):
        ours.refine_with_m2m(points, labels, low_res, 2)
    fit_official_predictor(official.predictor)
    official.predictor.set_image(image)
    ours.predictor.set_image(image)
    masks_a, iou_a = official.refine_with_m2m(points, labels, low_res, 2)
    masks_b, iou_b = ours.refine_with_m2m(points, labels, low_res, 2)
    assert masks_b.shape == masks_a.shape == (5, 1, *HW) and iou_b.shape == iou_a.shape == (5, 1)
    assert torch.equal(masks_a, masks_b) and torch.equal(iou_a, iou_b)


# ------------------------------------------------------------------------------------------------------------
# Item 3: SamOnnxModel and the official export script


@pytest.mark.parametrize("single, stability, extra", [(False, False, False), (True, True, False), (True, False, True),
                                                      (False, True, True)])
def test_sam_onnx_model_matches_official_module(sam_pair, single, stability, extra):
    from segment_anything.utils.onnx import SamOnnxModel as Official

    from samforge.utils.onnx import SamOnnxModel

    official = Official(sam_pair[0], single, use_stability_score=stability, return_extra_metrics=extra)
    ours = SamOnnxModel(sam_pair[1], single, use_stability_score=stability, return_extra_metrics=extra)
    inputs = decoder_inputs(sam_pair[1], HW, num_points=2 if single else 4, seed=1)
    with torch.no_grad():
        a, b = official(*inputs), ours(*inputs)
    assert len(a) == len(b) == (5 if extra else 3)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
    with pytest.raises(TypeError, match="use_stability_score"):
        SamOnnxModel(sam_pair[1], single, use_stability_score="yes")


def decoder_inputs(sam, hw, num_points: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h, w = sam.prompt_encoder.image_embedding_size
    size = sam.image_encoder.img_size
    return (
        torch.randn(1, sam.prompt_encoder.embed_dim, h, w, generator=g),
        torch.rand(1, num_points, 2, generator=g) * size,
        torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0][:num_points]]),
        torch.randn(1, 1, 4 * h, 4 * w, generator=g),
        torch.tensor([1.0]),
        torch.tensor([float(hw[0]), float(hw[1])]),
    )


def export_onnx_model_script(sam, onnx_model_cls, return_single_mask: bool, gelu_approximate: bool = False) -> bytes:
    """``scripts/export_onnx_model.py``'s ``run_export``, writing to memory. The script relies on
    torch.onnx.export's old default exporter; torch >= 2.9 defaults to dynamo (needing onnxscript), so
    ``dynamo=False`` is spelled out, on both packages alike."""
    onnx_model = onnx_model_cls(model=sam, return_single_mask=return_single_mask, use_stability_score=False,
                                return_extra_metrics=False)
    gelus = [m for _, m in onnx_model.named_modules() if isinstance(m, torch.nn.GELU)]
    assert gelus  # what --gelu-approximate sets
    if gelu_approximate:
        for m in gelus:
            m.approximate = "tanh"
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    mask_input_size = [4 * x for x in embed_size]
    dummy_inputs = {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, dtype=torch.float),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, *mask_input_size, dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    _ = onnx_model(**dummy_inputs)
    output_names = ["masks", "iou_predictions", "low_res_masks"]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(onnx_model, tuple(dummy_inputs.values()), f, export_params=True, verbose=False,
                          opset_version=17, do_constant_folding=True, input_names=list(dummy_inputs.keys()),
                          output_names=output_names, dynamic_axes=dynamic_axes, dynamo=False)
    for m in gelus:  # the script's process ends here; the test's models live on
        m.approximate = "none"
    return f.getvalue()


def test_export_script_and_onnx_notebook(sam_pair):
    """The export script's calls, then the ONNX notebook's cells on the file: samforge's model gives the
    PyTorch predictor's masks at any image size; the official file is traced with its crop frozen to the
    dummy 1500 x 2250 frame, and differs from PyTorch on images of another aspect ratio (README, ONNX)."""
    image = make_scene(8, image_size=(96, 160)).image  # 3:5, not the dummy's 2:3
    ort = pytest.importorskip("onnxruntime")
    from segment_anything import SamPredictor as OfficialPredictor
    from segment_anything.utils.onnx import SamOnnxModel as OfficialOnnx

    from samforge import SamPredictor
    from samforge.utils.onnx import SamOnnxModel

    torch.manual_seed(0)
    ours_file = export_onnx_model_script(sam_pair[1], SamOnnxModel, return_single_mask=False)
    torch.manual_seed(0)
    official_file = export_onnx_model_script(sam_pair[0], OfficialOnnx, return_single_mask=False)
    worst = {}
    for name, model_file, predictor in (("ours", ours_file, SamPredictor(sam_pair[1])),
                                        ("official", official_file, OfficialPredictor(sam_pair[0]))):
        ort_session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        predictor.set_image(image)
        image_embedding = predictor.get_image_embedding().cpu().numpy()
        input_point = scaled([[500, 375]])
        input_label = np.array([1])
        onnx_coord = np.concatenate([input_point, np.array([[0.0, 0.0]])], axis=0)[None, :, :]
        onnx_label = np.concatenate([input_label, np.array([-1])], axis=0)[None, :].astype(np.float32)
        onnx_coord = predictor.transform.apply_coords(onnx_coord, image.shape[:2]).astype(np.float32)
        low = [4 * s for s in sam_pair[1].prompt_encoder.image_embedding_size]
        ort_inputs = {
            "image_embeddings": image_embedding,
            "point_coords": onnx_coord,
            "point_labels": onnx_label,
            "mask_input": np.zeros((1, 1, *low), dtype=np.float32),
            "has_mask_input": np.zeros(1, dtype=np.float32),
            "orig_im_size": np.array(image.shape[:2], dtype=np.float32),
        }
        masks, _, low_res_logits = ort_session.run(None, ort_inputs)
        torch_masks, _, _ = predictor.predict(point_coords=input_point, point_labels=input_label,
                                              multimask_output=True, return_logits=True)
        worst[name] = float(np.abs(masks[0, 1:] - torch_masks).max())
        if name == "ours":
            assert np.array_equal(masks[0, 1:] > 0, torch_masks > 0)
    assert worst["ours"] <= 1e-3 < worst["official"], worst


# ------------------------------------------------------------------------------------------------------------
# segment-anything: scripts/amg.py, the predictor notebook


def write_masks_to_folder(masks, path: str) -> None:
    """scripts/amg.py's function (cv2.imwrite per mask, metadata.csv)."""
    header = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
              "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")
    metadata = [header]
    for i, mask_data in enumerate(masks):
        cv2.imwrite(os.path.join(path, f"{i}.png"), mask_data["segmentation"] * 255)
        metadata.append(",".join([
            str(i), str(mask_data["area"]), *[str(x) for x in mask_data["bbox"]],
            *[str(x) for x in mask_data["point_coords"][0]], str(mask_data["predicted_iou"]),
            str(mask_data["stability_score"]), *[str(x) for x in mask_data["crop_box"]],
        ]))
    with open(os.path.join(path, "metadata.csv"), "w") as f:
        f.write("\n".join(metadata))


def amg_main(package, checkpoint: str, model_type: str, input_dir: str, output: str, convert_to_rle: bool,
             amg_kwargs: dict) -> None:
    """scripts/amg.py's ``main`` with ``package`` standing for ``segment_anything``."""
    sam = package.sam_model_registry[model_type](checkpoint=checkpoint)
    _ = sam.to(device="cpu")
    output_mode = "coco_rle" if convert_to_rle else "binary_mask"
    generator = package.SamAutomaticMaskGenerator(sam, output_mode=output_mode, **amg_kwargs)
    targets = [os.path.join(input_dir, f) for f in sorted(os.listdir(input_dir))]
    os.makedirs(output, exist_ok=True)
    for t in targets:
        image = cv2.imread(t)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        masks = generator.generate(image)
        save_base = os.path.join(output, os.path.splitext(os.path.basename(t))[0])
        if output_mode == "binary_mask":
            os.makedirs(save_base, exist_ok=False)
            write_masks_to_folder(masks, save_base)
        else:
            with open(save_base + ".json", "w") as f:
                json.dump(masks, f)


class _OfficialPackage:
    """``segment_anything`` with a registry entry for the test's small model (the official registry has
    vit_h/l/b only; a vit_b run takes minutes on 2 cores)."""

    def __init__(self) -> None:
        import segment_anything

        self.SamAutomaticMaskGenerator = segment_anything.SamAutomaticMaskGenerator

        def build_small(checkpoint):
            sam = official_sam(SAM_CONFIGS["vit_small"])
            sam.load_state_dict(torch.load(checkpoint, weights_only=True))
            return sam

        self.sam_model_registry = {"vit_small": build_small}


def read_tree(folder) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def assert_same_records(official_records: list[dict], ours_records: list[dict]) -> None:
    """Equal records, every field exactly (its JSON text: values and types)."""
    assert len(official_records) == len(ours_records) > 0
    for a, b in zip(official_records, ours_records):
        assert a.keys() == b.keys()
        for key in a:
            assert json.dumps(a[key]) == json.dumps(b[key]), key


@pytest.mark.parametrize("convert_to_rle, amg_kwargs", [
    (True, dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95)),
    (False, dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95,
                 crop_n_layers=1, min_mask_region_area=20)),
])
def test_amg_script_main(tmp_path, sam_pair, image, convert_to_rle, amg_kwargs):
    checkpoint = tmp_path / "sam_vit_small.pth"
    torch.save(sam_pair[0].state_dict(), checkpoint)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "scene.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for name, package in (("official", _OfficialPackage()), ("ours", samforge)):
        amg_main(package, str(checkpoint), "vit_small", str(tmp_path / "in"), str(tmp_path / name), convert_to_rle,
                 amg_kwargs)
    official, ours = read_tree(tmp_path / "official"), read_tree(tmp_path / "ours")
    assert official.keys() == ours.keys()
    if convert_to_rle:
        assert_same_records(json.loads(official["scene.json"]), json.loads(ours["scene.json"]))
        return
    pngs = [k for k in official if k.endswith(".png")]
    assert pngs and all(official[k] == ours[k] for k in pngs)  # the masks, byte for byte
    assert official["scene/metadata.csv"] == ours["scene/metadata.csv"]  # values and their text (crop boxes "0.0")


def predictor_notebook(package, sam, image) -> list:
    """The cells of segment-anything's predictor_example.ipynb (prompts scaled to the image), as plain code."""
    out = []
    predictor = package.SamPredictor(sam)
    predictor.set_image(image)
    input_point, input_label = scaled([[500, 375]]), np.array([1])
    masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label,
                                              multimask_output=True)
    out += [masks, scores, logits]
    input_point, input_label = scaled([[500, 375], [1125, 625]]), np.array([1, 1])
    mask_input = logits[np.argmax(scores), :, :]
    masks, _, _ = predictor.predict(point_coords=input_point, point_labels=input_label,
                                    mask_input=mask_input[None, :, :], multimask_output=False)
    out.append(masks)
    input_label = np.array([1, 0])
    masks, _, _ = predictor.predict(point_coords=input_point, point_labels=input_label,
                                    mask_input=mask_input[None, :, :], multimask_output=False)
    out.append(masks)
    input_box = scaled([425, 600, 700, 875])
    masks, _, _ = predictor.predict(point_coords=None, point_labels=None, box=input_box[None, :],
                                    multimask_output=False)
    out.append(masks)
    input_point, input_label = scaled([[575, 750]]), np.array([0])
    masks, _, _ = predictor.predict(point_coords=input_point, point_labels=input_label, box=input_box,
                                    multimask_output=False)
    out.append(masks)
    input_boxes = torch.tensor(scaled([[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800],
                                       [1240, 675, 1400, 750]]), dtype=torch.float, device=predictor.device)
    transformed_boxes = predictor.transform.apply_boxes_torch(input_boxes, image.shape[:2])
    masks, _, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=transformed_boxes,
                                          multimask_output=False)
    out.append(masks)
    # the batched-input cell (two images through Sam.__call__)
    resize_transform = package.ResizeLongestSide(sam.image_encoder.img_size)

    def prepare_image(image, transform, device):
        image = transform.apply_image(image)
        image = torch.as_tensor(image, device=device.device)
        return image.permute(2, 0, 1).contiguous()

    image2 = np.ascontiguousarray(image[:, ::-1])
    batched_input = [
        {"image": prepare_image(image, resize_transform, sam),
         "boxes": resize_transform.apply_boxes_torch(input_boxes, image.shape[:2]), "original_size": image.shape[:2]},
        {"image": prepare_image(image2, resize_transform, sam),
         "boxes": resize_transform.apply_boxes_torch(input_boxes[:2], image2.shape[:2]),
         "original_size": image2.shape[:2]},
    ]
    with torch.no_grad():
        batched_output = sam(batched_input, multimask_output=False)
    out += [o[k] for o in batched_output for k in ("masks", "iou_predictions", "low_res_logits")]
    return out


def assert_same_outputs(official: list, ours: list, tol: float = 0.0) -> None:
    assert len(official) == len(ours)
    for i, (a, b) in enumerate(zip(official, ours)):
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
        b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else b
        assert a.shape == b.shape and a.dtype == b.dtype, f"output {i}: {a.shape} {a.dtype} != {b.shape} {b.dtype}"
        if a.dtype == bool or tol == 0.0:
            assert np.array_equal(a, b), f"output {i} differs"
        else:
            assert np.abs(a.astype(np.float64) - b).max() <= tol, f"output {i}"


def test_predictor_notebook_cells(sam_pair, image):
    import segment_anything
    from segment_anything.utils.transforms import ResizeLongestSide

    segment_anything.ResizeLongestSide = ResizeLongestSide  # the notebook imports it from utils.transforms
    try:
        official = predictor_notebook(segment_anything, sam_pair[0], image)
    finally:
        del segment_anything.ResizeLongestSide
    ours = predictor_notebook(samforge, sam_pair[1], image)
    assert_same_outputs(official, ours)


# ------------------------------------------------------------------------------------------------------------
# sam2: image predictor notebook, video predictor (item 5), tools/vos_inference.py


def sam2_image_notebook(predictor_cls, model, image) -> list:
    """The cells of sam2's image_predictor_example.ipynb (prompts scaled), as plain code."""
    out = []
    predictor = predictor_cls(model)
    predictor.set_image(image)
    input_point, input_label = scaled([[500, 375]]), np.array([1])
    masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label,
                                              multimask_output=True)
    sorted_ind = np.argsort(scores)[::-1]
    masks, scores, logits = masks[sorted_ind], scores[sorted_ind], logits[sorted_ind]
    out += [masks, scores, logits]
    input_point, input_label = scaled([[500, 375], [1125, 625]]), np.array([1, 1])
    mask_input = logits[np.argmax(scores), :, :]
    out += list(predictor.predict(point_coords=input_point, point_labels=input_label,
                                  mask_input=mask_input[None, :, :], multimask_output=False))
    input_box = scaled([425, 600, 700, 875])
    out += list(predictor.predict(point_coords=None, point_labels=None, box=input_box[None, :],
                                  multimask_output=False))
    input_point, input_label = scaled([[575, 750]]), np.array([0])
    out += list(predictor.predict(point_coords=input_point, point_labels=input_label, box=input_box,
                                  multimask_output=False))
    input_boxes = scaled([[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800], [1240, 675, 1400, 750]])
    out += list(predictor.predict(point_coords=None, point_labels=None, box=input_boxes, multimask_output=False))
    image2 = np.ascontiguousarray(image[::-1])
    predictor.set_image_batch([image, image2])
    boxes_batch = [input_boxes[:2], input_boxes[2:]]
    masks_batch, scores_batch, _ = predictor.predict_batch(None, None, box_batch=boxes_batch, multimask_output=False)
    out += list(masks_batch) + list(scores_batch)
    pts_batch = [scaled([[500, 375], [1125, 625]])[:, None], scaled([[400, 300], [630, 300]])[:, None]]
    labels_batch = [np.array([[1], [1]]), np.array([[1], [1]])]
    masks_batch, scores_batch, _ = predictor.predict_batch(pts_batch, labels_batch, box_batch=None,
                                                           multimask_output=True)
    out += list(masks_batch) + list(scores_batch)
    return out


def test_sam2_image_predictor_notebook_cells(image):
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    from samforge.sam2.sam2_image_predictor import SAM2ImagePredictor

    official_model, ours_model = make_sam2_pair("sam2.1_hiera_t", seed=6, overrides=SMALL_OVERRIDES)
    assert_same_outputs(sam2_image_notebook(lambda m: fit_official_predictor(Official(m)), official_model, image),
                        sam2_image_notebook(SAM2ImagePredictor, ours_model, image))


T = 5  # frames of the test clips (test_sam2_video.write_clip: two ellipses crossing, H x W)


def official_video_predictor_module_surface():
    """Names of the official video predictor: SAM2Base's and its own, with its child modules and parameters."""
    from sam2.build_sam import build_sam2_video_predictor

    official = build_sam2_video_predictor(SAM2_CFG, device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    names = set(vars(official)) | set(official._modules) | set(official._parameters) | set(official._buffers)
    names |= {n for n in dir(type(official)) if not n.startswith("__")}
    return official, {n for n in names if not n.startswith("_") or n in dir(type(official))}


def test_video_predictor_has_the_sam2base_surface():
    """Item 5: every attribute of the official predictor (a SAM2Base) is there; .to / .eval / state dicts act on
    the model; setting a model attribute on the predictor sets it on the model."""
    from samforge.sam2.build_sam import build_sam2_video_predictor

    official, names = official_video_predictor_module_surface()
    ours = build_sam2_video_predictor(SAM2_CFG, device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    assert len(names) > 100 and sorted(n for n in names if not hasattr(ours, n)) == []
    assert isinstance(ours, torch.nn.Module) and ours.to("cpu") is ours and ours.image_encoder is ours.model.image_encoder
    ours.train()
    assert ours.model.training and ours.model.image_encoder.training
    ours.eval()
    assert not ours.model.training
    perturb_(official, 0)
    ours.load_state_dict(official.state_dict())
    state = ours.state_dict()
    assert state.keys() == official.state_dict().keys()
    assert torch.equal(state["no_mem_embed"], official.no_mem_embed)
    ours.memory_temporal_stride_for_eval = 2
    assert ours.model.memory_temporal_stride_for_eval == 2 and "memory_temporal_stride_for_eval" not in vars(ours)
    ours.fill_hole_area = 0  # the predictor's own setting stays its own
    assert ours.fill_hole_area == 0 and vars(ours)["fill_hole_area"] == 0
    scores = torch.randn(3, 1, 8, 8)
    assert torch.equal(ours._apply_non_overlapping_constraints(scores), official._apply_non_overlapping_constraints(scores))
    image = torch.randn(1, 3, official.image_size, official.image_size)
    with torch.no_grad():
        a, b = official.forward_image(image), ours.forward_image(image)
    assert torch.equal(a["vision_features"], b["vision_features"])


def video_notebook(predictor, video_dir) -> list:
    """The cells of sam2's video_predictor_example.ipynb (prompts moved onto the test clip), as plain code."""
    out = []
    inference_state = predictor.init_state(video_path=video_dir)
    predictor.reset_state(inference_state)
    ann_frame_idx, ann_obj_id = 0, 1
    points, labels = np.array([[30, 40]], dtype=np.float32), np.array([1], np.int32)
    out.append(predictor.add_new_points_or_box(inference_state=inference_state, frame_idx=ann_frame_idx,
                                               obj_id=ann_obj_id, points=points, labels=labels))
    points, labels = np.array([[30, 40], [40, 45]], dtype=np.float32), np.array([1, 1], np.int32)
    out.append(predictor.add_new_points_or_box(inference_state=inference_state, frame_idx=ann_frame_idx,
                                               obj_id=ann_obj_id, points=points, labels=labels))
    out += list(predictor.propagate_in_video(inference_state))
    predictor.reset_state(inference_state)
    box = np.array([88, 38, 112, 82], dtype=np.float32)
    out.append(predictor.add_new_points_or_box(inference_state=inference_state, frame_idx=ann_frame_idx, obj_id=4,
                                               box=box))
    points, labels = np.array([[100, 45]], dtype=np.float32), np.array([1], np.int32)
    out.append(predictor.add_new_points_or_box(inference_state=inference_state, frame_idx=ann_frame_idx, obj_id=4,
                                               points=points, labels=labels, box=box))
    out.append(predictor.add_new_points_or_box(inference_state=inference_state, frame_idx=ann_frame_idx, obj_id=2,
                                               points=np.array([[30, 40], [100, 60]], dtype=np.float32),
                                               labels=np.array([1, 0], np.int32)))
    out += list(predictor.propagate_in_video(inference_state))
    return out


def test_sam2_video_notebook_cells(tmp_path, sam2_checkpoint):
    from sam2.build_sam import build_sam2_video_predictor as official_build

    from samforge.sam2.build_sam import build_sam2_video_predictor

    video_dir = write_clip(tmp_path / "clip", num_frames=T, seed=1)
    checkpoint = str(sam2_checkpoint[0] / "sam2.1_hiera_tiny.pt")
    results = []
    for build in (official_build, build_sam2_video_predictor):
        predictor = build(SAM2_CFG, checkpoint, device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
        predictor.fill_hole_area = 0  # the official hole filling needs its CUDA extension
        results.append(video_notebook(predictor, video_dir))
    assert len(results[0]) == len(results[1]) == 2 + T + 3 + T
    for (f1, ids1, m1), (f2, ids2, m2) in zip(*results):
        assert f1 == f2 and list(ids1) == list(ids2) and m1.shape == m2.shape
        assert torch.equal(m1, m2), f"frame {f1}: logits differ by {(m1 - m2).abs().max().item()}"


# tools/vos_inference.py: its functions with the same calls, minus argparse and printing
DAVIS_PALETTE = bytes([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]) + bytes(756)


def load_ann_png(path):
    mask = Image.open(path)
    return np.array(mask).astype(np.uint8), mask.getpalette()


def save_ann_png(path, mask, palette):
    output_mask = Image.fromarray(mask)
    output_mask.putpalette(palette)
    output_mask.save(path)


def get_per_obj_mask(mask):
    object_ids = np.unique(mask)
    return {object_id: (mask == object_id) for object_id in object_ids[object_ids > 0].tolist()}


def put_per_obj_mask(per_obj_mask, height, width):
    mask = np.zeros((height, width), dtype=np.uint8)
    for object_id in sorted(per_obj_mask)[::-1]:
        mask[per_obj_mask[object_id].reshape(height, width)] = object_id
    return mask


def frame_names_of(video_dir):
    names = [os.path.splitext(p)[0] for p in os.listdir(video_dir) if os.path.splitext(p)[-1] in [".jpg", ".jpeg"]]
    return sorted(names, key=lambda p: int(p))


def save_segments(output_mask_dir, video_name, frame_names, video_segments, height, width, palette):
    os.makedirs(os.path.join(output_mask_dir, video_name), exist_ok=True)
    for out_frame_idx, per_obj_output_mask in video_segments.items():
        output_mask = put_per_obj_mask(per_obj_output_mask, height, width)
        save_ann_png(os.path.join(output_mask_dir, video_name, f"{frame_names[out_frame_idx]}.png"), output_mask, palette)


@torch.inference_mode()
def vos_inference(predictor, base_video_dir, input_mask_dir, output_mask_dir, video_name, score_thresh=0.0):
    """vos_inference.py's ``vos_inference`` (first-frame masks, DAVIS PNGs)."""
    video_dir = os.path.join(base_video_dir, video_name)
    frame_names = frame_names_of(video_dir)
    inference_state = predictor.init_state(video_path=video_dir, async_loading_frames=False)
    height, width = inference_state["video_height"], inference_state["video_width"]
    input_mask, input_palette = load_ann_png(os.path.join(input_mask_dir, video_name, f"{frame_names[0]}.png"))
    for object_id, object_mask in get_per_obj_mask(input_mask).items():
        predictor.add_new_mask(inference_state=inference_state, frame_idx=0, obj_id=object_id, mask=object_mask)
    video_segments = {}
    for out_frame_idx, out_obj_ids, out_mask_logits in predictor.propagate_in_video(inference_state):
        video_segments[out_frame_idx] = {
            out_obj_id: (out_mask_logits[i] > score_thresh).cpu().numpy() for i, out_obj_id in enumerate(out_obj_ids)
        }
    save_segments(output_mask_dir, video_name, frame_names, video_segments, height, width,
                  input_palette or DAVIS_PALETTE)


@torch.inference_mode()
def vos_separate_inference_per_object(predictor, base_video_dir, input_mask_dir, output_mask_dir, video_name,
                                      score_thresh=0.0):
    """vos_inference.py's ``vos_separate_inference_per_object`` (--track_object_appearing_later_in_video)."""
    video_dir = os.path.join(base_video_dir, video_name)
    frame_names = frame_names_of(video_dir)
    inference_state = predictor.init_state(video_path=video_dir, async_loading_frames=False)
    height, width = inference_state["video_height"], inference_state["video_width"]
    input_palette = None
    inputs_per_object = defaultdict(dict)
    for idx, name in enumerate(frame_names):
        path = os.path.join(input_mask_dir, video_name, f"{name}.png")
        if os.path.exists(path):
            input_mask, input_palette = load_ann_png(path)
            for object_id, object_mask in get_per_obj_mask(input_mask).items():
                if not np.any(object_mask) or len(inputs_per_object[object_id]) > 0:
                    continue
                inputs_per_object[object_id][idx] = object_mask
    object_ids = sorted(inputs_per_object)
    output_scores_per_object = defaultdict(dict)
    for object_id in object_ids:
        input_frame_inds = sorted(inputs_per_object[object_id])
        predictor.reset_state(inference_state)
        for input_frame_idx in input_frame_inds:
            predictor.add_new_mask(inference_state=inference_state, frame_idx=input_frame_idx, obj_id=object_id,
                                   mask=inputs_per_object[object_id][input_frame_idx])
        for out_frame_idx, _, out_mask_logits in predictor.propagate_in_video(
            inference_state, start_frame_idx=min(input_frame_inds), reverse=False
        ):
            output_scores_per_object[object_id][out_frame_idx] = out_mask_logits.cpu().numpy()
    video_segments = {}
    for frame_idx in range(len(frame_names)):
        scores = torch.full(size=(len(object_ids), 1, height, width), fill_value=-1024.0, dtype=torch.float32)
        for i, object_id in enumerate(object_ids):
            if frame_idx in output_scores_per_object[object_id]:
                scores[i] = torch.from_numpy(output_scores_per_object[object_id][frame_idx])
        scores = predictor._apply_non_overlapping_constraints(scores)
        video_segments[frame_idx] = {
            object_id: (scores[i] > score_thresh).cpu().numpy() for i, object_id in enumerate(object_ids)
        }
    save_segments(output_mask_dir, video_name, frame_names, video_segments, height, width,
                  input_palette or DAVIS_PALETTE)


@pytest.fixture(scope="module")
def vos_data(tmp_path_factory, sam2_checkpoint):
    """A DAVIS-layout clip: object 1 annotated on frame 0, object 2 first on frame 2."""
    root = tmp_path_factory.mktemp("vos")
    write_clip(root / "JPEGImages" / "clip", num_frames=T, seed=4)
    yy, xx = np.mgrid[:H, :W]
    os.makedirs(root / "Annotations" / "clip")
    for t in (0, 2):  # the ellipses of write_clip
        label = np.zeros((H, W), np.uint8)
        label[((xx - (30 + 6 * t)) / 18) ** 2 + ((yy - (40 + 2 * t)) / 12) ** 2 < 1] = 1
        if t == 2:
            label[((xx - (100 - 5 * t)) / 10) ** 2 + ((yy - 60) / 20) ** 2 < 1] = 2
        save_ann_png(str(root / "Annotations" / "clip" / f"{t:05d}.png"), label, DAVIS_PALETTE)
    return root, sam2_checkpoint[0] / "sam2.1_hiera_tiny.pt"


@pytest.mark.parametrize("later_objects", [False, True])
def test_vos_inference(vos_data, later_objects):
    """vos_inference.py's main with and without --track_object_appearing_later_in_video: the same palette PNGs,
    byte for byte."""
    from sam2.build_sam import build_sam2_video_predictor as official_build

    from samforge.sam2.build_sam import build_sam2_video_predictor

    root, checkpoint = vos_data
    outputs = {}
    for name, build in (("official", official_build), ("ours", build_sam2_video_predictor)):
        predictor = build(config_file=SAM2_CFG, ckpt_path=str(checkpoint), apply_postprocessing=False,
                          hydra_overrides_extra=list(SMALL_OVERRIDES) + ["++model.non_overlap_masks=true"],
                          vos_optimized=False, device="cpu")
        run = vos_separate_inference_per_object if later_objects else vos_inference
        run(predictor=predictor, base_video_dir=str(root / "JPEGImages"), input_mask_dir=str(root / "Annotations"),
            output_mask_dir=str(root / name / str(later_objects)), video_name="clip")
        outputs[name] = read_tree(root / name / str(later_objects))
    assert len(outputs["official"]) == T and outputs["official"] == outputs["ours"]
    labels = np.array(Image.open(io.BytesIO(outputs["ours"][os.path.join("clip", "00003.png")])))
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels > 0).any()

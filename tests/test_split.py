"""The held-out split by case: whole scans (clips, images) on one side, seeded, written to split.json and kept on
resume; the presets' synthetic validation data never stands in for the user's; bad splits fail before training."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from samforge.cli.main import main
from samforge.data.clip_dataset import NiftiClipDataset
from samforge.data.nifti_dataset import NiftiDataset
from samforge.data.split import (SPLIT_JSON, case_keys, is_builtin_spec, make_split, read_split, split_datasets,
                                 write_split)
from samforge.data.synthetic import make_scene
from samforge.train.config import load_config
from samforge.train.trainer import train
from samforge.utils.atomic import save_png
from test_train_run import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_NO_VAL = [o for o in TINY if not o.startswith("data.val=")]


def write_volumes(root: Path, count: int) -> None:
    """``count`` 12 x 12 x 6 NIfTI volumes, each with an object on 3 of its slices."""
    for n in range(count):
        lab = np.zeros((12, 12, 6), dtype=np.uint8)
        lab[2:6, 3:8, 1:4] = 1 + n % 2
        img = np.random.default_rng(n).normal(size=lab.shape).astype(np.float32)
        for sub, arr in (("images", img), ("labels", lab)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / sub / f"case{n}.nii.gz"))


def write_image_folder(root: Path, count: int, size: int = 64) -> list[str]:
    """``count`` synthetic scenes as images/ + masks/<name>_mask.png label maps; their image file names."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    names = []
    for n in range(count):
        scene = make_scene(n, image_size=(size, size))
        lab = np.zeros((size, size), dtype=np.uint8)
        for k, m in enumerate(scene.masks):
            lab[m] = k + 1
        save_png(scene.image, root / "images" / f"img{n}.png")
        save_png(lab, root / "masks" / f"img{n}_mask.png")
        names.append(f"img{n}.png")
    return names


def test_a_volume_never_has_slices_on_both_sides(tmp_path):
    write_volumes(tmp_path, 5)
    slices = NiftiDataset(tmp_path)
    assert len(slices) == 15  # 3 slices of each of 5 volumes
    split = make_split(case_keys(slices, str(tmp_path)), 0.4, seed=3, data=str(tmp_path))
    assert len(split.val_cases) == 2 and len(split.train_cases) == 3
    assert set(split.val_cases) | set(split.train_cases) == {f"images/case{n}.nii.gz" for n in range(5)}
    train_view, val_view = split_datasets(slices, split)
    volume_of = lambda name: name.split("[")[0]  # noqa: E731 - a slice's name is "<volume path>[axis=2,z=I]"
    train_volumes = {volume_of(n) for n in train_view.names}
    val_volumes = {volume_of(n) for n in val_view.names}
    assert not train_volumes & val_volumes
    assert len(train_view) == 9 and len(val_view) == 6
    # SAM 2 reads the same folder as clips (one per volume): the same cases, the same split
    clips = NiftiClipDataset(tmp_path)
    clip_train, clip_val = split_datasets(clips, split)
    assert {volume_of(n) for n in clip_val.names} == val_volumes and len(clip_train) == 3


def test_the_split_is_seeded_and_reads_back(tmp_path):
    cases = [f"c{i}" for i in range(10)]
    a = make_split(cases, 0.2, seed=0, data="d")
    assert make_split(list(reversed(cases)), 0.2, seed=0, data="d") == a  # the order cases come in does not matter
    assert make_split(cases, 0.2, seed=1, data="d").val_cases != a.val_cases
    assert len(a.val_cases) == 2 and not set(a.val_cases) & set(a.train_cases)
    path = write_split(a, tmp_path / SPLIT_JSON)
    assert read_split(tmp_path) == a  # the run folder or the file
    doc = json.loads(path.read_text())
    assert doc["num_val_cases"] == 2 and doc["seed"] == 0 and doc["fraction"] == 0.2 and doc["data"] == "d"


@pytest.mark.parametrize("cases, fraction", [(["only"], 0.2), (["a", "b", "c"], 0.9), (["a", "b"], 0.01)])
def test_a_split_without_training_or_validation_cases_is_refused(cases, fraction):
    with pytest.raises(ValueError, match="expected at least one of each"):
        make_split(cases, fraction, seed=0, data="my_data/")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_val_split_outside_zero_one_is_refused(value):
    with pytest.raises(ValueError, match=rf"data.val_split must be .* between 0 and 1 .* got {value}"):
        load_config(None, [f"data.val_split={value}"])


def test_split_files_that_do_not_fit_are_refused(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"data": "d", "val_cases": ["a"], "train_cases": ["a", "b"]}))
    with pytest.raises(ValueError, match="both sides"):
        read_split(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"data": "d", "val_cases": [], "train_cases": ["b"]}))
    with pytest.raises(ValueError, match="val_cases: expected a non-empty list"):
        read_split(tmp_path / "empty.json")
    with pytest.raises(FileNotFoundError, match="split file not found"):
        read_split(tmp_path / "nothing")
    write_volumes(tmp_path / "vol", 3)
    split = make_split(["images/case0.nii.gz", "images/gone.nii.gz"], 0.5, 0, str(tmp_path / "vol"))
    with pytest.raises(ValueError, match="gone.nii.gz"):
        split_datasets(NiftiDataset(tmp_path / "vol"), split)


def test_the_presets_synthetic_val_applies_to_synthetic_training_data_only(tmp_path):
    assert is_builtin_spec("synthetic:4") and is_builtin_spec("synthetic-medical-volume:2:64")
    assert not is_builtin_spec("./synthetic") and not is_builtin_spec("my_folder/")
    preset = load_config("scratch_small")
    assert is_builtin_spec(preset.data.val)
    assert load_config("scratch_small", ["data.train=my_folder/"]).data.val is None  # split my_folder/
    assert load_config(None, ["data.train=my_folder/"]).data.val is None  # the defaults' synthetic val too
    explicit = load_config("scratch_small", ["data.train=my_folder/", "data.val=synthetic:8:64:7"])
    assert explicit.data.val == "synthetic:8:64:7"
    assert load_config("scratch_small", ["data.train=my_folder/", "data.val=val_folder/"]).data.val == "val_folder/"
    with pytest.raises(ValueError, match="data.split=.*needs data.val=null"):
        load_config(None, ["data.split=runs/a/split.json"])


def test_training_on_a_folder_holds_out_images_keeps_the_split_on_resume_and_evaluates_on_it(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    names = write_image_folder(data, 5)
    base = [*TINY_NO_VAL, f"data.train={data}", f"out={out}", "val_images=8"]
    train(load_config("scratch_small", [*base, "steps=1", "max_minutes=0", "fit_steps_to_time=false"]))
    printed = capsys.readouterr().out
    assert f"validating on 1 held-out cases of {data}" in printed
    split = json.loads((out / SPLIT_JSON).read_text())
    assert split["data"] == str(data) and split["seed"] == 0 and split["fraction"] == 0.2
    assert len(split["val_cases"]) == 1 and len(split["train_cases"]) == 4
    assert sorted(split["val_cases"] + split["train_cases"]) == sorted(f"images/{n}" for n in names)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["val"] is None and config["data"]["split"] == str(out / SPLIT_JSON)
    evaluated = lambda: [r.split(",")[0] for r in (out / "eval/per_image.csv").read_text().splitlines()[1:]]  # noqa
    assert evaluated() == [str(data / split["val_cases"][0])]

    # the resumed run reads split.json back rather than drawing again: swap a case and the run follows the file
    swapped = {**split, "val_cases": [split["train_cases"][0]],
               "train_cases": [split["val_cases"][0], *split["train_cases"][1:]]}
    (out / SPLIT_JSON).write_text(json.dumps(swapped))
    train(load_config("scratch_small", [*base, "steps=2", "max_minutes=0", "fit_steps_to_time=false"]))
    assert "resuming" in capsys.readouterr().out
    assert evaluated() == [str(data / swapped["val_cases"][0])]

    # samforge evaluate --split: exactly the run's held-out cases
    code = main(["evaluate", "--checkpoint", str(out / "checkpoints/last.pt"), "--split", str(out),
                 "--out", str(tmp_path / "eval")])
    assert code == 0
    rows = (tmp_path / "eval/per_image.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(data / swapped["val_cases"][0])]


def test_an_explicit_synthetic_val_is_honoured(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    write_image_folder(data, 3)
    train(load_config(None, [*TINY_NO_VAL, f"data.train={data}", "data.val=synthetic:2:64:1000", f"out={out}",
                             "steps=1", "eval_at_end=false"]))
    assert not (out / SPLIT_JSON).exists()
    assert "val data: synthetic:2:64:1000: 2 images" in capsys.readouterr().out


def test_sam2_holds_out_whole_volumes(tmp_path, capsys):
    out = tmp_path / "run"
    small = ["++model.image_size=128", "++model.image_encoder.trunk.embed_dim=16",
             "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]"]
    cfg = load_config(None, [f"out={out}", "model.type=sam2.1_hiera_t",
                             "model.overrides=[" + ",".join(f"'{o}'" for o in small) + "]",
                             "data.train=synthetic-medical-volume:5:64:4:0", "data.val=null", "data.val_split=0.4",
                             "data.num_frames=2", "steps=1", "batch_size=1", "val_images=1", "data.num_workers=0",
                             "sam2_prompts.num_correction_points=1", "optim.warmup_steps=1", "eval_at_end=false"])
    train(cfg)
    split = read_split(out)
    assert len(split.val_cases) == 2 and len(split.train_cases) == 3
    assert all(c.startswith("synthetic-medical-volume:") for c in split.val_cases + split.train_cases)
    assert "validating on 2 held-out cases of synthetic-medical-volume:5:64:4:0" in capsys.readouterr().out
    # 3D evaluation of exactly the held-out volumes
    code = main(["evaluate", "--checkpoint", str(out / "checkpoints/last.pt"), "--volumes",
                 "synthetic-medical-volume:5:64:4:0", "--split", str(out), "--out", str(tmp_path / "eval")])
    assert code == 0
    metrics = json.loads((tmp_path / "eval/volume_metrics.json").read_text())
    assert metrics["num_volumes"] == 2


def test_a_run_saved_before_the_split_settings_existed_resumes(tmp_path):
    import torch

    out = tmp_path / "run"
    train(load_config(None, [*TINY, f"out={out}", "steps=1", "eval_at_end=false"]))
    path = out / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("val_split", "split"):
        del ckpt["config"]["data"][key]
    torch.save(ckpt, path)
    assert train(load_config(None, [*TINY, f"out={out}", "steps=2", "eval_at_end=false"])).step == 2
    with pytest.raises(ValueError, match=r"different \['data'\] \(data: \{'val': \"'synthetic:2:64:1000' -> None"):
        train(load_config(None, [*TINY_NO_VAL, f"out={out}", "data.train=synthetic:6:64", "data.val=null", "steps=3"]))


def test_finetune_without_val_holds_out_cases_of_its_data(tmp_path, monkeypatch):
    import samforge.cli.finetune as finetune_cli

    seen = []
    monkeypatch.setattr(finetune_cli, "train", lambda cfg: seen.append(cfg) or type("O", (), {"out": tmp_path})())
    base = ["finetune", "--base", "vit_b:x.pth", "--mode", "decoder", "--out", str(tmp_path / "r")]
    assert main([*base, "--data", "my_ct/"]) == 0
    assert seen[-1].data.val is None and seen[-1].data.val_split == 0.2
    assert main([*base, "--data", "my_ct/", "--val", "synthetic:4:64", "data.val_split=0.3"]) == 0
    assert seen[-1].data.val == "synthetic:4:64"
    assert main([*base, "--data", "synthetic:8:64"]) == 0  # synthetic training data keeps the synthetic default
    assert seen[-1].data.val == "synthetic:64:256:100000"


def test_a_prefixed_spec_records_cases_relative_to_its_folder_and_survives_a_move(tmp_path):
    from samforge.data.readers import open_dataset
    from samforge.data.split import data_folder
    from samforge.data.synthetic_fundus import write_fundus_layout

    assert data_folder("refuge:/d/REFUGE:rater=all:part=test") == "/d/REFUGE"
    assert data_folder("refuge:/d/a:b") == "/d/a:b" and data_folder("my_folder/") == "my_folder/"
    write_fundus_layout(tmp_path / "a", 4, (64, 64), seed=0)
    spec = f"refuge:{tmp_path / 'a'}:rater=all"
    dataset = open_dataset(spec)
    keys = case_keys(dataset, spec)
    assert len(keys) == 28 and len(set(keys)) == 4  # 7 raters' samples of each case share it
    assert set(keys) == {f"Training-400/fundus0000{n}/fundus0000{n}.jpg" for n in range(4)}
    split = make_split(keys, 0.25, seed=0, data=spec)
    # a split written before such specs were made relative (full paths) still reads where the data has not moved
    old = make_split([str(tmp_path / "a" / k) for k in keys], 0.25, seed=0, data=spec)
    assert [len(v) for v in split_datasets(dataset, old, spec)] == [21, 7]
    (tmp_path / "a").rename(tmp_path / "moved")
    moved = f"refuge:{tmp_path / 'moved'}"
    train_view, val_view = split_datasets(open_dataset(moved), split, moved)
    assert len(train_view) == 3 and len(val_view) == 1
    assert Path(val_view.names[0]).parent.name + "/" in split.val_cases[0]

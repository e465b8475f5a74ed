"""SAM 2 through the trainer: a run on synthetic medical volumes (clips of slices) with its outputs, resume, a
LoRA fine-tune from the run's checkpoint through ``samforge finetune``, and images as one-frame clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from samforge.cli.main import main
from samforge.models.checkpoint import read_checkpoint
from samforge.models.sam2 import build_sam2
from samforge.train.config import load_config
from samforge.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["++model.image_size=128", "++model.image_encoder.trunk.embed_dim=16",
         "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]"]
QUICK = ["steps=2", "batch_size=1", "val_every=2", "log_every=1", "checkpoint_every=1", "val_images=1",
         "data.num_workers=0", "sam2_prompts.num_correction_points=1", "optim.warmup_steps=1"]


def overrides(out, *extra):
    model = "model.overrides=[" + ",".join(f"'{o}'" for o in SMALL) + "]"
    return [f"out={out}", "model.type=sam2.1_hiera_t", model, *QUICK, *extra]


def test_train_on_volume_clips_then_resume(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, overrides(out, "data.train=synthetic-medical-volume:3:64:5:0",
                                      "data.val=synthetic-medical-volume:1:64:5:9", "data.num_frames=3"))
    outcome = train(cfg)
    assert outcome.step == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train_lines] == [1, 2]
    assert {"loss", "focal", "dice", "iou", "class", "miou_last_round", "clips_skipped"} <= set(train_lines[0])
    val = [x for x in lines if x["split"] == "val"][0]
    assert {"box_miou", "point_miou", "loss"} <= set(val) and 0 <= val["box_miou"] <= 1
    for name in ("curves.png", "overlays/val_step000002.png", "eval/volume_metrics.json", "eval/overlay.png",
                 "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "eval/volume_metrics.json").read_text())  # volumes: 3D Dice
    assert 0 <= metrics["dice_3d"] <= 1 and metrics["num_volumes"] == 1
    state, extras = read_checkpoint(out / "checkpoints/last.pt")
    assert extras["sam_config"]["family"] == "sam2" and extras["sam_config"]["config_name"] == "sam2.1_hiera_t"
    # resume: the same run with more steps continues from step 2
    cfg = load_config(None, overrides(out, "data.train=synthetic-medical-volume:3:64:5:0",
                                      "data.val=synthetic-medical-volume:1:64:5:9", "data.num_frames=3",
                                      "eval_at_end=false", "steps=3"))
    assert train(cfg).step == 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == [1, 2, 3]

    # a LoRA fine-tune starting from that run's checkpoint (its model recorded there), through the CLI
    ft = tmp_path / "ft"
    rc = main(["finetune", "--base", str(out / "checkpoints/last.pt"), "--data", "synthetic-medical-volume:2:64:4:3",
               "--val", "synthetic-medical-volume:1:64:4:8", "--mode", "lora", "--rank", "2", "--out", str(ft),
               *QUICK, "data.num_frames=2", "eval_at_end=false"])
    assert rc == 0
    assert (ft / "adapter.safetensors").is_file()
    ft_state, _ = read_checkpoint(ft / "checkpoints/last.pt")
    assert any("lora_A" in k for k in ft_state)


def test_video_clips_end_with_j_and_f(tmp_path):
    out = tmp_path / "video"
    train(load_config(None, overrides(out, "data.train=synthetic-video:2:64:3:0", "data.val=synthetic-video:1:64:3:9",
                                      "data.num_frames=3", "steps=1")))
    metrics = json.loads((out / "eval/video_metrics.json").read_text())  # videos: DAVIS J&F, not 3D Dice
    assert {"J", "F", "J&F"} <= set(metrics) and not (out / "eval/volume_metrics.json").exists()


def test_sam2_on_images_as_one_frame_clips(tmp_path):
    out = tmp_path / "img"
    cfg = load_config(None, overrides(out, "data.train=synthetic:3:64", "data.val=synthetic:1:64:50",
                                      "finetune.mode=decoder"))
    outcome = train(cfg)
    assert outcome.step == 2
    assert (out / "eval/metrics.json").is_file()  # images: the image protocols, as for SAM
    frozen = [p.requires_grad for n, p in outcome.model.named_parameters() if n.startswith("image_encoder.")]
    assert frozen and not any(frozen)


def test_bad_sam2_settings(tmp_path):
    with pytest.raises(ValueError, match="model.arch"):
        train(load_config(None, overrides(tmp_path / "x", "model.arch={encoder_depth: 2}")))
    with pytest.raises(ValueError, match="num_frames"):
        load_config(None, overrides(tmp_path / "x", "data.num_frames=0"))
    with pytest.raises(ValueError, match="short_clips"):
        load_config(None, overrides(tmp_path / "x", "data.short_clips=drop"))


def test_two_processes_train_sam2_on_clips_and_agree(tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank draws its own clips and prompt plan (a different graph per
    rank: other conditioning frames, other numbers of clicks), and the weights still agree after the steps."""
    script = tmp_path / "ddp.py"
    cfg = overrides(tmp_path / "ddp", "data.train=synthetic-medical-volume:4:64:5:0",
                    "data.val=synthetic-medical-volume:1:64:5:9", "data.num_frames=3", "steps=2", "eval_at_end=false",
                    "sam2_prompts.num_correction_points=2")
    script.write_text(
        "import os, sys, torch\n"
        "from samforge.train.config import load_config\n"
        "from samforge.train.trainer import train\n"
        f"outcome = train(load_config(None, {cfg!r}))\n"
        "torch.save(outcome.model.state_dict(), f\"{sys.argv[1]}/rank{os.environ['RANK']}.pt\")\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", str(script),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)  # the trainer's initialisation (seed 0)
    start = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=SMALL).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained (not two untouched copies)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.equal(ckpt["model"][k], a[k]) for k in a)

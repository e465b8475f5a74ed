"""The trainer end to end with a tiny model: the loss falls, the run folder holds what it should, a run killed
with SIGKILL resumes and continues the same run, and two torchrun processes agree on the weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from samforge.train.config import load_config
from samforge.train.trainer import train

TINY = [
    "model.type=vit_small",
    "model.arch={image_size: 64, patch_size: 8, encoder_embed_dim: 64, encoder_depth: 2, encoder_num_heads: 2,"
    " encoder_global_attn_indexes: [1], window_size: 4, prompt_embed_dim: 32, decoder_num_heads: 2,"
    " decoder_mlp_dim: 64, iou_head_hidden_dim: 32}",
    "data.train=synthetic:6:64",
    "data.val=synthetic:2:64:1000",
    "data.num_workers=0",
    "data.max_objects=3",
    "batch_size=2",
    "precision=fp32",
    "val_images=2",
    "optim.warmup_steps=2",
    "optim.lr=0.003",
    "prompts.correction_rounds=1",
    "prompts.mask_only_rounds=1",
]


def read_metrics(out: Path, split: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == split]


def test_short_run_loss_falls_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [*TINY, f"out={out}", "steps=40", "log_every=1", "val_every=20", "checkpoint_every=20"])
    outcome = train(cfg)
    assert outcome.step == 40 and outcome.out == out
    losses = [r["loss"] for r in read_metrics(out, "train")]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8, losses
    val = read_metrics(out, "val")
    assert [r["step"] for r in val] == [20, 40] and all(0 <= r["box_miou"] <= 1 for r in val)
    for name in ("config.yaml", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt", "eval/metrics.json",
                 "eval/per_image.csv", "eval/best_worst.png", "overlays/val_step000040.png"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["config"]["steps"] == 40
    assert set(json.loads((out / "eval" / "metrics.json").read_text())) >= {"box", "interactive", "num_objects"}
    # our checkpoint loads back as a model with its own configuration
    from samforge.models.build import load_sam

    model = load_sam(out / "checkpoints" / "last.pt")
    assert model.image_encoder.img_size == 64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), outcome.model.state_dict().values()))
    # ... and `samforge predict` takes it without --model-type
    from samforge.cli.main import main
    from samforge.data.synthetic import make_scene
    from samforge.utils.atomic import save_png

    save_png(make_scene(5, image_size=(48, 80)).image, tmp_path / "img.png")
    code = main(["predict", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--image", str(tmp_path / "img.png"),
                 "--box", "5,5,40,30", "--out", str(tmp_path / "pred")])
    assert code == 0 and (tmp_path / "pred" / "overlay.png").is_file()


def test_resume_refuses_a_different_run(tmp_path):
    out = tmp_path / "run"
    train(load_config(None, [*TINY, f"out={out}", "steps=2", "eval_at_end=false"]))
    with pytest.raises(ValueError, match="different"):
        train(load_config(None, [*TINY, f"out={out}", "steps=4", "batch_size=3"]))


def test_fit_steps_to_time_fits_the_schedule_in_the_budget_and_keeps_it_on_resume(tmp_path):
    """steps=100000 cannot fit in 6 seconds: the run measures its pace, shortens the schedule to what fits (the
    logged learning rates follow a cosine of that length), and a rerun keeps that length (no second fit)."""
    from samforge.train.optim import lr_factor

    out = tmp_path / "fit"
    overrides = [*TINY, f"out={out}", "steps=100000", "fit_steps_to_time=true", "log_every=1", "val_every=100000",
                 "checkpoint_every=5", "eval_at_end=false"]
    first = train(load_config(None, [*overrides, "max_minutes=0.1"]))
    planned = first.planned_steps
    assert 10 <= planned < 100000 and first.step <= planned
    cfg = load_config(None, [*overrides, "max_minutes=0.1"])
    for row in read_metrics(out, "train"):
        if row["step"] >= 10:  # fitted after the first 10 steps; lr is the next step's
            assert row["lr"] == pytest.approx(cfg.optim.lr * lr_factor(row["step"], planned, cfg.optim), rel=1e-6)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["scheduler"]["lr_lambdas"][0]["total_steps"] == planned
    again = train(load_config(None, [*overrides, "max_minutes=30"]))  # a longer budget: the run goes on, no refit
    assert again.planned_steps == planned and again.step == planned


def command(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "samforge", "train", *TINY, f"out={out}", f"steps={steps}", "log_every=1",
            "checkpoint_every=1", "val_every=1000", "eval_at_end=false"]


def test_sigkill_then_rerun_continues_the_same_run(tmp_path):
    steps = 14
    reference = tmp_path / "reference"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(reference, steps), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 0 < killed_at < steps, "the kill must land mid-run"
    done = subprocess.run(command(out, steps), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming {out} from step {killed_at}" in done.stdout
    resumed, ref = read_metrics(out, "train"), read_metrics(reference, "train")
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))  # no gap, no repeat
    for a, b in zip(resumed, ref):  # the same run: same data, prompts and weights at every step
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6), (a["step"], a["loss"], b["loss"])
    final = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    ref_final = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert final["step"] == steps
    for k, v in ref_final["model"].items():
        assert torch.allclose(final["model"][k], v, atol=1e-5), k


def test_two_processes_agree_on_the_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, torch\n"
        "from samforge.train.config import load_config\n"
        "from samforge.train.trainer import train\n"
        "import torch.distributed as dist, os\n"
        f"cfg = load_config(None, {TINY!r} + ['out={tmp_path / 'ddp'}', 'steps=3', 'eval_at_end=false'])\n"
        "outcome = train(cfg)\n"
        "torch.save(outcome.model.state_dict(), f\"{sys.argv[1]}/rank{os.environ['RANK']}.pt\")\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(script),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    start = load_config(None, TINY)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["config"]["batch_size"] == start.batch_size
    assert all(torch.equal(ckpt["model"][k], a[k]) for k in a)


def test_learned_loss_weighting_trains_and_resumes(tmp_path):
    out = tmp_path / "run"
    overrides = [*TINY, f"out={out}", "loss.learned_weighting=true", "val_every=3", "checkpoint_every=3",
                 "eval_at_end=false"]
    first = train(load_config(None, [*overrides, "steps=3"]))
    log_vars = first.model.state_dict()  # the Sam itself holds no loss weights
    assert not any("log_vars" in k for k in log_vars)
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["loss"]["weighting.log_vars"]
    assert saved.abs().sum() > 0  # they trained
    train(load_config(None, [*overrides, "steps=4"]))  # resumes from step 3 with the learned weights
    resumed = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["step"] == 4 and not torch.equal(resumed["loss"]["weighting.log_vars"], saved)

"""Bad input, as a hostile user gives it, at every face but the predictors' prompts (test_predictor_inputs.py) and
the annotator (test_annotate_api.py): each case gets a one-line message that says what was expected and what was
given; kills leave nothing behind that stops the next run."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_run import TINY

from samforge.cli import synth as synth_cli
from samforge.cli import track as track_cli
from samforge.cli.main import main
from samforge.data.synthetic import make_scene
from samforge.models.build import build_sam, sam_model_registry
from samforge.models.load import load_model
from samforge.train.config import load_config
from samforge.train.trainer import train
from samforge.utils.atomic import remove_stale_temporaries, save_png

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    save_png(make_scene(1, image_size=(48, 64)).image, path)
    return path


@pytest.fixture(scope="module")
def small_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_sam("vit_small").state_dict()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_state_dict) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "vit_small.pth"
    torch.save(small_state_dict, path)
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def read_only_folder(tmp_path: Path) -> Path:
    """A folder nobody may write in: permissions for a normal user; for root (who ignores them) sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path("/sys/kernel")


# ------------------------------------------------------------------------------------- --out paths
def jobs(tmp: Path, image: Path, checkpoint: Path) -> dict[str, list[str]]:
    """Each writing subcommand with valid inputs; ``--out`` (or ``out=``) appended by the test."""
    images = tmp / "images"
    if not images.is_dir():
        images.mkdir()
        save_png(make_scene(2, image_size=(48, 64)).image, images / "a.png")
    clip = tmp / "clip"
    clip.mkdir(exist_ok=True)
    save_png(make_scene(3, image_size=(48, 64)).image, clip / "00000.png")
    return {
        "predict": ["predict", "--model", "vit_small", "--image", str(image), "--point", "10,10", "--out"],
        "segment-everything": ["segment-everything", str(images), "--model", "vit_small", "--out"],
        "synth": ["synth", "--num-images", "1", "--size", "64", "--out"],
        "train": ["train", *TINY, "steps=1", "--out"],
        "finetune": ["finetune", "--base", f"vit_small:{checkpoint}", "--data", "synthetic:2:64", "--mode",
                     "decoder", "--out"],
        "evaluate": ["evaluate", "--model", "vit_small", "--data", "synthetic:2:64", "--out"],
        "track": ["track", "--video", str(clip), "--point", "5,5", "--model", "sam2.1_hiera_t", "--out"],
        "annotate": ["annotate", str(images), "--model", "vit_small", "--out"],
        "quickstart": ["quickstart", "--out"],
        "export": ["export", "onnx", "--checkpoint", str(checkpoint), "--out"],
    }


@pytest.mark.parametrize("job", ["predict", "segment-everything", "synth", "train", "finetune", "evaluate", "track",
                                 "annotate", "quickstart", "export"])
def test_out_that_is_a_file_or_read_only_is_one_line(tmp_path, image_png, checkpoint, capsys, job):
    argv = jobs(tmp_path, image_png, checkpoint)[job]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, said in ((a_file, "expected a folder (existing or to be created), got an existing file"),
                      (a_file / "below", "expected a writable folder, but a part of the path is a file"),
                      (read_only_folder(tmp_path) / "new", "expected a writable folder, but")):
        assert main([*argv, str(out)]) == 2
        err = error_line(capsys)
        assert f"samforge {job}: error:" in err and str(out) in err and said in err, err


def test_lora_merge_out_is_checked(tmp_path, checkpoint, capsys):
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"not read: the --out check comes first")
    folder = tmp_path / "merged.pth"
    folder.mkdir()
    base = ["lora", "merge", "--base", f"vit_small:{checkpoint}", "--adapter", str(adapter), "--out"]
    assert main([*base, str(folder)]) == 2
    assert "expected a file to write, got an existing folder" in error_line(capsys)
    (tmp_path / "f").write_text("x")
    assert main([*base, str(tmp_path / "f" / "m.pth")]) == 2
    err = error_line(capsys)
    said = "expected a folder (existing or to be created), got an existing file"
    assert f"--out's folder {tmp_path / 'f'}: {said}" in err


def failing_write(error: OSError):
    def write_scenes(*args, **kwargs):
        raise error
    return write_scenes


def test_os_errors_become_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "images" / "00000.png"))
    monkeypatch.setattr(synth_cli, "write_scenes", failing_write(full))
    argv = ["synth", "--num-images", "1", "--size", "64", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = error_line(capsys)
    assert str(tmp_path / "images" / "00000.png") in err and "expected a writable folder" in err
    assert "disk is full" in err
    with pytest.raises(OSError, match="No space"):  # real problems keep their traceback on request
        main(["--debug", *argv])
    with pytest.raises(OSError, match="No space"):
        main([*argv[:1], "--debug", *argv[1:]])
    monkeypatch.setenv("SAMFORGE_DEBUG", "1")
    with pytest.raises(OSError, match="No space"):
        main(argv)
    monkeypatch.setenv("SAMFORGE_DEBUG", "0")
    with pytest.raises(ValueError, match="--size"):  # --debug re-raises the one-line errors too
        main(["--debug", "synth", "--size", "100000", "--out", str(tmp_path)])
    # an OSError on no path is not a user's path problem: it stays a traceback
    monkeypatch.setattr(synth_cli, "write_scenes", failing_write(OSError("a bug somewhere")))
    with pytest.raises(OSError, match="a bug somewhere"):
        main(argv)


@pytest.mark.parametrize("argv, said", [
    (["--size", "100000"], "--size must be between 32 and 4096 pixels per side (H or H,W), got '100000'"),
    (["--size", "64,100000"], "got '64,100000'"),
    (["--size", "8"], "got '8'"),
    (["--num-images", "1000000"], "--num-images must be in [1, 100000], got 1000000"),
    (["--video", "2", "--frames", "5000"], "--frames in [1, 1000], got 2 and 5000"),
    (["--video", "1", "--frames", "1000", "--size", "4096"], "at most 1073741824 pixels per clip"),
])
def test_synth_refuses_sizes_it_cannot_hold_before_allocating(tmp_path, capsys, argv, said):
    assert main(["synth", *argv, "--out", str(tmp_path / "s")]) == 2
    assert said in error_line(capsys)
    assert not (tmp_path / "s").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("content, said", [
    (b"hello, this is a text file\n", "is not a checkpoint: expected a PyTorch weights file"),
    (b"\x80\x02.", "is not a checkpoint: expected a PyTorch weights file, and reading it as one failed"),
])
def test_a_file_that_is_no_checkpoint_is_named(tmp_path, capsys, content, said):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    for load in (lambda: load_model(path), lambda: sam_model_registry["vit_small"](checkpoint=path)):
        with pytest.raises(ValueError) as e:
            load()
        assert str(e.value).startswith(f"could not read checkpoint {path}: it is not a checkpoint")
        assert said in str(e.value)
    save_png(make_scene(1, image_size=(48, 64)).image, tmp_path / "img.png")
    assert main(["predict", "--checkpoint", str(path), "--image", str(tmp_path / "img.png"), "--point", "5,5",
                 "--out", str(tmp_path / "out")]) == 2
    err = error_line(capsys)
    assert str(path) in err and "is not a checkpoint" in err


@pytest.mark.parametrize("key, shape", [("image_encoder.pos_embed", (16, 256)),
                                        ("image_encoder.pos_embed", ()),
                                        ("image_encoder.patch_embed.proj.weight", (256,))])
def test_wrong_rank_encoder_weights_are_named(tmp_path, small_state_dict, key, shape):
    state = dict(small_state_dict)
    state[key] = torch.zeros(shape)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    for model_type in (None, "vit_small"):
        with pytest.raises(ValueError, match=re.escape(f"{key} must be a 4-d tensor") + ".* got shape "
                           + re.escape(str(tuple(shape)))):
            load_model(path, model_type)


def test_nan_and_inf_weights_are_refused_with_their_keys(tmp_path, small_state_dict):
    state = {k: v.clone() for k, v in small_state_dict.items()}
    state["mask_decoder.iou_token.weight"][0, 0] = float("nan")
    state["image_encoder.neck.0.weight"].view(-1)[5] = float("-inf")
    path = tmp_path / "nan.pth"
    torch.save({"model": state}, path)
    for load in (lambda: load_model(path), lambda: load_model(path, "vit_small"),
                 lambda: sam_model_registry["vit_small"](checkpoint=path)):
        with pytest.raises(ValueError) as e:
            load()
        msg = str(e.value)
        assert str(path) in msg and "NaN or inf weights in 2 tensors, expected finite numbers" in msg
        assert "image_encoder.neck.0.weight, mask_decoder.iou_token.weight" in msg


# ------------------------------------------------------------------------------------------ track
@pytest.fixture()
def small_sam2(monkeypatch):
    from sam2_oracle import SMALL_OVERRIDES

    from samforge.models.sam2 import build_sam2

    def load(args):
        torch.manual_seed(0)
        return build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))

    monkeypatch.setattr(track_cli, "load_model", load)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from test_sam2_video import write_clip

    return Path(write_clip(tmp_path_factory.mktemp("clip"), num_frames=3))  # 96 x 128 frames


@pytest.mark.parametrize("entry, said", [
    ({"obj_id": 1, "frame": "zero", "points": [[5, 5]]}, "entry 0: frame must be a whole number, got 'zero'"),
    ({"obj_id": 1, "frame": 1.5, "points": [[5, 5]]}, "entry 0: frame must be a whole number, got 1.5"),
    ({"obj_id": [1], "points": [[5, 5]]}, "entry 0: obj_id must be a whole number, got [1]"),
    ({"obj_id": 1, "points": [[5, "a"]]}, "entry 0: points must be a non-empty list of [x, y] numbers"),
    ({"obj_id": 1, "points": [5, 5]}, "entry 0: points must be a non-empty list of [x, y] numbers"),
    ({"obj_id": 1, "points": [[5, 5]], "labels": [1, 0]}, "entry 0: labels must be a list with one label per point"),
    ({"obj_id": 1, "points": [[5, 5]], "labels": [0.7]}, "entry 0: labels must be a whole number, got 0.7"),
    ({"obj_id": 1, "points": [[5, 5]], "labels": [2]}, "entry 0: labels must be 1 (foreground) or 0 (background)"),
    ({"obj_id": 1, "box": [1, 2, 3]}, "entry 0: box must be [x0, y0, x1, y1] (four numbers), got [1, 2, 3]"),
])
def test_track_prompts_file_names_the_field_and_entry(tmp_path, clip_dir, capsys, entry, said):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([entry]))
    assert main(["track", "--video", str(clip_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o")]) == 2
    err = error_line(capsys)
    assert str(prompts) in err and said in err, err


@pytest.mark.parametrize("prompt, said", [
    (["--point", "5000,5000"], "must lie inside the image (0 <= x <= 128, 0 <= y <= 96)"),
    (["--point=-1,10"], "outside: [[-1.0, 10.0]]"),
    (["--box", "50,10,20,40"], "x0 <= x1 and y0 <= y1, got [[50.0, 10.0, 20.0, 40.0]]"),
    (["--box", "200,150,300,250"], "must lie inside the image"),
    (["--point", "5,5,0.5"], "labels must be 1 (foreground) or 0 (background)"),
    (["--point", "5,5", "--frame", "7"], "frame 7 is out of range: expected 0 to 2 (the clip has 3 frames)"),
])
def test_track_refuses_prompts_outside_the_frame_and_inverted_boxes(tmp_path, clip_dir, small_sam2, capsys,
                                                                    prompt, said):
    out = tmp_path / "o"
    assert main(["track", "--video", str(clip_dir), *prompt, "--model", "sam2.1_hiera_t", "--out", str(out)]) == 2
    err = error_line(capsys)
    assert "prompt 0 (object 1)" in err and said in err, err
    assert not (out / "masks").exists()


# ---------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("override, said", [
    ("val_images=0", "val_images must be a finite number >= 1, got 0"),
    ("max_minutes=-5", "max_minutes must be a finite number >= 0, got -5.0"),
    ("max_minutes=nan", "max_minutes must be a finite number >= 0, got nan"),
    ("data.num_workers=-1", "data.num_workers must be a finite number >= 0, got -1"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio must be a finite number in [0, 1], got 2.0"),
    ("optim.step_gamma=0", "optim.step_gamma must be a finite number > 0, got 0.0"),
    ("optim.betas=[0.9,1.5]", "optim.betas must be two numbers in [0, 1), got [0.9, 1.5]"),
    ("optim.step_milestones=[0.9,0.5]", "optim.step_milestones must be increasing fractions"),
    ("loss.dice=-1", "loss.dice must be a finite number >= 0, got -1.0"),
    ("prompts.correction_rounds=-2", "prompts.correction_rounds must be a finite number >= 0, got -2"),
    ("seed=-1", "seed must be a finite number >= 0, got -1"),
    ("model.type=vit_tiny", "model.type must be one of ['checkpoint', 'default', 'vit_h'"),
])
def test_train_settings_are_checked_when_the_config_loads(tmp_path, capsys, override, said):
    with pytest.raises(ValueError, match=None) as e:
        load_config(None, [*TINY, override])
    assert said in str(e.value)
    assert main(["train", *TINY, override, "--out", str(tmp_path / "run")]) == 2
    assert said in error_line(capsys)
    assert not (tmp_path / "run").exists()  # no step ran, nothing was written
    assert load_config(None, [*TINY, "max_minutes=0"]).max_minutes == 0  # 0 = no limit


def tiny_run(out: Path, steps: int, *extra: str):
    return train(load_config(None, [*TINY, f"out={out}", f"steps={steps}", "log_every=1", "checkpoint_every=1",
                                    "val_every=1", "eval_at_end=false", *extra]))


def metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


def test_torn_last_metrics_line_is_skipped_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_run(out, 2)
    metrics = out / "metrics.jsonl"
    with open(metrics, "a") as f:  # what a kill in the middle of an append leaves
        f.write('{"step": 3, "split": "train", "loss": 0.5')
    assert tiny_run(out, 3).step == 3
    printed = capsys.readouterr().out
    assert f"{metrics}: skipping its last line" in printed and "torn by a killed run" in printed
    assert metric_steps(out) == [1, 2, 3]


def test_torn_line_inside_metrics_is_an_error_naming_file_and_line(tmp_path):
    out = tmp_path / "run"
    tiny_run(out, 2)
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1][:20]
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{metrics}: line 2 is not a metrics record"):
        tiny_run(out, 3)


KILLED_WRITER = """
import sys, time
from samforge.utils.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    print("written", flush=True)
    time.sleep(600)
"""


def killed_writer_temporary(target: Path) -> Path:
    """Start a process that writes ``target`` atomically, SIGKILL it mid-write; returns the temporary it left."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.tmp-{proc.pid}-")]
    assert len(left) == 1
    return left[0]


def test_a_run_removes_the_temporaries_that_killed_runs_left_and_only_those(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [killed_writer_temporary(out / "checkpoints" / "last.pt"), killed_writer_temporary(out / "metrics.jsonl")]
    live = out / "checkpoints" / f".last.pt.tmp-{os.getppid()}-00aa11bb"  # a writer that still runs
    foreign = [out / "checkpoints" / ".last.pt.tmp-notours", out / ".notes.txt.tmp-1-00aa11bb", out / "keep.txt"]
    for p in (live, *foreign):
        p.write_bytes(b"x")
    tiny_run(out, 1)
    printed = capsys.readouterr().out
    for p in stale:
        assert not p.exists() and f"removed {p}, a temporary file left by a killed run" in printed
    assert live.exists() and all(p.exists() for p in foreign)


def test_own_temporaries_are_kept_while_this_process_may_write_them(tmp_path):
    mine = tmp_path / f".last.pt.tmp-{os.getpid()}-00aa11bb"
    mine.write_bytes(b"x")  # written after this process started: maybe being written now
    assert remove_stale_temporaries(tmp_path) == [] and mine.exists()
    old = time.time() - 10 ** 6
    os.utime(mine, (old, old))  # older than this process: a previous process that had our pid
    assert remove_stale_temporaries(tmp_path) == [mine] and not mine.exists()


def test_a_truncated_last_checkpoint_falls_back_to_best(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_run(out, 2)
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    best_step = torch.load(best, weights_only=True)["step"]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    assert tiny_run(out, 3).step == 3
    printed = capsys.readouterr().out
    assert f"could not read training checkpoint {last}" in printed
    assert f"resuming from best.pt instead (step {best_step})" in printed
    assert metric_steps(out) == list(range(1, 4))  # no step twice: lines after best's step were dropped
    last.write_bytes(b"")
    best.write_bytes(b"junk")
    with pytest.raises(ValueError, match=rf"cannot resume: .*{last}.*and the fallback {best} is not usable"):
        tiny_run(out, 4)


# ---------------------------------------------------------------------------------------- predictors
def test_multimask_output_must_be_a_bool(image_png):
    from PIL import Image
    from sam2_oracle import SMALL_OVERRIDES

    from samforge.models.sam2 import build_sam2
    from samforge.predict.predictor import SamPredictor
    from samforge.predict.sam2_predictor import SAM2ImagePredictor

    image = np.asarray(Image.open(image_png).convert("RGB"))
    torch.manual_seed(0)
    sam2 = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))
    for predictor in (SamPredictor(build_sam("vit_small")), SAM2ImagePredictor(sam2)):
        predictor.set_image(image)
        for value in ("no", 0, None):
            with pytest.raises(TypeError, match=rf"multimask_output must be True or False, got {value!r}"):
                predictor.predict(np.array([[10, 10]]), np.array([1]), multimask_output=value)
        with pytest.raises(TypeError, match="return_logits must be True or False, got 'yes'"):
            predictor.predict(np.array([[10, 10]]), np.array([1]), return_logits="yes")
        masks, _, _ = predictor.predict(np.array([[10, 10]]), np.array([1]), multimask_output=np.bool_(False))
        assert masks.shape[0] == 1


def test_segment_everything_removes_its_stale_temporaries(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    save_png(make_scene(4, image_size=(48, 64)).image, images / "a.png")
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    stale = [killed_writer_temporary(out / "masks" / "a.json"), killed_writer_temporary(out / "annotations.json")]
    live = out / f".annotations.json.tmp-{os.getppid()}-00aa11bb"
    live.write_bytes(b"x")
    assert main(["segment-everything", str(images), "--model", "vit_small", "--points-per-side", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for p in stale:
        assert not p.exists() and f"removed {p.name}, a temporary file left by a killed run" in printed
    assert live.exists() and (out / "masks" / "a.json").is_file()

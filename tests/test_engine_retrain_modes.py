"""The data engine's retrain modes (decoder, lora, full) and its keep-best validation: what each mode trains, the
round's model loading back as the model that was trained, the best validated weights kept whatever the mode trains,
the retrain job's held-out images recorded, and the mode named wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samforge.cli.engine_annotate import base_round
from samforge.cli.main import main
from samforge.data.sample import Sample
from samforge.data.synthetic import make_scene
from samforge.engine import retrain_job
from samforge.engine.retrain import run_retrain
from samforge.engine.retrain_job import RetrainSettings, retrain_round
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, current_round
from samforge.engine.simulate import SimulateSettings
from samforge.models.build import build_sam
from samforge.models.lora import LORA_KEY, has_lora
from samforge.predict.predictor import SamPredictor

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]

MODES = ("decoder", "lora", "full")
BASE = ModelRef("vit_small")
HW = (64, 64)


def samples(count: int, first: int = 0) -> list[Sample]:
    scenes = [make_scene(first + i, image_size=HW, num_objects=2) for i in range(count)]
    return [Sample(sc.image, sc.masks, f"s{first + i}.png") for i, sc in enumerate(scenes)]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def assert_lists_modes(err: str) -> None:
    """argparse's refusal of an unknown mode names it and the known ones (quoted or not, by Python version)."""
    line = next(x for x in err.splitlines() if "invalid choice" in x)
    assert "'partial'" in line and all(m in line.split("choose from")[1] for m in MODES), line


@pytest.mark.parametrize("mode", MODES)
def test_what_each_mode_trains(mode, tmp_path):
    torch.manual_seed(0)
    model = build_sam("vit_small")
    before = weights(model)
    cache = tmp_path / "cache" if mode == "decoder" else None
    result = run_retrain(model, samples(2), 2, cache, lr=1e-3, mode=mode, recipe="medsam")
    after = weights(model)
    assert result.mode == mode and result.steps_done == 2 and not model.training
    assert not has_lora(model) and set(after) == set(before)  # lora's adapters are folded in: a plain SAM again
    assert model.image_encoder.checkpoint_blocks == 0  # inference as a model loaded from disk
    assert changed(before, after, "mask_decoder.")
    encoder = changed(before, after, "image_encoder.")
    if mode == "decoder":
        assert not encoder and (tmp_path / "cache").is_dir()
    elif mode == "lora":  # the adapted Q and V of each block's fused qkv, nothing else of the encoder
        assert encoder == {f"image_encoder.blocks.{i}.attn.qkv.weight" for i in range(len(model.image_encoder.blocks))}
        assert not changed(before, after, "prompt_encoder.")
        k = slice(before[next(iter(encoder))].shape[0] // 3, 2 * before[next(iter(encoder))].shape[0] // 3)
        assert all(torch.equal(before[name][k], after[name][k]) for name in encoder)  # K is not adapted
    else:
        assert "image_encoder.patch_embed.proj.weight" in encoder and len(encoder) > 2 * len(model.image_encoder.blocks)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < result.trainable <= total and (result.trainable == total) == (mode == "full")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lr, best", [(1e-3, "between"), (3e-2, "start")])  # seeded: where the lowest loss falls
def test_keep_best_restores_the_best_weights_of_each_mode(mode, lr, best, tmp_path):
    torch.manual_seed(1)
    model = build_sam("vit_small")
    data = samples(3)
    cache = tmp_path / "cache" if mode == "decoder" else None
    before = weights(model)
    result = run_retrain(model, data[:2], 6, cache, lr=lr, mode=mode, recipe="medsam", val_samples=data[2:],
                         val_every=1)
    assert [s for s, _ in result.val_losses] == list(range(7))
    best_step, best_loss = min(result.val_losses, key=lambda t: t[1])
    assert result.kept_step == best_step and (0 < best_step < 6 if best == "between" else best_step == 0)
    unchanged = all(torch.equal(v, before[k]) for k, v in weights(model).items())
    assert unchanged == (best_step == 0)  # kept step 0: the model exactly as it came (lora: zero adapters folded in)
    # the weights kept are those that scored: validating them again (a retrain too slow to move them) gives that loss
    again = run_retrain(model, data[:2], 1, cache, lr=1e-12, mode=mode, recipe="medsam", val_samples=data[2:])
    assert again.val_losses[0][1] == pytest.approx(best_loss, rel=1e-5)


@pytest.mark.parametrize("mode", ("lora", "full"))
def test_the_round_loads_back_and_predicts_as_the_trained_model(mode, tmp_path, monkeypatch):
    work = tmp_path / "work"
    assert base_round(work, BASE) == 0
    trained = []

    def keep_model(**kwargs):
        trained.append(kwargs["model"])
        return run_retrain(**kwargs)

    monkeypatch.setattr(retrain_job, "run_retrain", keep_model)
    data = samples(3)
    done = retrain_round(work, data, RetrainSettings(mode=mode, steps=2, lr=1e-3), say=lambda m: None)
    assert done.index == 1 and current_round(work).index == 1 and done.metrics["mode"] == mode
    saved = torch.load(done.folder / "model.pt", weights_only=True)["model"]
    assert not any(LORA_KEY in k for k in saved)  # lora: the adapters are folded into the round's weights
    base = load_model_ref(BASE).state_dict()
    assert any(not torch.equal(saved[k], base[k]) for k in base if k.startswith("image_encoder."))

    # the job's keep-best validation: one of the three images held out (seeded), recorded with its losses
    m = done.metrics
    assert len(m["heldout_images"]) == 1 and sorted(m["train_images"] + m["heldout_images"]) == [s.name for s in data]
    assert [s for s, _ in m["val_losses"]] == [0, 1, 2] and m["kept_step"] in (0, 1, 2)
    assert m["kept_step"] == min(m["val_losses"], key=lambda t: t[1])[0] and "heldout_after" in m
    assert json.loads((done.folder / "metrics.json").read_text())["heldout_images"] == m["heldout_images"]

    loaded = load_model_ref(done.model.resolved(done.folder))
    model = trained[0]
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    outputs = []
    for m in (model, loaded):
        predictor = SamPredictor(m)
        predictor.set_image(data[0].image)
        outputs.append(predictor.predict(np.array([[30.0, 30.0]]), np.array([1]), multimask_output=True))
    assert np.array_equal(outputs[0][0], outputs[1][0]) and np.allclose(outputs[0][1], outputs[1][1], atol=1e-6)


def test_the_job_holds_nothing_out_of_one_image_and_splits_the_same_way_each_time(tmp_path):
    work = tmp_path / "work"
    base_round(work, BASE)
    one = retrain_round(work, samples(1), RetrainSettings(steps=2), say=lambda m: None)
    assert one.metrics["heldout_images"] == [] and one.metrics["val_losses"] == []
    assert one.metrics["kept_step"] == one.metrics["steps_done"] == 2  # no validation: the last step is kept
    names = [s.name for s in samples(5)]
    splits = [retrain_job.split_labelled(names, 0.25, 3, tmp_path) for _ in range(2)]
    assert splits[0] == splits[1] and len(splits[0][1]) == 1  # 0.25 of 5 rounds to one image


def test_cli_retrain_mode_and_unknown_modes(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    data = samples(2)
    for s in data:
        Image.fromarray(s.image).save(images / s.name)
    from samforge.serve.images import ImageFolder
    from samforge.serve.store import AnnotationStore

    work = tmp_path / "work"
    base_round(work, BASE)
    store = AnnotationStore(work, ImageFolder(images), ["object"])
    for s in data:
        store.add_object(s.name, s.masks[0], "object")
    assert main(["engine", "retrain", str(work), "--images", str(images), "--mode", "lora", "--steps", "1"]) == 0
    r1 = current_round(work)
    assert r1.index == 1 and r1.metrics["mode"] == "lora" and len(r1.metrics["heldout_images"]) == 1
    assert not has_lora(load_model_ref(r1.model.resolved(r1.folder)))
    capsys.readouterr()

    with pytest.raises(SystemExit):
        main(["engine", "retrain", str(work), "--mode", "partial"])
    assert_lists_modes(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["engine", "simulate", "--rounds", "1", "--images-per-round", "1", "--out", str(tmp_path / "s"),
              "--model-type", "vit_small", "--retrain-mode", "partial"])
    assert_lists_modes(capsys.readouterr().err)
    for make in (lambda: RetrainSettings(mode="partial"),
                 lambda: SimulateSettings(rounds=1, images_per_round=1, retrain_mode="partial"),
                 lambda: run_retrain(build_sam("vit_small"), data, 1, None, mode="partial")):
        with pytest.raises(ValueError, match="must be one of full, decoder, lora, got 'partial'"):
            make()
    with pytest.raises(ValueError, match="mode decoder keeps image embeddings on disk: give cache_dir"):
        run_retrain(build_sam("vit_small"), data, 1, None)

    from pydantic import ValidationError

    from samforge.serve.engine_routes import RetrainIn

    assert [RetrainIn(mode=m).mode for m in MODES] == list(MODES)  # the page's retrain takes every mode
    with pytest.raises(ValidationError, match="decoder"):
        RetrainIn(mode="partial")


def test_simulate_with_a_retrain_mode_records_it(tmp_path, capsys):
    work = tmp_path / "sim"
    args = ["engine", "simulate", "--data", "synthetic:4:64", "--rounds", "1", "--images-per-round", "2",
            "--held-out", "1", "--model-type", "vit_small", "--retrain-steps", "2", "--retrain-val-share", "0.5",
            "--retrain-val-every", "1", "--points-per-side", "2", "--retrain-mode", "full", "--out", str(work)]
    assert main(args) == 0
    summary = json.loads((work / "rounds.json").read_text())
    assert summary["settings"]["retrain_mode"] == "full"
    r1 = summary["rounds"][1]
    assert r1["retrain_mode"] == "full" and r1["retrain_val_images"] == 1 and len(r1["retrain_val_losses"]) == 3
    one = torch.load(work / "rounds" / "1" / "model.pt", weights_only=True)["model"]
    base = load_model_ref(BASE, seed=0).state_dict()
    kept = r1["retrain_kept_step"]
    assert any(not torch.equal(one[k], base[k]) for k in base if k.startswith("image_encoder.")) == (kept > 0)
    assert not (work / "embedding_cache").exists()  # the encoder trains: nothing to cache

    # a run recorded before retrain_mode existed retrained the decoder: it continues as one, not as another mode
    settings = json.loads((work / "simulate.json").read_text())
    del settings["retrain_mode"]
    (work / "simulate.json").write_text(json.dumps(settings))
    assert main(args) == 2 and "retrain_mode differ" in capsys.readouterr().err
    assert main([a for a in args if a not in ("--retrain-mode", "full")]) == 0

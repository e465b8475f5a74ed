"""The data engine's retrain of a SAM 2 model (issue #23): decoder mode trains the decoder side only and learns,
keep-best validation restores the model as it came when no step beats it, full and lora modes train the image
encoder (lora folded in), the retrain job writes a SAM 2 round that loads back as the trained model, and the SAM
(v1) prompt recipes are refused for SAM 2. A shrunk SAM 2.1 tiny at 128 px keeps each test to seconds."""

from __future__ import annotations

import math

import pytest
import torch

from samforge.cli.engine_annotate import base_round
from samforge.data.sample import Sample
from samforge.data.synthetic import make_scene
from samforge.engine import retrain_job
from samforge.engine.model_record import sam2_model_record
from samforge.engine.retrain import run_retrain
from samforge.engine.retrain_job import RetrainSettings, retrain_round
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, current_round
from samforge.models.lora import LORA_KEY, has_lora
from samforge.models.sam2 import SAM2Base, build_sam2
from samforge.train.checkpoint import save_training_checkpoint

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_thread")]

NAME = "sam2.1_hiera_t"
SMALL = ["++model.image_size=128", "++model.image_encoder.trunk.embed_dim=16",
         "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]"]
QUICK = {"sam2_prompts": {"num_correction_points": 1}}  # one correction click a step: a recorded config's section
FROZEN_IN_DECODER_MODE = ("image_encoder.", "sam_prompt_encoder.")


def small_sam2(seed: int = 0) -> SAM2Base:
    torch.manual_seed(seed)
    return build_sam2(NAME, None, device="cpu", hydra_overrides_extra=SMALL).eval()


def samples(count: int, first: int = 0) -> list[Sample]:
    scenes = [make_scene(first + i, image_size=(64, 64), num_objects=2) for i in range(count)]
    return [Sample(sc.image, sc.masks, f"s{first + i}.png") for i, sc in enumerate(scenes)]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_decoder_mode_trains_the_decoder_side_only_and_learns():
    model, data = small_sam2(), samples(2)
    before = weights(model)
    # validating on the training images themselves: a set the decoder can learn, measured with fixed prompts
    result = run_retrain(model, data, 8, None, lr=1e-3, mode="decoder", train_config=QUICK, val_samples=data,
                         val_every=4)
    assert result.mode == "decoder" and result.steps_done == 8 and all(math.isfinite(x) for x in result.losses)
    moved = changed(before, model.state_dict())
    assert any(k.startswith("sam_mask_decoder.") for k in moved)
    assert not any(k.startswith(FROZEN_IN_DECODER_MODE) for k in moved), sorted(moved)[:5]
    assert [s for s, _ in result.val_losses] == [0, 4, 8]
    assert result.val_losses[-1][1] < 0.8 * result.val_losses[0][1], result.val_losses
    assert result.kept_step == min(result.val_losses, key=lambda t: t[1])[0] > 0
    assert not model.training and 0 < result.trainable < sum(p.numel() for p in model.parameters())


def test_keep_best_gives_back_the_model_as_it_came_when_every_step_is_worse():
    model, data = small_sam2(), samples(3)
    before = weights(model)
    result = run_retrain(model, data[:2], 2, None, lr=1e3, mode="decoder", train_config=QUICK,
                         val_samples=data[2:], val_every=1)  # a huge rate: every step wrecks the decoder
    assert [s for s, _ in result.val_losses] == [0, 1, 2]
    assert result.val_losses[1][1] > result.val_losses[0][1] and result.kept_step == 0
    assert not changed(before, model.state_dict())


@pytest.mark.parametrize("mode", ("full", "lora"))
def test_full_and_lora_train_the_image_encoder_and_leave_a_plain_model(mode):
    model, data = small_sam2(), samples(2)
    before = weights(model)
    result = run_retrain(model, data, 2, None, lr=1e-3, mode=mode, train_config=QUICK)
    assert result.mode == mode and result.kept_step == result.steps_done == 2  # no validation: the last step kept
    assert not has_lora(model) and not any(LORA_KEY in k for k in model.state_dict())  # lora: folded in
    assert set(model.state_dict()) == set(before)
    moved = changed(before, model.state_dict())
    assert any(k.startswith("image_encoder.trunk.") for k in moved)
    assert any(k.startswith("sam_mask_decoder.") for k in moved)


def test_the_retrain_job_writes_a_sam2_round_that_loads_back(tmp_path, monkeypatch):
    base_file = tmp_path / "base.pt"
    base = small_sam2()
    save_training_checkpoint(base_file, model=base.state_dict(), sam_config=sam2_model_record(base))
    work = tmp_path / "work"
    assert base_round(work, ModelRef(NAME, str(base_file))) == 0
    trained = []

    def keep_model(**kwargs):
        assert kwargs["recipe"] is None and kwargs["cache_dir"] is None  # SAM 2: own prompts, no embedding cache
        assert kwargs.pop("train_config") is None  # the base checkpoint records no training config
        trained.append(kwargs["model"])
        return run_retrain(**kwargs, train_config=QUICK)

    monkeypatch.setattr(retrain_job, "run_retrain", keep_model)
    data = samples(3)
    done = retrain_round(work, data, RetrainSettings(steps=2, lr=1e-3), say=lambda m: None)
    assert done.index == 1 and current_round(work).index == 1 and done.metrics["mode"] == "decoder"
    m = done.metrics
    assert len(m["heldout_images"]) == 1 and [s for s, _ in m["val_losses"]] == [0, 1, 2]
    assert "heldout_before" in m and "heldout_after" in m
    loaded = load_model_ref(done.model.resolved(done.folder))
    model = trained[0]
    assert isinstance(loaded, SAM2Base) and loaded.config == model.config
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert changed(base.state_dict(), loaded.state_dict())  # the round holds the retrained weights


def test_sam2_refuses_a_sam_v1_recipe_and_other_bad_input():
    model, data = small_sam2(), samples(1)
    with pytest.raises(ValueError, match="recipe"):
        run_retrain(model, data, 1, None, recipe="sam")
    with pytest.raises(ValueError, match="mode must be one of"):
        run_retrain(model, data, 1, None, mode="partial")
    with pytest.raises(ValueError, match="samples must be a non-empty list"):
        run_retrain(model, [], 1, None)
    soft = Sample(data[0].image, data[0].masks, "soft.png", soft_masks=data[0].masks.astype("float32"))
    with pytest.raises(ValueError, match="soft targets"):
        run_retrain(model, [soft], 1, None)
    with pytest.raises(TypeError, match="SAM2Base"):
        run_retrain(torch.nn.Linear(2, 2), data, 1, None)
    model.config_name = "custom"  # a model of a YAML file: no packaged config to rebuild it from
    with pytest.raises(ValueError, match="packaged config name"):
        sam2_model_record(model)


def test_simulate_runs_a_sam2_model(tmp_path):
    """``engine simulate`` on a SAM 2 base: SAM 2's predictor clicks, its mask generator proposes, its training step
    retrains (no SAM recipe, no embedding cache), and each round's model loads back as the SAM 2 it trained."""
    from samforge.data.readers import open_dataset
    from samforge.engine.simulate import SimulateSettings, simulate

    base = small_sam2(3)
    base_file = tmp_path / "base.pt"
    save_training_checkpoint(base_file, model=base.state_dict(), sam_config=sam2_model_record(base), config=QUICK)
    data = open_dataset("synthetic:5:64")
    settings = SimulateSettings(rounds=2, images_per_round=2, held_out=1, semi_from=2, retrain_steps=2,
                                retrain_val_share=0.0, points_per_side=4, lr=1e-3)
    work = tmp_path / "w"
    table = simulate(data, "synthetic:5:64", work, ModelRef(NAME, str(base_file)), settings, log=lambda m: None)
    assert [m["round"] for m in table] == [0, 1, 2] and [m["stage"] for m in table] == ["base", "assisted", "semi"]
    for m in table[1:]:
        assert m["retrain_mode"] == "decoder" and m["retrain_steps_done"] == 2 and 1 <= m["clicks_per_object"] <= 20
        assert 0 <= m["heldout_miou_box"] <= 1 and 1 <= m["heldout_clicks_per_object"] <= 20
    assert not (work / "embedding_cache").exists()
    last = current_round(work)
    model = load_model_ref(last.model.resolved(last.folder))
    assert isinstance(model, SAM2Base) and model.image_size == 128
    assert changed(weights(base), model.state_dict())  # the rounds trained it

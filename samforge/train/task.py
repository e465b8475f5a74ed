"""What differs between training SAM and SAM 2, behind one small interface, so that the training loop
(``samforge.train.trainer``) reads the same for both families.

A task opens the data, builds the model (and the record a checkpoint keeps of it), wraps model and loss in the
training forward, turns samples into batches, runs one forward, validates, draws the validation overlays and runs
the final evaluation. ``task_for(cfg)`` picks :class:`SamTask` or :class:`Sam2Task` from ``model.type``.
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from samforge.data.readers import open_dataset
from samforge.data.split import CaseSplit, split_datasets
from samforge.models.attention_init import align_query_key
from samforge.models.build import build_sam, resolve_sam_config
from samforge.models.checkpoint import read_checkpoint
from samforge.models.configs import SamConfig
from samforge.models.sam2 import SAM2_CONFIGS, build_sam2
from samforge.train.batches import TrainingSamples, collate_samples
from samforge.train.clip_batches import TrainingClips, collate_clips
from samforge.train.config import TrainConfig
from samforge.train.embedding_cache import EmbeddingCache
from samforge.train.losses import SamLoss
from samforge.train.plots import save_val_overlays
from samforge.train.sam2_losses import MultiStepMultiMaskLoss
from samforge.train.sam2_step import Sam2TrainingForward
from samforge.train.sam2_validate import save_sam2_val_overlays, validate_sam2
from samforge.train.step import TrainingForward
from samforge.train.validate import validate


def start_aligned(cfg: TrainConfig, decoder: torch.nn.Module) -> None:
    """``model.aligned_attention`` on a model trained from scratch (no ``model.checkpoint``): its mask decoder's key
    projections start equal to its query projections (:mod:`samforge.models.attention_init`)."""
    if cfg.model.aligned_attention and cfg.model.checkpoint is None:
        print(f"model.aligned_attention: {align_query_key(decoder)} mask-decoder attention layers start with "
              "keys = queries")


@dataclasses.dataclass
class BuiltModel:
    model: torch.nn.Module
    name: str  # the model's name in logs and checkpoints (``model_type``)
    record: dict  # what a checkpoint records to rebuild it (``sam_config``)
    image_size: int


class SamTask:
    """SAM (v1): images, ``TrainingForward`` (embeddings shared by an image's objects, optional embedding cache),
    box/centre-point validation, the image protocols at the end."""

    family = "sam"
    collate: Callable = staticmethod(collate_samples)
    split: CaseSplit | None = None  # the held-out split, when validation is held out of data.train (the trainer's)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.embed: EmbeddingCache | None = None

    def open_data(self) -> tuple[Any, Any]:
        """(training data, validation data); the latter None when ``data.val`` is None (held out of the former)."""
        data = self.cfg.data
        train = open_dataset(data.train, data.images)
        if self.cfg.prompts.source == "stored" and not getattr(train, "has_stored_prompts", False):
            raise ValueError(f"prompts.source=stored, but {data.train} stores no prompts: expected an images/ + masks/ "
                             "folder with annotations/<image>.json or dataset_info.json (samforge.data.stored_prompts)")
        val = None if data.val is None else open_dataset(data.val, data.images)
        return train, val

    def build_model(self, device: torch.device) -> BuiltModel:
        name, sam_config = resolve_model_config(self.cfg)
        model = build_sam(sam_config, self.cfg.model.checkpoint, device=device)
        start_aligned(self.cfg, model.mask_decoder)
        return BuiltModel(model, name, sam_config.to_dict(), sam_config.image_size)

    def training_forward(self, model: torch.nn.Module, precision: str, out: Path, device: torch.device) -> torch.nn.Module:
        cfg = self.cfg
        if cfg.finetune.mode == "decoder" and cfg.finetune.cache_embeddings:
            self.embed = EmbeddingCache(cfg.finetune.cache_dir or out / "embedding_cache", model.image_encoder, precision)
        loss_fn = SamLoss(cfg.loss.focal, cfg.loss.dice, cfg.loss.iou, cfg.loss.learned_weighting).to(device)
        return TrainingForward(model, loss_fn, self.embed)  # the model and the loss's own weights

    def samples(self, data: Any, image_size: int, validation: bool = False) -> Any:
        max_objects = 10_000 if validation else self.cfg.data.max_objects
        return TrainingSamples(data, image_size, max_objects, self.cfg.seed)

    def run(self, forward: Callable, batch: dict, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return forward(batch, self.cfg.prompts, rng, self.cfg.loss.resolution)

    def overlay_samples(self, val_data: Any, val_batches: list) -> Any:
        return [val_data[i] for i in range(min(4, len(val_data)))]

    def validate(self, forward: TrainingForward, batches: list, autocast: AbstractContextManager) -> dict[str, float]:
        return validate(forward.sam, batches, forward.loss_fn, autocast)

    def save_overlays(self, model: torch.nn.Module, samples: Any, path: Path) -> None:
        save_val_overlays(model, samples, path)

    def final_eval(self, model: torch.nn.Module, val_data: Any, out: Path) -> None:
        _image_protocols(model, val_data, self.cfg, out)

    def report(self) -> str | None:
        if self.embed is None:
            return None
        return f"embedding cache {self.embed.directory}: {self.embed.hits} hits, {self.embed.misses} misses"


class Sam2Task:
    """SAM 2: clips of ``data.num_frames`` frames (images are one-frame clips), ``Sam2TrainingForward`` with the
    official prompt sampling, tracking validation from a box and from a point on the first frame; at the end, 3D
    Dice for volumes, J&F for videos, the image protocols for images."""

    family = "sam2"
    collate: Callable = staticmethod(collate_clips)
    split: CaseSplit | None = None  # the held-out split, when validation is held out of data.train (the trainer's)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def open_data(self) -> tuple[Any, Any]:
        """(training clips, validation clips); the latter None when ``data.val`` is None (held out of the former)."""
        from samforge.data.clip_dataset import open_clip_dataset

        data = self.cfg.data
        if self.cfg.prompts.source == "stored":
            raise ValueError("prompts.source=stored trains SAM (v1) models; SAM 2 samples its prompts as the official "
                             "trainer does (sam2_prompts.*)")
        val = None if data.val is None else open_clip_dataset(data.val, images=data.images)
        return open_clip_dataset(data.train, images=data.images), val

    def build_model(self, device: torch.device) -> BuiltModel:
        name, overrides = resolve_sam2_model(self.cfg)
        model = build_sam2(name, self.cfg.model.checkpoint, device=device, mode="train",
                           hydra_overrides_extra=overrides, apply_postprocessing=False)
        start_aligned(self.cfg, model.sam_mask_decoder)
        return BuiltModel(model, name, {"family": "sam2", "config_name": name, "overrides": list(overrides)},
                          model.image_size)

    def training_forward(self, model: torch.nn.Module, precision: str, out: Path, device: torch.device) -> torch.nn.Module:
        cfg = self.cfg
        loss_fn = MultiStepMultiMaskLoss(cfg.loss.focal, cfg.loss.dice, cfg.loss.iou, cfg.loss.object_score,
                                         learned_weighting=cfg.loss.learned_weighting).to(device)
        model.gate_masks_in_training = cfg.loss.gate_masks_by_object_score
        return Sam2TrainingForward(model, loss_fn, cfg.sam2_prompts)

    def samples(self, data: Any, image_size: int, validation: bool = False) -> Any:
        cfg = self.cfg
        if validation:  # every object, and a short clip padded rather than lost
            return TrainingClips(data, image_size, cfg.data.num_frames, max_objects=10_000, seed=cfg.seed,
                                 short_clips="pad")
        return TrainingClips(data, image_size, cfg.data.num_frames, cfg.data.max_objects, cfg.seed,
                             short_clips=cfg.data.short_clips)

    def run(self, forward: Callable, batch: dict, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return forward(batch, rng, self.cfg.loss.resolution)

    def overlay_samples(self, val_data: Any, val_batches: list) -> Any:
        return val_batches[0]

    def validate(self, forward: Sam2TrainingForward, batches: list, autocast: AbstractContextManager) -> dict[str, float]:
        return validate_sam2(forward, batches, autocast)

    def save_overlays(self, model: torch.nn.Module, samples: Any, path: Path) -> None:
        save_sam2_val_overlays(model, samples, path)

    def final_eval(self, model: torch.nn.Module, val_data: Any, out: Path) -> None:
        from samforge.predict.sam2_video_predictor import video_predictor_for

        cfg = self.cfg
        if cfg.data.num_frames == 1:  # the same images (or held-out cases) as one-frame clips
            if self.split is None:
                images = open_dataset(cfg.data.val, cfg.data.images)
            else:
                full = open_dataset(cfg.data.train, cfg.data.images)
                images = split_datasets(full, self.split, cfg.data.train)[1]
            _image_protocols(model, images, cfg, out)
        elif getattr(val_data, "is_volume", False):  # volumes: 3D Dice, each organ from its largest slice
            from samforge.evaluate.volume_metrics import evaluate_volumes

            volumes = evaluate_volumes(video_predictor_for(model), val_data, prompt="box", max_volumes=cfg.val_images)
            volumes.write(out / "eval")
            summary = volumes.to_metrics_dict()
            print(f"val volumes: 3D Dice {summary['dice_3d']:.3f}, 3D IoU {summary['iou_3d']:.3f} "
                  f"({summary['num_objects']} objects)")
        else:  # clips: DAVIS J&F, each object tracked from its first box
            from samforge.evaluate.video_metrics import evaluate_video

            video = evaluate_video(video_predictor_for(model), _VideoClips(val_data), prompt="box",
                                   max_clips=cfg.val_images)
            video.write(out / "eval")
            summary = video.to_metrics_dict()
            print(f"val clips: J {summary['J']:.3f}, F {summary['F']:.3f}, J&F {summary['J&F']:.3f}")

    def report(self) -> str | None:
        return None


def task_for(cfg: TrainConfig) -> SamTask | Sam2Task:
    return Sam2Task(cfg) if model_family(cfg) == "sam2" else SamTask(cfg)


def _image_protocols(model: torch.nn.Module, data: Any, cfg: TrainConfig, out: Path) -> None:
    from samforge.evaluate.evaluator import evaluate_dataset
    from samforge.evaluate.report import format_table

    stored = cfg.prompts.source == "stored" and getattr(data, "has_stored_prompts", False)
    result = evaluate_dataset(model, data, seed=cfg.seed, max_images=cfg.val_images,
                              prompts="stored" if stored else "simulated")
    result.write(out / "eval")
    print(format_table(result.to_metrics_dict()))
    if result.refuge is not None:  # named structures (REFUGE): Dice/IoU of each, as Medical-SAM2 reports them
        from samforge.evaluate.refuge_metrics import format_refuge_table

        print(format_refuge_table(result.refuge))


# ----------------------------------------------------------------------------------------------------------
# Which model a config names


def model_family(cfg: TrainConfig) -> str:
    """``"sam2"`` for a SAM 2 config name (or a samforge checkpoint of one), else ``"sam"``."""
    if cfg.model.type in SAM2_CONFIGS:
        return "sam2"
    if cfg.model.type == "checkpoint":
        record = checkpoint_record(cfg.model.checkpoint).get("sam_config")
        if isinstance(record, dict) and record.get("family") == "sam2":
            return "sam2"
    return "sam"


def resolve_model_config(cfg: TrainConfig) -> tuple[str, SamConfig]:
    """The registry config ``model.type`` names (or the one a samforge checkpoint records, for
    ``model.type=checkpoint``), with ``model.arch`` fields replaced."""
    if cfg.model.type == "checkpoint":
        extras = checkpoint_record(cfg.model.checkpoint)
        if not isinstance(extras.get("sam_config"), dict):
            raise ValueError(f"model.type=checkpoint: {cfg.model.checkpoint} does not record its model (not a samforge "
                             "checkpoint); name the model type instead, e.g. model.type=vit_b")
        model_name, sam_config = str(extras.get("model_type", "checkpoint")), SamConfig.from_dict(extras["sam_config"])
    else:
        model_name, sam_config = resolve_sam_config(cfg.model.type)
    if cfg.model.arch:
        try:
            sam_config = dataclasses.replace(sam_config, **cfg.model.arch)
        except TypeError as e:
            raise ValueError(f"model.arch has a field SamConfig does not know: {e}") from e
        model_name = f"{model_name}+arch"
    return model_name, sam_config


def resolve_sam2_model(cfg: TrainConfig) -> tuple[str, list[str]]:
    """(SAM 2 config name, config overrides): ``model.type`` and ``model.overrides``, or what a samforge SAM 2
    checkpoint records (for ``model.type=checkpoint``), its overrides first."""
    if cfg.model.arch:
        raise ValueError("model.arch applies to SAM (v1) models; give SAM 2 changes as model.overrides, e.g. "
                         "['++model.image_size=512']")
    if cfg.model.type == "checkpoint":
        record = checkpoint_record(cfg.model.checkpoint)["sam_config"]
        return str(record["config_name"]), [*record.get("overrides", []), *cfg.model.overrides]
    return cfg.model.type, list(cfg.model.overrides)


def checkpoint_record(path: str | Path) -> dict:
    """What a checkpoint records about its model (``sam_config``, ``model_type``), read once per file version:
    resolving a ``model.type=checkpoint`` run asks several times, and the file may be large."""
    st = Path(path).stat() if Path(path).is_file() else None
    return _read_record(str(path), st.st_mtime_ns if st else 0, st.st_size if st else 0)


@functools.lru_cache(maxsize=4)
def _read_record(path: str, mtime_ns: int, size: int) -> dict:
    extras = read_checkpoint(path)[1]
    return {k: extras[k] for k in ("sam_config", "model_type") if k in extras}


class _VideoClips:
    """Clips of a clip dataset as the video evaluation reads them (label maps, frames as an array)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from samforge.data.davis_dataset import VideoClip

        clip = self.dataset[i]
        masks = clip.masks
        labels = np.zeros(masks.shape[:1] + masks.shape[2:], dtype=np.int64)
        for k, obj_id in enumerate(clip.obj_ids):
            labels[masks[:, k]] = obj_id
        frames = clip.frames
        if frames.ndim == 3:
            frames = np.repeat(frames[..., None], 3, axis=-1)
        return VideoClip(clip.name, np.ascontiguousarray(frames), labels, list(clip.obj_ids), list(clip.frame_names))

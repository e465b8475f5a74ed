"""Training configuration: dataclasses (the schema and defaults) merged with a YAML file and
``key=value`` overrides by OmegaConf. The resolved config is saved into the run folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from samforge.data.recipes import BOX_JITTERS, NEXT_MASKS, RECIPES, recipe_settings
from samforge.data.split import is_builtin_spec
from samforge.models.configs import SAM_CONFIGS
from samforge.models.sam2 import SAM2_CONFIGS
from samforge.train.sam2_step import Sam2PromptConfig


@dataclass
class ModelConfig:
    type: str = "vit_small"  # a registry name (vit_small, vit_b, ...), or "checkpoint": the one a samforge checkpoint records
    checkpoint: Optional[str] = None  # start from these weights (official or samforge); None = random init
    arch: dict = field(default_factory=dict)  # SamConfig fields replacing the named config's, e.g. {encoder_depth: 4}
    overrides: list = field(default_factory=list)  # SAM 2: config overrides, e.g. ["++model.image_size=512"]
    # from scratch (no checkpoint): the mask decoder's attention starts with key projections equal to the query
    # projections, so the prompt's place reaches the mask from the first step (samforge.models.attention_init);
    # no effect on weights loaded from a checkpoint
    aligned_attention: bool = False


@dataclass
class DataConfig:
    train: str = "synthetic:2000:256"  # see samforge.data.readers.open_dataset
    # validation data; None: hold out data.val_split of data.train's cases (by scan, clip or image; split.json).
    # This synthetic default (and a preset's) applies only while data.train is synthetic too: with the user's own
    # data.train, load_config sets it to None unless data.val is given on the command line
    val: Optional[str] = "synthetic:64:256:100000"  # held out: other seeds
    val_split: float = 0.2  # with data.val=None: the fraction of data.train's cases held out, seeded by `seed`
    split: Optional[str] = None  # a split.json (or run folder) to take the held-out cases from; the trainer records
    # its own <out>/split.json here (a resumed run reads it back: the split never changes)
    images: Optional[str] = None  # image folder for COCO json
    max_objects: int = 8  # objects (masks) per image per step
    num_frames: int = 1  # SAM 2: frames (slices) per training clip; 1 = images (the official trainer uses 8)
    short_clips: str = "skip"  # SAM 2: a clip shorter than num_frames is skipped, or padded with its last frame
    num_workers: int = 1


@dataclass
class PromptConfig:
    # simulated: the first prompt is simulated from each mask (below); stored: it is the prompt stored with the data
    # (annotations/<image>.json or dataset_info.json, see samforge.data.stored_prompts); SAM (v1) training
    source: str = "simulated"
    # a named preset of the settings below (samforge.data.recipes): default | sam | sam_fast | medsam | box_points |
    # seed000; applied where it is named (the config file or the command line), that layer's own prompts.* keys
    # override it
    recipe: str = "default"
    box_prob: float = 0.5  # first prompt is a box with this probability, else points
    box_noise: float = 0.1  # std of box edge noise, fraction of the side
    box_max_noise: float = 20.0  # px cap on the box noise
    box_jitter: str = "gaussian"  # gaussian (SAM: box_noise, box_max_noise) | outward (MedSAM: 0..box_outward_max px)
    box_outward_max: float = 5.0  # px: the largest outward move of a box side (box_jitter=outward)
    box_points: int = 0  # positive points inside the object given along with a box
    min_points: int = 1  # a point prompt has min_points..max_points positive points (uniform)
    max_points: int = 1
    point_jitter: float = 0.0  # px: positive points moved by up to this, kept inside the object
    negative_prob: float = 0.0  # a point prompt gets a negative point outside the object with this probability
    correction_rounds: int = 2  # rounds adding a click from the error region + previous logits as mask input
    mask_only_rounds: int = 1  # rounds with previous logits and no new click
    mask_only_random: bool = False  # one mask-only round at a random place among the click rounds (SAM paper)
    # cheap rounds (samforge.data.recipes): rounds after the first with a loss (the last + random others; the rest run
    # without gradient, to place the next click; -1: all), the IoU at which an object leaves the later rounds (0:
    # never), and at most this many objects going on to the rounds after the first (0: all)
    loss_rounds: int = -1
    stop_iou: float = 0.0
    round_objects: int = 0
    # probability that a correction click is the deepest point of the deepest error region (the evaluation's click,
    # as RITM's iterative training places it) instead of a point drawn uniformly in the larger region (SAM's)
    interior_clicks: float = 0.0
    # the candidate mask of a multimask round whose logits (and errors) the next round gets: lowest_loss (the one
    # trained on) | most_confident (the highest predicted IoU, as the SAM paper trains and as a user's tool picks)
    next_mask: str = "lowest_loss"


@dataclass
class LossConfig:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    resolution: str = "input"  # input: logits upsampled to the model input (as SAM); low_res: targets downsampled
    learned_weighting: bool = False  # weight focal/dice/IoU by learned uncertainties (UncertaintyWeighting)
    object_score: float = 1.0  # SAM 2: weight of the object-score (is the object in the frame) loss
    # SAM 2: in training, masks of objects the object-score head calls absent are replaced by -1024 (official,
    # right for fine-tuning); false lets the mask loss reach them, which a model trained from scratch needs
    gate_masks_by_object_score: bool = True


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | step | constant
    min_lr_ratio: float = 0.05  # cosine floor, fraction of lr
    step_milestones: tuple = (0.66, 0.9)  # fractions of steps (schedule=step)
    step_gamma: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    accumulate: int = 1  # micro-batches per optimizer step


@dataclass
class FinetuneConfig:
    mode: str = "full"  # full: every weight trains | decoder: encoders frozen | lora: adapters (+ decoder)
    rank: int = 4  # lora: rank r of the adapters
    alpha: float = 4.0  # lora: scaling alpha (updates are multiplied by alpha / r)
    lora_decoder: bool = False  # lora: adapters on the mask decoder's attention too
    train_decoder: bool = True  # lora: the mask decoder trains along with the adapters
    layer_decay: float = 1.0  # full: learning-rate multiplier per encoder block from the top (1 = off)
    cache_embeddings: bool = True  # decoder: keep image embeddings on disk, computed once per image
    cache_dir: Optional[str] = None  # decoder: where (default <out>/embedding_cache)
    freeze_memory: bool = False  # SAM 2, decoder/lora: the memory attention and memory encoder stay frozen too
    # activation checkpointing of the image encoder's blocks (samforge.models.checkpointing): all | N (the first N
    # blocks) | none | auto (all for modes full and lora at inputs of 1024 px and more, else none)
    checkpoint_blocks: str = "auto"


@dataclass
class TrainConfig:
    out: str = "runs/train"
    steps: int = 2000
    batch_size: int = 8  # images per micro-batch (per process)
    # auto (bf16 where the hardware runs it fast, else fp32) | bf16 | fp32 (TF32 matmuls on CUDA Ampere+) |
    # fp32-strict (fp32 without TF32)
    precision: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    log_every: int = 10
    val_every: int = 200
    val_images: int = 64  # images of data.val used by in-training validation
    vis_every: int = 1  # validation overlays (overlays/val_stepNNNNNN.png) every N validations and at the end
    checkpoint_every: int = 100
    eval_at_end: bool = True  # full evaluation (all protocols) on data.val into eval/ when the run stops
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much wall time; 0 = no limit
    # with max_minutes > 0: after the first steps, shorten `steps` (and the learning-rate schedule with it) to what
    # fits in max_minutes at the measured pace, so the schedule ends on time on any machine; `steps` stays the upper
    # bound (without max_minutes, `steps` is the length)
    fit_steps_to_time: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sam2_prompts: Sam2PromptConfig = field(default_factory=Sam2PromptConfig)  # SAM 2: the official prompt sampling


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file (a path, or the name of a preset in samforge/train/presets) <- ``key=value``
    overrides; unknown keys and wrong types are errors."""
    cfg = OmegaConf.structured(TrainConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file() and str(path) in preset_names():
            path = PRESETS / f"{path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path} (presets: {', '.join(preset_names())})")
        try:
            cfg = _merge_layer(cfg, OmegaConf.load(path))
        except ValueError as e:
            raise ValueError(f"bad config file {path}: {e}") from e
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must be key=value (e.g. optim.lr=1e-4), got {bad}")
        try:
            cfg = _merge_layer(cfg, OmegaConf.from_dotlist(list(overrides)))
        except ValueError as e:
            raise ValueError(f"bad override in {overrides}: {e}") from e
    obj: TrainConfig = OmegaConf.to_object(cfg)
    if not any(o.split("=", 1)[0].strip().lstrip("+") == "data.val" for o in overrides or ()):
        obj.data.val = default_validation(obj.data.train, obj.data.val)
    validate_config(obj)
    return obj


def _merge_layer(cfg: DictConfig, layer: DictConfig) -> DictConfig:
    """``cfg`` <- one layer (a config file, or the command line's overrides). A recipe the layer names
    (``prompts.recipe``) is merged first, so the layer's own ``prompts.*`` keys override the recipe's; an unknown
    recipe, an unknown key or a value of the wrong type is a ``ValueError`` (OmegaConf's message names the key)."""
    name = OmegaConf.select(layer, "prompts.recipe", default=None)
    try:
        if name is not None:
            cfg = OmegaConf.merge(cfg, {"prompts": {"recipe": name, **recipe_settings(str(name))}})
        return OmegaConf.merge(cfg, layer)
    except ValueError:
        raise
    except Exception as e:  # OmegaConf raises its own error types for unknown keys / bad values
        raise ValueError(str(e)) from e


def default_validation(train: str, val: str | None) -> str | None:
    """The validation data when the command line names none: the config's ``val``, except that built-in synthetic
    validation data (the defaults', a preset's) never stands in for the user's own held-out cases: with user
    training data it becomes None (hold out ``data.val_split`` of ``train``'s cases)."""
    return None if is_builtin_spec(val) and not is_builtin_spec(train) else val


def validate_config(cfg: TrainConfig) -> None:
    checks = [
        (cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.precision in ("auto", "bf16", "fp32", "fp32-strict"),
         f"precision must be auto, bf16, fp32 or fp32-strict, got {cfg.precision!r}"),
        (cfg.prompts.source in ("simulated", "stored"),
         f"prompts.source must be simulated or stored, got {cfg.prompts.source!r}"),
        (0.0 <= cfg.prompts.box_prob <= 1.0, f"prompts.box_prob must be in [0, 1], got {cfg.prompts.box_prob}"),
        (cfg.prompts.recipe in RECIPES,
         f"prompts.recipe: unknown recipe {cfg.prompts.recipe!r}; known recipes: {', '.join(RECIPES)}"),
        (cfg.prompts.box_jitter in BOX_JITTERS,
         f"prompts.box_jitter must be one of {BOX_JITTERS}, got {cfg.prompts.box_jitter!r}"),
        (cfg.prompts.next_mask in NEXT_MASKS,
         f"prompts.next_mask must be one of {NEXT_MASKS}, got {cfg.prompts.next_mask!r}"),
        (1 <= cfg.prompts.min_points <= cfg.prompts.max_points,
         f"prompts.min_points and max_points must satisfy 1 <= min_points <= max_points, got "
         f"{cfg.prompts.min_points} and {cfg.prompts.max_points}"),
        (0.0 <= cfg.prompts.negative_prob <= 1.0,
         f"prompts.negative_prob must be in [0, 1], got {cfg.prompts.negative_prob}"),
        (cfg.optim.schedule in ("cosine", "step", "constant"), f"optim.schedule must be cosine|step|constant, got {cfg.optim.schedule!r}"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (cfg.optim.accumulate >= 1, f"optim.accumulate must be >= 1, got {cfg.optim.accumulate}"),
        (cfg.loss.resolution in ("input", "low_res"), f"loss.resolution must be input or low_res, got {cfg.loss.resolution!r}"),
        (cfg.data.max_objects >= 1, f"data.max_objects must be >= 1, got {cfg.data.max_objects}"),
        (cfg.data.num_frames >= 1, f"data.num_frames must be >= 1, got {cfg.data.num_frames}"),
        (cfg.data.split is None or cfg.data.val is None,
         f"data.split={cfg.data.split} takes the held-out cases from a split file, which needs data.val=null "
         f"(got data.val={cfg.data.val})"),
        (0 < cfg.data.val_split < 1, f"data.val_split must be a fraction of the cases strictly between 0 and 1 "
                                     f"(e.g. 0.2), got {cfg.data.val_split}"),
        (cfg.data.short_clips in ("skip", "pad"), f"data.short_clips must be skip or pad, got {cfg.data.short_clips!r}"),
        (cfg.loss.object_score >= 0, f"loss.object_score must be >= 0, got {cfg.loss.object_score}"),
        (cfg.finetune.mode in ("full", "decoder", "lora"),
         f"finetune.mode must be full, decoder or lora, got {cfg.finetune.mode!r}"),
        (cfg.finetune.rank > 0, f"finetune.rank (LoRA rank) must be > 0, got {cfg.finetune.rank}"),
        (cfg.finetune.alpha > 0, f"finetune.alpha (LoRA alpha) must be > 0, got {cfg.finetune.alpha}"),
        (0 < cfg.finetune.layer_decay <= 1, f"finetune.layer_decay must be in (0, 1], got {cfg.finetune.layer_decay}"),
        (str(cfg.finetune.checkpoint_blocks) in ("auto", "all", "none")
         or str(cfg.finetune.checkpoint_blocks).isdigit(),
         f"finetune.checkpoint_blocks must be all, none, auto or a number of blocks N >= 0, got "
         f"{cfg.finetune.checkpoint_blocks!r}"),
        (cfg.model.type != "checkpoint" or cfg.model.checkpoint is not None,
         "model.type=checkpoint needs model.checkpoint (a samforge checkpoint that records its model)"),
        (cfg.log_every >= 1 and cfg.val_every >= 1 and cfg.checkpoint_every >= 1, "log_every, val_every and checkpoint_every must be >= 1"),
        (isinstance(cfg.vis_every, int) and cfg.vis_every >= 0,
         f"vis_every (overlays every N validations; 0: at the end only) must be an int >= 0, got {cfg.vis_every!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_ranges(cfg)


# settings checked when the config loads, not when a run first uses them (after steps, or at its end):
# key -> (lowest, highest, whether the bounds themselves are allowed); every value must also be finite
RANGES = {
    "seed": (0, None, True),
    "val_images": (1, None, True),  # in-training validation needs at least one image
    "max_minutes": (0, None, True),  # 0 = no time limit
    "data.num_workers": (0, None, True),
    "optim.weight_decay": (0, None, True),
    "optim.warmup_steps": (0, None, True),
    "optim.min_lr_ratio": (0, 1, True),
    "optim.step_gamma": (0, None, False),
    "optim.grad_clip": (0, None, True),  # 0 = off
    "loss.focal": (0, None, True),
    "loss.dice": (0, None, True),
    "loss.iou": (0, None, True),
    "prompts.box_noise": (0, None, True),
    "prompts.box_max_noise": (0, None, True),
    "prompts.correction_rounds": (0, None, True),
    "prompts.mask_only_rounds": (0, None, True),
    "prompts.box_outward_max": (0, None, True),
    "prompts.box_points": (0, None, True),
    "prompts.point_jitter": (0, None, True),
    "prompts.loss_rounds": (-1, None, True),  # -1 = every round
    "prompts.stop_iou": (0, 1, True),  # 0 = never
    "prompts.round_objects": (0, None, True),  # 0 = all
    "prompts.interior_clicks": (0, 1, True),
}


def check_ranges(cfg: TrainConfig) -> None:
    """Every setting of ``RANGES`` finite and within its bounds, and the tuples (betas, milestones) well formed;
    ``ValueError`` naming the key, the range and the value."""
    for key, (lo, hi, inclusive) in RANGES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        below = value < lo if inclusive else value <= lo
        above = hi is not None and value > hi
        if not math.isfinite(value) or below or above:
            bounds = (f"in [{lo}, {hi}]" if hi is not None else f">= {lo}") if inclusive else f"> {lo}"
            raise ValueError(f"{key} must be a finite number {bounds}, got {value}")
    types = ("checkpoint", "default", *SAM_CONFIGS, *SAM2_CONFIGS)
    if cfg.model.type not in types:
        raise ValueError(f"model.type must be one of {list(types)}, got {cfg.model.type!r}")
    if cfg.model.type in SAM2_CONFIGS and cfg.prompts.recipe != "default":
        raise ValueError(f"prompts.recipe={cfg.prompts.recipe} trains SAM (v1) models; SAM 2 ({cfg.model.type}) "
                         "samples its prompts as the official trainer does (sam2_prompts.*)")
    betas = tuple(cfg.optim.betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(betas)}")
    milestones = tuple(cfg.optim.step_milestones)
    if not all(isinstance(m, (int, float)) and 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
        raise ValueError(f"optim.step_milestones must be increasing fractions of the steps in (0, 1), "
                         f"got {list(milestones)}")


def config_to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_to_dict(cfg: TrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)

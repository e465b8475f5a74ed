"""The data engine's retrain of a work folder on a person's labels: round N+1 from round N, one at a time.

:func:`retrain_round` fine-tunes the current round's model of ``WORK`` (:func:`samforge.engine.rounds.current_round`)
on the labelled images given (:func:`samforge.engine.retrain.run_retrain` in the settings' mode: ``decoder`` with the
embedding cache, ``lora`` or ``full`` with the image encoder running every step), keeping the weights of the step
with the lowest loss on a held-out share of them (the project's seeded split by case,
:func:`samforge.data.split.make_split`: at least one image once two are labelled, none with one), on which it also
measures the model before and after; and writes round N+1: ``snapshot.json`` (every labelled image's name),
``model.pt`` (the weights, a samforge checkpoint; a ``lora`` retrain's adapters folded in), ``metrics.json``
(held-out mIoU before/after, losses, the validation losses and the step kept, seconds, which images trained and
which validated), written last so a half-written round is never current. It holds ``WORK/retrain.lock`` while it
runs, so two retrains of one folder (a page's button and ``samforge engine retrain``, or two requests) never run at
once.

:class:`RetrainJob` runs it on a background thread for the annotator: one at a time (a second start is refused with
:class:`RetrainBusy`), its progress readable while it runs, a failure (no label yet, bad labels, out of memory, any
exception) reported with its reason and leaving the current model in place, success handed to a callback (the
annotator's hot swap).

A retrain that fails moves the round it started aside to ``rounds/<N>.failed-<time>``. A retrain killed half-way
leaves a pending round (its model file and metrics missing): the next retrain on the same model and images resumes it
(it trains again into the same folder); on other labels it moves the pending round aside to
``rounds/<N>.killed-<time>`` (never current, kept for inspection) and starts round N again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from filelock import FileLock, Timeout

from samforge.data.sample import Sample
from samforge.data.recipes import recipe_settings
from samforge.data.split import make_split
from samforge.engine.model_record import sam2_model_record
from samforge.engine.retrain import RETRAIN_MODES, run_retrain
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import ModelRef, Round, current_round, finish_round, pending_round, start_round
from samforge.evaluate.evaluator import evaluate_dataset
from samforge.models.checkpoint import read_checkpoint
from samforge.models.lora import has_lora, merge_lora
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.train.checkpoint import save_training_checkpoint

log = logging.getLogger("samforge.engine")

LOCK_FILE = "retrain.lock"
ROUND_CHECKPOINT = "model.pt"
EMBEDDING_CACHE = "embedding_cache"
MODES = RETRAIN_MODES  # decoder (embeddings cached), lora (adapters + decoder, folded in), full (every weight)
VAL_EVERY_STEPS = 5  # validations of a retrain: every this many steps (at least 4 a retrain) and at its end
Progress = Callable[[str, float], None]  # (what is happening, fraction done in [0, 1])


class RetrainBusy(RuntimeError):
    """Another retrain of the same work folder is running (in this process or another)."""


@dataclass(frozen=True)
class RetrainSettings:
    """How a round is retrained: ``mode`` (``decoder``: the mask decoder, image embeddings cached; ``lora``: adapters
    on the image encoder plus the mask decoder, folded into the round's weights; ``full``: every weight), ``steps``
    AdamW steps at ``lr`` on ``batch_size`` images a step, ``held_out`` the share of the labelled images kept for
    validation: the retrain keeps the weights of its lowest validation loss, and the round is measured on them (at
    least one once two images are labelled; none with one), ``seed`` for the split and the draws,
    ``device`` where the model trains, ``recipe`` the prompt recipe of the training clicks (``sam_fast``: correction
    clicks from the error region with the previous mask fed back, as a person's clicks reach the model; the engine
    simulation's retrain, benchmarks/README.md "Data engine"; a SAM 2 round ignores it and samples its prompts as
    the SAM 2 trainer does, :mod:`samforge.engine.retrain_sam2`)."""

    mode: str = "decoder"
    steps: int = 20  # as engine simulate's retrain_steps (vit_b: ~34 s a step on 2 busy AVX2 EPYC cores, 2026-12-04)
    lr: float = 1e-4
    batch_size: int = 2
    held_out: float = 0.2
    seed: int = 0
    device: str = "cpu"
    recipe: str = "sam_fast"

    def __post_init__(self) -> None:
        recipe_settings(self.recipe)  # an unknown name lists the known recipes
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for name, ok in (("lr", lambda v: v > 0), ("held_out", lambda v: 0 < v < 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"{name} must be a number {'> 0' if name == 'lr' else 'in (0, 1)'}, got {value!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be a torch device such as cpu or cuda:0, got {self.device!r}") from e


def work_lock(work: str | Path) -> FileLock:
    """The lock a retrain of ``work`` holds (``WORK/retrain.lock``; released when its process ends, even killed).
    Not thread-local: a job takes it on one thread and releases it on another."""
    return FileLock(str(Path(work) / LOCK_FILE), timeout=0, thread_local=False)


def _acquire(lock: FileLock, work: Path) -> None:
    Path(work).mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except Timeout:
        raise RetrainBusy(f"a retrain of {work} is already running (it holds {work / LOCK_FILE}); wait for it to "
                          "finish") from None


def split_labelled(names: Sequence[str], held_out: float, seed: int, work: Path) -> tuple[list[str], list[str]]:
    """(training names, held-out names) of the labelled images: the project's seeded split by case, at least one
    image held out once there are two; with one image, it trains and nothing validates."""
    names = sorted(names)
    if len(names) < 2:
        return names, []
    held = min(max(1, math.floor(held_out * len(names) + 0.5)), len(names) - 1)
    split = make_split(names, held / len(names), seed, str(work))
    return list(split.train_cases), list(split.val_cases)


def heldout_metrics(model: torch.nn.Module, samples: Sequence[Sample], seed: int) -> dict[str, float]:
    """mIoU of ``model`` on ``samples`` (protocols box and center point, means over objects) and its NoC at 0.85."""
    m = evaluate_dataset(model, list(samples), seed=seed, progress=False).to_metrics_dict()
    return {"miou_box": m["box"]["miou"], "miou_point": m["center_point"]["miou"], "noc85": m["interactive"]["noc85"]}


def _model_record(model: Sam | SAM2Base, ref: ModelRef) -> dict:
    """What the round checkpoint records beside the weights: the model's configuration (to rebuild it; a SAM 2
    model's config name and overrides, :func:`~samforge.engine.model_record.sam2_model_record`) and the training
    config of a samforge base checkpoint (the retrain keeps its objective)."""
    config_record = sam2_model_record(model) if isinstance(model, SAM2Base) else model.config.to_dict()
    record: dict[str, Any] = {"sam_config": config_record}
    if ref.checkpoint is not None:
        try:
            config = read_checkpoint(ref.checkpoint)[1].get("config")
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict):
            record["config"] = config
    return record


def _clear_pending(work: Path, ref: ModelRef, names: Sequence[str], say: Callable[[str], None]) -> None:
    """Move a pending round that this retrain cannot resume (other model or images) aside."""
    pending = pending_round(work)
    if pending is None:
        return
    if pending.model in (None, ref) and pending.images in (None, tuple(names)):
        say(f"resuming {pending.describe()}")
        return
    _move_aside(pending.folder, "killed", say)


def retrain_round(work: str | Path, samples: Sequence[Sample], settings: RetrainSettings = RetrainSettings(),
                  progress: Progress | None = None, say: Callable[[str], None] = print) -> Round:
    """Retrain the current model of ``work`` on ``samples`` (the labelled images: image, object masks, name) into
    the next round (see the module docstring); returns it, complete. Raises :class:`RetrainBusy` while another
    retrain of ``work`` runs, ``ValueError`` without a current round or without labels, and lets any failure of
    the training through with the current round left current."""
    if not isinstance(settings, RetrainSettings):
        raise TypeError(f"settings must be RetrainSettings, got {type(settings).__name__}")
    samples = list(samples)
    if not all(isinstance(s, Sample) for s in samples):
        bad = next(type(s).__name__ for s in samples if not isinstance(s, Sample))
        raise TypeError(f"samples must be Sample (image, masks, name) objects, got a {bad}")
    work = Path(work)
    lock = work_lock(work)
    _acquire(lock, work)
    try:
        return _retrain_locked(work, samples, settings, progress or (lambda what, done: None), say)
    finally:
        lock.release()


def _retrain_locked(work: Path, samples: list[Sample], settings: RetrainSettings, progress: Progress,
                    say: Callable[[str], None]) -> Round:
    current = current_round(work)
    if current is None:
        raise ValueError(f"{work} has no complete round: start with `samforge engine annotate IMAGES --out {work} "
                         "--base TYPE:CKPT`, which records the base model as round 0")
    if not samples:
        raise ValueError("no labelled image yet: accept at least one object (on one image or more) before retraining")
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"each labelled image must come once, got these names more than once: {twice[:3]}")
    progress("loading the model", 0.02)
    ref = current.model.resolved(current.folder)
    model = load_model_ref(ref, settings.device, settings.seed)
    if not isinstance(model, (Sam, SAM2Base)):
        raise ValueError(f"retrain fine-tunes SAM and SAM 2 models; round {current.index}'s model "
                         f"({ref.model_type or ref.checkpoint}) is a {type(model).__name__}")
    sam2 = isinstance(model, SAM2Base)  # SAM 2: its own prompt sampling (no SAM v1 recipe), no embedding cache
    if has_lora(model):
        merge_lora(model)  # the round's model is a plain checkpoint: base weights with the adapter folded in
    train_names, val_names = split_labelled(names, settings.held_out, settings.seed, work)
    by_name = {s.name: s for s in samples}
    train, val = [by_name[n] for n in train_names], [by_name[n] for n in val_names]
    record = _model_record(model, ref)
    new_ref = ModelRef(ref.model_type, ROUND_CHECKPOINT)
    _clear_pending(work, new_ref, sorted(names), say)
    metrics: dict[str, Any] = {"round": current.index + 1, "stage": "retrain", "from_round": current.index,
                               **{k: v for k, v in asdict(settings).items() if k != "device"},
                               "train_images": train_names, "heldout_images": val_names,
                               "objects": int(sum(len(s.masks) for s in train))}
    t0 = time.perf_counter()
    if val:
        progress(f"validating round {current.index}'s model on {len(val)} held-out images", 0.05)
        metrics["heldout_before"] = heldout_metrics(model, val, settings.seed)
    metrics["eval_seconds"] = time.perf_counter() - t0
    new = start_round(work, new_ref, sorted(names))
    try:
        say(f"round {new.index}: retraining round {current.index}'s model ({settings.mode}, {settings.steps} steps) on "
            f"{len(train)} images ({metrics['objects']} objects), {len(val)} held out")
        t0 = time.perf_counter()
        done = [0]

        def step_done(_param: torch.Tensor) -> None:  # one backward per step
            done[0] += 1
            frac = 0.1 + 0.75 * min(done[0], settings.steps) / settings.steps
            progress(f"training: step {done[0]}/{settings.steps}", frac)

        decoder = model.sam_mask_decoder if sam2 else model.mask_decoder
        hook = decoder.iou_token.weight.register_post_accumulate_grad_hook(step_done)
        try:
            progress(f"training: step 0/{settings.steps}" + (" (computing image embeddings)"
                                                            if settings.mode == "decoder" and not sam2 else ""),
                     0.1)
            result = run_retrain(model=model, samples=train, steps=settings.steps,
                                 cache_dir=work / EMBEDDING_CACHE if settings.mode == "decoder" and not sam2 else None,
                                 lr=settings.lr, batch_size=settings.batch_size, seed=settings.seed + new.index,
                                 train_config=record.get("config"), mode=settings.mode,
                                 recipe=None if sam2 else settings.recipe,
                                 val_samples=val, val_every=_val_every(settings.steps))
        finally:
            hook.remove()
        losses = result.losses
        metrics.update(train_seconds=time.perf_counter() - t0, steps_done=len(losses), loss_first=losses[0],
                       loss_last=losses[-1], trainable_parameters=result.trainable,
                       val_losses=[[s, v] for s, v in result.val_losses], kept_step=result.kept_step)
        progress("saving the model", 0.86)
        save_training_checkpoint(new.folder / ROUND_CHECKPOINT, model=model.state_dict(), **record)
        if val:
            progress(f"validating round {new.index}'s model on {len(val)} held-out images", 0.9)
            t0 = time.perf_counter()
            metrics["heldout_after"] = heldout_metrics(model, val, settings.seed)
            metrics["eval_seconds"] += time.perf_counter() - t0
        done_round = finish_round(work, new.index, metrics)
    except Exception:
        _move_aside(new.folder, "failed", say)  # a failed retrain leaves no half-written round (a killed one resumes)
        raise
    progress(f"round {new.index} written", 1.0)
    after = metrics.get("heldout_after")
    say(f"round {new.index} written to {new.folder}" + (
        f": held-out mIoU (box) {metrics['heldout_before']['miou_box']:.3f} -> {after['miou_box']:.3f}" if after
        else " (one labelled image: nothing held out to validate on)"))
    return done_round


def _val_every(steps: int) -> int:
    """Steps between a retrain's validations: :data:`VAL_EVERY_STEPS`, or fewer for a short retrain (at least four
    validations after the start)."""
    return max(1, min(VAL_EVERY_STEPS, steps // 4))


def _move_aside(folder: Path, why: str, say: Callable[[str], None]) -> None:
    """Rename an unfinished round folder to ``<N>.<why>-<time>``: never a round again, kept for inspection."""
    aside = folder.with_name(f"{folder.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(aside)
    say(f"moved the unfinished round {folder.name} ({why}) aside to {aside}")


class RetrainJob:
    """One background retrain of ``work`` at a time (see the module docstring). ``load_samples()`` gives the
    labelled images when a job starts (on its thread); ``on_done(round)`` is called on success, before the job
    reports ``done`` (the annotator swaps its model there)."""

    def __init__(self, work: str | Path, load_samples: Callable[[], Sequence[Sample]],
                 on_done: Callable[[Round], None] | None = None, say: Callable[[str], None] = print) -> None:
        if not callable(load_samples):
            raise TypeError(f"load_samples must be a callable returning the labelled samples, got "
                            f"{type(load_samples).__name__}")
        if on_done is not None and not callable(on_done):
            raise TypeError(f"on_done must be callable or None, got {type(on_done).__name__}")
        self.work, self.load_samples, self.on_done, self.say = Path(work), load_samples, on_done, say
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status: dict[str, Any] = {"state": "idle", "message": "", "progress": 0.0, "error": None,
                                        "round": None, "started": None, "finished": None}

    def status(self) -> dict:
        """``state`` (idle, running, done, failed), ``message`` (what it does or did), ``progress`` in [0, 1],
        ``error`` (why it failed), ``round`` (written), ``started`` / ``finished`` (epoch seconds)."""
        with self._lock:
            return dict(self._status)

    def running(self) -> bool:
        return self.status()["state"] == "running"

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._status.update(changes)

    def start(self, settings: RetrainSettings) -> dict:
        """Start a retrain with ``settings`` on a background thread; returns the status. :class:`RetrainBusy` when
        one is running (here, or another process holding the work folder's lock)."""
        if not isinstance(settings, RetrainSettings):
            raise TypeError(f"settings must be RetrainSettings, got {type(settings).__name__}")
        with self._lock:
            if self._status["state"] == "running":
                raise RetrainBusy(f"a retrain is already running ({self._status['message']}); wait for it to finish")
            lock = work_lock(self.work)
            _acquire(lock, self.work)  # another process's retrain: refused here, not on the thread
            lock.release()
            self._status = {"state": "running", "message": "starting", "progress": 0.0, "error": None,
                            "round": None, "started": time.time(), "finished": None}
            self._thread = threading.Thread(target=self._run, args=(settings,), name="samforge-retrain", daemon=True)
            self._thread.start()
            return dict(self._status)

    def join(self, timeout: float | None = None) -> dict:
        """Wait for the running job (tests, the command line); returns the status."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def _run(self, settings: RetrainSettings) -> None:
        try:
            self._set(message="reading the labels")
            samples = self.load_samples()
            done = retrain_round(self.work, samples, settings,
                                 progress=lambda what, frac: self._set(message=what, progress=frac), say=self.say)
            if self.on_done is not None:
                self._set(message=f"switching to round {done.index}'s model")
                self.on_done(done)
        except BaseException as e:  # noqa: BLE001 - every failure is reported; the current model stays
            reason = _reason(e)
            self._set(state="failed", error=reason, message=f"retrain failed: {reason}", finished=time.time())
            self.say(f"retrain failed, the current model stays: {reason}")
            if not isinstance(e, (ValueError, RetrainBusy)):
                log.error("retrain of %s failed:\n%s", self.work, "".join(traceback.format_exception(e)))
            return
        self._set(state="done", progress=1.0, round=done.index, finished=time.time(),
                  message=f"round {done.index} is the current model")

def _reason(e: BaseException) -> str:
    """A failure in words for the page and the console."""
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower():
        return f"out of memory ({type(e).__name__}: {str(e)[:200]}); try fewer --steps, a smaller batch or the CPU"
    if isinstance(e, (ValueError, RetrainBusy)):
        return str(e)
    return f"{type(e).__name__}: {e}"

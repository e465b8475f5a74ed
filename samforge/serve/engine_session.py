"""The data engine inside the annotator (``samforge engine annotate``): the work folder's current round as the
model the page uses, the semi-automatic stage's proposals, the retrain job, and the hot swap to a new round.

The annotator starts on the current round of ``WORK`` (:func:`samforge.engine.rounds.current_round`). When a retrain
finishes (the page's button, :class:`samforge.engine.retrain_job.RetrainJob`) or another process writes a newer
complete round (``samforge engine retrain WORK``, noticed by :meth:`EngineSession.refresh`, which the page's status
poll calls), the new round's model replaces the annotator's (:meth:`samforge.serve.app.Annotator.swap_model`): the
next click uses the new weights, the old model's embeddings are dropped. A failed retrain changes nothing.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from samforge.engine.retrain_job import RetrainJob, RetrainSettings
from samforge.engine.round_model import load_model_ref
from samforge.engine.rounds import Round, current_round
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.serve.labelled import labelled_samples
from samforge.engine.proposals import PRED_IOU_THRESH, STABILITY_SCORE_THRESH, check_threshold
from samforge.serve.proposals import ProposalSource, ProposalStore, strict_source
from samforge.utils.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from samforge.serve.app import Annotator

STAGES = ("assisted", "semi")
ENGINE_FILE = "engine.json"  # {"images_dir", "labels"}: the annotator's folder, for samforge engine retrain


class EngineSession:
    """The engine state of one annotator on ``work`` (see the module docstring).

    ``stage``: ``assisted`` (clicks only) or ``semi`` (each image opens with the model's confident proposals).
    ``retrain``: the default settings of a retrain started from the page (its mode and steps may be overridden
    per request). ``proposal_source``: how proposals are made (default :func:`strict_source` on a
    ``points_per_side`` grid in ``precision``); every proposal shown has predicted IoU >= ``proposal_pred_iou`` and
    stability >= ``proposal_stability`` (the strict 0.9 and 0.95 by default). ``device`` / ``seed``: where new
    rounds' models are loaded, and the seed of random weights (a base without checkpoint)."""

    def __init__(self, work: str | Path, stage: str = "assisted", *, retrain: RetrainSettings | None = None,
                 proposal_source: ProposalSource | None = None, points_per_side: int = 16, precision: str = "fp32",
                 device: str = "cpu", seed: int = 0, say: Callable[[str], None] = print,
                 proposal_pred_iou: float = PRED_IOU_THRESH,
                 proposal_stability: float = STABILITY_SCORE_THRESH) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if retrain is not None and not isinstance(retrain, RetrainSettings):
            raise TypeError(f"retrain must be RetrainSettings or None, got {type(retrain).__name__}")
        current = current_round(work)
        if current is None:
            raise ValueError(f"{work} has no complete round: record the base model as round 0 first "
                             "(samforge engine annotate does it)")
        self.work, self.stage, self.device, self.seed, self.say = Path(work), stage, device, seed, say
        self.round = current.index
        self.retrain_defaults = retrain or RetrainSettings(device=device, seed=seed)
        self.filters = {"pred_iou_thresh": check_threshold(proposal_pred_iou, "proposal_pred_iou"),
                        "stability_score_thresh": check_threshold(proposal_stability, "proposal_stability")}
        self.source = proposal_source or strict_source(points_per_side, precision, **self.filters)
        self.annotator: Annotator | None = None
        self.proposals: ProposalStore | None = None
        self.job: RetrainJob | None = None
        self._swap_lock = threading.Lock()
        self.accept_lock = threading.Lock()  # a proposal's overlap check and its save happen together
        self.swap_error: str | None = None
        self._failed_round = -1

    def model_ref_of(self, r: Round) -> str:
        ref = r.model
        return f"{ref.model_type or ref.checkpoint} round {r.index}"

    def attach(self, annotator: Annotator) -> None:
        """Bind to the annotator whose model this session swaps (``create_app`` calls it), and record its images
        folder and labels in ``WORK/engine.json`` for ``samforge engine retrain WORK``."""
        self.annotator = annotator
        record = {"images_dir": str(annotator.folder.root), "labels": annotator.store.labels}
        atomic_write_bytes(self.work / ENGINE_FILE, json.dumps(record, indent=2).encode())
        self.proposals = ProposalStore(self.work, annotator.folder, self.source, **self.filters)
        self.job = RetrainJob(self.work, lambda: labelled_samples(annotator.store), on_done=self.switch_to,
                              say=self.say)

    def describe(self) -> dict:
        """What the page shows: the round (the model version), the stage, the retrain job's status and the mode a
        retrain runs in unless the page picks another (``retrain_mode``: decoder, lora or full)."""
        return {"round": self.round, "stage": self.stage, "work": str(self.work), "swap_error": self.swap_error,
                "retrain": self.job.status() if self.job else None, "retrain_mode": self.retrain_defaults.mode}

    def load_round_model(self, r: Round) -> Sam | SAM2Base:
        return load_model_ref(r.model.resolved(r.folder), torch.device(self.device), self.seed)

    def switch_to(self, r: Round) -> None:
        """Make round ``r``'s model the annotator's (hot swap); a newer round than the one in use only."""
        if self.annotator is None:
            raise RuntimeError("the engine session is not attached to an annotator (create_app attaches it)")
        with self._swap_lock:
            if r.index <= self.round:
                return
            model = self.load_round_model(r)
            self.annotator.swap_model(model, self.model_ref_of(r))
            self.round = r.index
        self.say(f"the annotator now uses round {r.index}'s model ({r.folder})")

    def refresh(self) -> None:
        """Switch to a newer complete round written by another process, if any (never during our own retrain). A
        round whose model cannot be loaded is said once (``swap_error``) and the current model stays."""
        if self.job is not None and self.job.running():
            return
        current = current_round(self.work)
        if current is None or current.index <= self.round or current.index == self._failed_round:
            return
        try:
            self.switch_to(current)
        except Exception as e:  # noqa: BLE001 - a bad round must not take the annotator down
            self._failed_round = current.index
            self.swap_error = f"round {current.index}'s model could not be loaded ({type(e).__name__}: {e})"
            self.say(f"{self.swap_error}; the annotator keeps round {self.round}'s")

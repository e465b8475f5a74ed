"""``fit_steps_to_time``: the learning-rate schedule's length set to what a run reaches in ``max_minutes`` on the
machine it runs on, so a preset's cosine ends on time whether the machine is fast or slow (``steps`` stays the upper
bound). Fitted after the first steps, then again at each validation at the pace since (a run slowed or sped up by
other work on the machine keeps ending on time); a resumed run keeps the length its first process fitted."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from samforge.train.config import TrainConfig
from samforge.train.optim import Schedule

FIRST_FIT_AFTER = 10  # steps of this process before the first fit
MARGIN = 1.03  # the pace is taken 3% slower than measured: checkpoints, logging, noise


def fit_steps(step: int, sec_per_step: float, seconds_left: float, max_steps: int) -> int:
    """The step a run at ``step`` reaches in ``seconds_left`` at ``sec_per_step``: at least ``step`` (no time
    left: stop now), at most ``max_steps``."""
    if not sec_per_step > 0:
        raise ValueError(f"sec_per_step must be > 0, got {sec_per_step}")
    return max(step, min(max_steps, step + int(max(seconds_left, 0.0) / sec_per_step)))


class TimeBudget:
    """Fits ``schedule.total_steps`` to ``cfg.max_minutes`` (when ``cfg.fit_steps_to_time``). The trainer calls
    :meth:`due` / :meth:`fit` after each optimizer step (before ``scheduler.step()``, so the next step's learning
    rate is already the fitted one) and :meth:`validated` with the seconds each validation took."""

    def __init__(self, schedule: Schedule, cfg: TrainConfig, step: int, start: float, val_batches: int) -> None:
        """``step``: the step this process starts at; ``start``: its ``time.perf_counter()`` then (the clock of
        ``max_minutes``)."""
        self.schedule = schedule
        # no budget, nothing to fit; a resumed run keeps the length its first process fitted
        self.enabled = cfg.fit_steps_to_time and cfg.max_minutes > 0 and not schedule.fitted
        self.budget_s = cfg.max_minutes * 60
        self.max_steps = cfg.steps
        self.val_every = cfg.val_every
        self.val_batches = val_batches
        self.start_step, self.start = step, start
        self.mark = (step, self.start)  # the last fit: (step, time)
        self.val_since_mark = 0.0  # seconds of validation since then
        self.val_cost: float | None = None  # seconds the last validation took

    def validated(self, seconds: float) -> None:
        self.val_since_mark += seconds
        self.val_cost = seconds

    def due(self, step: int) -> bool:
        """Fit now, ``step`` optimizer steps done?"""
        if not self.enabled:
            return False
        return step - self.start_step == FIRST_FIT_AFTER or (step > self.mark[0] > self.start_step
                                                              and step % self.val_every == 0)

    def fit(self, step: int, distributed: bool) -> int:
        """Set and return the schedule's length: the step reached in the time left at the pace since the last fit
        (validations apart), leaving time for the validations to come (their last measured cost; before the first,
        half a training step per validation batch)."""
        now = time.perf_counter()
        pace = (now - self.mark[1] - self.val_since_mark) / (step - self.mark[0]) * MARGIN
        val_cost = self.val_cost if self.val_cost is not None else 0.5 * self.val_batches * pace
        seconds_left = self.budget_s - (now - self.start) - val_cost  # the last validation comes at the end
        planned = fit_steps(step, pace + val_cost / self.val_every, seconds_left, self.max_steps)
        if distributed:  # every process runs the same schedule: the slowest one's
            planned_t = torch.tensor([planned], dtype=torch.float64)
            dist.all_reduce(planned_t, op=dist.ReduceOp.MIN)
            planned = int(planned_t.item())
        self.schedule.total_steps, self.schedule.fitted = planned, True
        self.mark, self.val_since_mark = (step, now), 0.0
        return planned

"""Masks drawn by several raters, fused into training targets by one rule.

A reader that finds several raters' masks of one object stacks them as ``R x H x W`` bool and asks
:func:`fuse_raters` for the target under a rule:

* ``majority`` (default): a pixel is the object where at least half the raters say so (mean of the raters'
  binary masks >= 0.5, the majority vote of Medical-SAM2's REFUGE loader);
* ``K`` (an integer, 1-based as the raters' files are numbered): rater K's mask alone;
* ``mean``: the soft target, the fraction of raters marking each pixel (float32 in [0, 1]), for the loss;
  its majority mask (>= 0.5) is the binary mask prompts are drawn from;
* ``all``: each rater's mask as its own sample (a case with R raters gives R samples).

:class:`RaterIndex` maps sample indices to ``(case, rater)`` under a rule, so a multi-rater reader serves
``R`` samples per case for ``all`` and one otherwise.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

RaterRule = Union[str, int]
RATER_RULES = ("majority", "mean", "all")  # or an integer K >= 1
DEFAULT_RATER_RULE = "majority"
MAJORITY = 0.5  # the fraction of raters that makes a pixel foreground (majority and the mean's binary mask)


def parse_rater_rule(value: object) -> RaterRule:
    """A rater rule from a spec or a config: ``majority``, ``mean``, ``all`` or a rater number ``K`` >= 1
    (int or digits). Raises ``ValueError`` for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"rater rule: expected one of {RATER_RULES} or a rater number K >= 1, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 1:
            raise ValueError(f"rater rule: a rater number counts from 1 (files _1, _2, ...), got {value}")
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in RATER_RULES:
            return text
        if text.isdigit():
            return parse_rater_rule(int(text))
    raise ValueError(f"rater rule: expected one of {RATER_RULES} or a rater number K >= 1, got {value!r}")


def check_rater_stack(stack: np.ndarray, what: str = "rater masks") -> None:
    """An ``R x H x W`` bool stack, R >= 1."""
    if not (isinstance(stack, np.ndarray) and stack.ndim == 3 and stack.dtype == bool and len(stack) >= 1):
        raise ValueError(f"{what}: expected an R x H x W bool array with R >= 1, got "
                         f"{type(stack).__name__} {getattr(stack, 'shape', '')} {getattr(stack, 'dtype', '')}")


def fuse_raters(stack: np.ndarray, rule: RaterRule, draw: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The target of one object from its raters' masks ``stack`` (R x H x W bool) under ``rule``:
    ``(mask H x W bool, soft H x W float32 or None)``; ``soft`` is given for ``mean`` only. ``draw`` is the
    rater (0-based) a sample of the ``all`` rule stands for, and must be None for the other rules."""
    check_rater_stack(stack)
    rule = parse_rater_rule(rule)
    if (rule == "all") != (draw is not None):
        raise ValueError(f"draw (the rater of an 'all' sample) must be given for rule 'all' only, got rule "
                         f"{rule!r} with draw={draw!r}")
    if rule == "all":
        if not 0 <= draw < len(stack):
            raise ValueError(f"draw must be a rater index in 0..{len(stack) - 1}, got {draw}")
        return stack[draw].copy(), None
    if isinstance(rule, int):
        if rule > len(stack):
            raise ValueError(f"rater {rule} asked for, but only {len(stack)} rater(s) drew this object")
        return stack[rule - 1].copy(), None
    mean = stack.mean(axis=0, dtype=np.float32)
    mask = mean >= MAJORITY
    return mask, (mean if rule == "mean" else None)


class RaterIndex:
    """Sample ``i`` -> ``(case, rater)`` for cases with ``num_raters[case]`` raters each: one sample per case
    (rater None) under every rule but ``all``, which gives each rater of each case its own sample."""

    def __init__(self, num_raters: Sequence[int], rule: RaterRule) -> None:
        self.rule = parse_rater_rule(rule)
        counts = [int(n) for n in num_raters]
        if any(n < 1 for n in counts):
            raise ValueError(f"num_raters: every case needs at least one rater, got {counts}")
        if self.rule == "all":
            self._pairs: list[tuple[int, int | None]] = [(c, r) for c, n in enumerate(counts) for r in range(n)]
        else:
            self._pairs = [(c, None) for c in range(len(counts))]

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i: int) -> tuple[int, int | None]:
        if not 0 <= i < len(self._pairs):
            raise IndexError(f"sample index {i} out of range 0..{len(self._pairs) - 1}")
        return self._pairs[i]


def fuse_objects(stacks: Sequence[np.ndarray], rule: RaterRule,
                 draw: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`fuse_raters` for each object of one image: ``(masks K x H x W bool, soft K x H x W float32 or
    None)``."""
    fused = [fuse_raters(s, rule, draw) for s in stacks]
    masks = np.stack([m for m, _ in fused])
    soft = np.stack([s for _, s in fused]) if fused[0][1] is not None else None
    return masks, soft

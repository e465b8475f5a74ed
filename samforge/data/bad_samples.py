"""Bookkeeping shared by the dataset readers: what was skipped and why, said once and clearly.

Readers scan their files when opened; every sample they cannot use becomes a :class:`BadSample`
(path + reason) and is skipped, never filled with zeros. These helpers turn that list into the
error raised when nothing is usable, and into the short report a trainer prints at start.
"""

from __future__ import annotations

import re
from typing import Sequence

from samforge.data.sample import BadSample

MAX_LISTED = 10


def _listing(bad: Sequence[BadSample], limit: int) -> list[str]:
    lines = [f"  {b}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return lines


def raise_if_no_samples(source: object, num_good: int, bad: Sequence[BadSample], what: str = "samples") -> None:
    """Raise ``ValueError`` when a reader found nothing usable in ``source``, listing the first reasons."""
    if num_good > 0:
        return
    if not bad:
        raise ValueError(f"{source}: no {what} found")
    lines = [f"{source}: no usable {what}: all {len(bad)} found were bad, for example:"] + _listing(bad, 5)
    raise ValueError("\n".join(lines))


def summarize_bad_samples(dataset: object, limit: int = MAX_LISTED) -> str:
    """A short report of what a dataset skipped at open: how many, and the first ``limit`` reasons.

    Works with any dataset that has ``bad_samples`` (and optionally ``dropped_objects``,
    ``skipped_empty_slices``)."""
    bad = list(getattr(dataset, "bad_samples", []))
    dropped = int(getattr(dataset, "dropped_objects", 0))
    n = len(dataset)  # type: ignore[arg-type]
    head = f"{n} samples usable, {len(bad)} bad sample{'' if len(bad) == 1 else 's'} skipped"
    if dropped:
        head += f", {dropped} empty object{'' if dropped == 1 else 's'} dropped"
    empty_slices = int(getattr(dataset, "skipped_empty_slices", 0))
    if empty_slices:
        head += f", {empty_slices} slice{'' if empty_slices == 1 else 's'} without objects skipped"
    return "\n".join([head] + _listing(bad, limit))


def natural_key(name: str) -> list:
    """Sort key that orders ``obj2`` before ``obj10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]

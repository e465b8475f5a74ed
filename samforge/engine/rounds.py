"""Round bookkeeping of the data engine in a work folder.

Round ``N`` lives in ``WORK/rounds/<N>/`` (N = 0, 1, 2, ...; round 0 is the base model) and holds:

* ``model.json``: the round's model reference (:class:`ModelRef`: model type, checkpoint, LoRA adapter; a relative
  path names a file of the round folder, e.g. the checkpoint a retrain wrote there);
* ``snapshot.json``: the names of the labelled images the round's model was trained on (``{"images": [...]}``);
* ``metrics.json``: the round's measurements (held-out mIoU, clicks per object, ...), written last.

Every file is written atomically, so a killed process leaves each file whole or absent. A round is *complete* when
all three files are there and readable; :func:`start_round` writes the first two, :func:`finish_round` the third.
A round without its metrics (the process was killed in between) is *pending*: :func:`current_round` never takes it
as the current model (it is the latest complete round), :func:`pending_round` reports it with what it lacks, and
:func:`start_round` with the same model and images resumes it instead of starting another.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from samforge.utils.atomic import atomic_write_bytes, remove_stale_temporaries

ROUNDS_DIR = "rounds"
MODEL_FILE = "model.json"
SNAPSHOT_FILE = "snapshot.json"
METRICS_FILE = "metrics.json"
ROUND_FILES = (MODEL_FILE, SNAPSHOT_FILE, METRICS_FILE)


class IncompleteRoundError(ValueError):
    """A round folder lacks a file (or holds an unreadable one) where a complete round was needed."""


def _optional_str(value: Any, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{name} must be a non-empty str or None, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelRef:
    """Which model a round uses: a model type (``vit_b``, ``sam2.1_hiera_t``, ...) and/or a checkpoint (a file, an
    official name), and optionally a LoRA adapter file applied on top."""

    model_type: str | None = None
    checkpoint: str | None = None
    adapter: str | None = None

    def __post_init__(self) -> None:
        for name in ("model_type", "checkpoint", "adapter"):
            _optional_str(getattr(self, name), f"ModelRef.{name}")
        if self.model_type is None and self.checkpoint is None:
            raise ValueError("ModelRef needs a model_type or a checkpoint (or both), got neither")

    def to_json(self) -> dict:
        return {"model_type": self.model_type, "checkpoint": self.checkpoint, "adapter": self.adapter}

    @classmethod
    def from_json(cls, data: Any, where: str = "model") -> "ModelRef":
        """The reference stored as ``data`` (a dict with model_type, checkpoint, adapter), ``where`` naming the file."""
        keys = {"model_type", "checkpoint", "adapter"}
        if not isinstance(data, Mapping) or not set(data) <= keys:
            got = f"a dict with keys {sorted(data)}" if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{where}: expected a dict with keys among {sorted(keys)}, got {got}")
        try:
            return cls(**{k: data.get(k) for k in keys})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e

    def resolved(self, folder: Path) -> "ModelRef":
        """This reference with the relative checkpoint / adapter paths that name a file of ``folder`` made absolute."""
        def resolve(path: str | None) -> str | None:
            if path is None or os.path.isabs(path) or not (folder / path).is_file():
                return path
            return str((folder / path).resolve())
        return ModelRef(self.model_type, resolve(self.checkpoint), resolve(self.adapter))


@dataclass(frozen=True)
class Round:
    """One round as found on disk: its number and folder, what could be read of it (None for a file missing or
    unreadable) and ``problems``, one line per such file; complete when there are none."""

    index: int
    folder: Path
    model: ModelRef | None
    images: tuple[str, ...] | None
    metrics: dict | None
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """``"round 2 (WORK/rounds/2): complete"`` or what it lacks."""
        state = "complete" if self.complete else "incomplete: " + "; ".join(self.problems)
        return f"round {self.index} ({self.folder}): {state}"


def _check_work(work: Any) -> Path:
    if not isinstance(work, (str, os.PathLike)) or str(work) == "":
        raise TypeError(f"work must be a folder path (str or Path), got {work!r}")
    path = Path(work)
    if path.exists() and not path.is_dir():
        raise ValueError(f"work folder {path}: expected a folder, got a file")
    return path


def _check_images(images: Any) -> tuple[str, ...]:
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of image names, got {type(images).__name__}")
    bad = [x for x in images if not isinstance(x, str) or not x]
    if bad:
        raise ValueError(f"images must be non-empty str names, got {bad[:3]!r}")
    seen: set[str] = set()
    dupes = sorted({x for x in images if x in seen or seen.add(x)})
    if dupes:
        raise ValueError(f"images must be distinct names, got these more than once: {dupes[:5]}")
    return tuple(images)


def _read_json(path: Path, problems: list[str]) -> Any:
    """The file's JSON, or None with a line appended to ``problems`` (missing, not JSON)."""
    if not path.is_file():
        problems.append(f"{path.name} missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path.name} is not valid JSON ({e})")
        return None


def read_round(folder: str | os.PathLike) -> Round:
    """The round stored in ``folder`` (``WORK/rounds/<N>``), with the problems of each of its files."""
    folder = Path(folder)
    if not folder.name.isdigit():
        raise ValueError(f"a round folder is named by its number (rounds/0, rounds/1, ...), got {folder}")
    problems: list[str] = []
    model = images = metrics = None
    data = _read_json(folder / MODEL_FILE, problems)
    if data is not None:
        try:
            model = ModelRef.from_json(data, MODEL_FILE)
        except ValueError as e:
            problems.append(str(e))
    data = _read_json(folder / SNAPSHOT_FILE, problems)
    if data is not None:
        try:
            if not isinstance(data, Mapping) or "images" not in data:
                raise ValueError(f"expected a dict with 'images', got {type(data).__name__}")
            images = _check_images(data["images"])
        except (TypeError, ValueError) as e:
            problems.append(f"{SNAPSHOT_FILE}: {e}")
    data = _read_json(folder / METRICS_FILE, problems)
    if data is not None:
        if isinstance(data, dict):
            metrics = data
        else:
            problems.append(f"{METRICS_FILE}: expected a dict, got {type(data).__name__}")
    return Round(int(folder.name), folder, model, images, metrics, tuple(problems))


def list_rounds(work: str | os.PathLike) -> list[Round]:
    """Every round of ``work``, by number (none when ``work/rounds`` does not exist); other entries are ignored."""
    root = _check_work(work) / ROUNDS_DIR
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
    return [read_round(p) for p in sorted(folders, key=lambda p: int(p.name))]


def current_round(work: str | os.PathLike) -> Round | None:
    """The latest complete round of ``work`` (its model is the engine's current model), None before round 0 is
    complete. A later, incomplete round is never taken: :func:`pending_round` reports it."""
    complete = [r for r in list_rounds(work) if r.complete]
    return complete[-1] if complete else None


def pending_round(work: str | os.PathLike) -> Round | None:
    """The last round of ``work`` when it is incomplete (half-written: a file missing or unreadable), else None."""
    rounds = list_rounds(work)
    return rounds[-1] if rounds and not rounds[-1].complete else None


def _dumps(data: Any, what: str) -> bytes:
    try:
        return json.dumps(data, indent=2, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON (str, numbers, lists, dicts; finite numbers), got {e}") from e


def start_round(work: str | os.PathLike, model: ModelRef, images: Sequence[str]) -> Round:
    """Start the next round of ``work`` (round 0 first) with ``model`` trained on the labelled ``images`` (names):
    writes its ``snapshot.json`` and ``model.json``. A pending round whose files are only missing (a kill) and agree
    with ``model`` and ``images`` is resumed (its missing files written); any other pending round is an
    :class:`IncompleteRoundError` saying what it lacks."""
    if not isinstance(model, ModelRef):
        raise TypeError(f"model must be a ModelRef, got {type(model).__name__}")
    names = _check_images(images)
    work = _check_work(work)
    rounds = list_rounds(work)
    if rounds and not rounds[-1].complete:
        last = rounds[-1]
        missing = {f"{f} missing" for f in ROUND_FILES}
        only_missing = f"{METRICS_FILE} missing" in last.problems and set(last.problems) <= missing
        if not (only_missing and last.model in (None, model) and last.images in (None, names)):
            raise IncompleteRoundError(f"{last.describe()}; finish it (its metrics) or delete {last.folder} before "
                                       f"starting round {last.index + 1}")
        folder = last.folder  # the same round, killed before its files were all written: resumed
    else:
        folder = work / ROUNDS_DIR / str(rounds[-1].index + 1 if rounds else 0)
        folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    if not (folder / SNAPSHOT_FILE).is_file():
        atomic_write_bytes(folder / SNAPSHOT_FILE, _dumps({"images": list(names)}, SNAPSHOT_FILE))
    if not (folder / MODEL_FILE).is_file():
        atomic_write_bytes(folder / MODEL_FILE, _dumps(model.to_json(), MODEL_FILE))
    return read_round(folder)


def finish_round(work: str | os.PathLike, index: int, metrics: Mapping[str, Any]) -> Round:
    """Write round ``index``'s ``metrics.json``, which completes it. The round must have its model and snapshot;
    a complete round's metrics are never overwritten."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index must be a round number (int >= 0), got {index!r}")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"metrics must be finite numbers, got non-finite values for {bad}")
    folder = _check_work(work) / ROUNDS_DIR / str(index)
    if not folder.is_dir():
        raise FileNotFoundError(f"round {index} of {work} not found: no folder {folder} (start_round makes it)")
    found = read_round(folder)
    if found.complete:
        raise ValueError(f"round {index} ({folder}) is complete: its {METRICS_FILE} is not overwritten")
    others = [p for p in found.problems if not p.startswith(METRICS_FILE)]
    if others:
        raise IncompleteRoundError(f"round {index} ({folder}) cannot be finished: " + "; ".join(others))
    atomic_write_bytes(folder / METRICS_FILE, _dumps(dict(metrics), METRICS_FILE))
    return read_round(folder)

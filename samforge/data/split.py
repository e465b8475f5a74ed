"""A held-out split by case: which cases of a dataset validate and which train, seeded, written as ``split.json``.

A *case* is what must never sit on both sides of a split: a scan (every slice of a NIfTI, DICOM or ``.npz``
volume), a video clip, or an image. A dataset says what its cases are with ``case_names`` (one case name per
sample, in sample order); a dataset without it has one case per sample name (``names``). Clip datasets, whose
samples are whole clips or volumes, need nothing more.

``make_split(cases, fraction, seed)`` holds out ``round(fraction x number of cases)`` distinct cases,
drawn with a seeded generator from the sorted case names, so the same data and seed give the same split on any
machine. ``split_datasets(dataset, split)`` gives the training and the held-out views of one dataset.

``split.json``::

    {"data": "my_folder/", "seed": 0, "fraction": 0.2, "num_val_cases": 2, "num_train_cases": 8,
     "val_cases": ["my_folder/images/case03.nii.gz", ...], "train_cases": [...]}
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from samforge.utils.atomic import atomic_write_bytes

SPLIT_JSON = "split.json"
_BUILTIN = re.compile(r"synthetic(-[a-z0-9]+)*")


def is_builtin_spec(spec: object) -> bool:
    """Whether a data spec names the built-in generated data (``synthetic``, ``synthetic-medical:...``,
    ``synthetic-video:...``, ...) rather than the user's files (``./synthetic`` is a folder)."""
    return isinstance(spec, str) and _BUILTIN.fullmatch(spec.split(":", 1)[0]) is not None


def case_names(dataset: Any) -> list[str]:
    """One case name per sample of ``dataset``: its ``case_names`` if it declares them, else its sample
    ``names`` (one case per image or clip)."""
    names = getattr(dataset, "case_names", None)
    if names is None:
        names = getattr(dataset, "names", None)
    if names is None:
        raise TypeError(f"dataset {type(dataset).__name__} has neither case_names nor names: cannot split it by case")
    names = [str(n) for n in names]
    if len(names) != len(dataset):
        raise ValueError(f"dataset {type(dataset).__name__} declares {len(names)} case names for {len(dataset)} "
                         "samples: expected one per sample")
    return names


_PREFIX = re.compile(r"([a-z][a-z0-9_-]+):(.+)")


def data_folder(data: str) -> str:
    """The folder (or file) a data spec reads: ``data`` itself for a path, ``PATH`` for a ``prefix:PATH[:key=value
    ...]`` spec (``refuge:/data/REFUGE:rater=all`` -> ``/data/REFUGE``). A path that exists as given is a path even
    if it looks like a spec."""
    if not isinstance(data, str):
        raise TypeError(f"data spec: expected a str, got {type(data).__name__}")
    m = _PREFIX.fullmatch(data)
    if m is None or os.path.exists(data):
        return data
    head = m[2]
    while ":" in head and "=" in head.rsplit(":", 1)[1]:  # trailing :key=value options
        head = head.rsplit(":", 1)[0]
    return head


def case_keys(dataset: Any, data: str) -> list[str]:
    """:func:`case_names` as ``split.json`` records them: paths inside the data folder of ``data`` (a path or a
    ``prefix:PATH[:options]`` spec, :func:`data_folder`) relative to it (``images/case03.png``), so a split still
    applies when the folder is named another way or moved; other names (clip names, ``synthetic:12``) as they are."""
    cases = case_names(dataset)
    if is_builtin_spec(data):
        return cases
    root = os.path.normpath(os.path.abspath(data_folder(data)))
    keys = []
    for c in cases:
        full = os.path.normpath(os.path.abspath(c))
        inside = full.startswith(root + os.sep)
        keys.append(Path(os.path.relpath(full, root)).as_posix() if inside else c)
    return keys


@dataclass(frozen=True)
class CaseSplit:
    """Held-out (``val_cases``) and training (``train_cases``) case names of the dataset ``data``."""

    data: str
    seed: int
    fraction: float
    val_cases: tuple[str, ...]
    train_cases: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"data": self.data, "seed": self.seed, "fraction": self.fraction,
                "num_val_cases": len(self.val_cases), "num_train_cases": len(self.train_cases),
                "val_cases": list(self.val_cases), "train_cases": list(self.train_cases)}


def check_fraction(fraction: object, name: str = "data.val_split") -> float:
    """``fraction`` as a float in (0, 1); ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0 < float(fraction) < 1:
        raise ValueError(f"{name}: expected a fraction of the cases strictly between 0 and 1 (e.g. 0.2), "
                         f"got {fraction!r}")
    return float(fraction)


def make_split(cases: Sequence[str], fraction: float, seed: int, data: str) -> CaseSplit:
    """Hold out ``round(fraction x N)`` (half up) of the ``N`` distinct ``cases``, drawn with ``seed``.
    Raises ``ValueError`` when that leaves no training case or no held-out case."""
    fraction = check_fraction(fraction)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    distinct = sorted(set(cases))
    n = len(distinct)
    num_val = math.floor(fraction * n + 0.5)
    if num_val < 1 or num_val >= n:
        raise ValueError(f"cannot hold out {fraction:g} of {data}: it has {n} case{'' if n == 1 else 's'} "
                         f"({', '.join(distinct[:3])}{', ...' if n > 3 else ''}), which leaves "
                         f"{n - num_val} for training and {num_val} for validation; expected at least one "
                         "of each: give more cases, another data.val_split, or validation data (data.val=... / --val)")
    order = np.random.default_rng(seed).permutation(n)
    held = {distinct[i] for i in order[:num_val]}
    return CaseSplit(str(data), int(seed), fraction, tuple(c for c in distinct if c in held),
                     tuple(c for c in distinct if c not in held))


def write_split(split: CaseSplit, path: str | os.PathLike) -> Path:
    """Write ``split`` as JSON (atomically)."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(split.to_dict(), indent=2) + "\n").encode())
    return path


def read_split(path: str | os.PathLike) -> CaseSplit:
    """A ``split.json`` back; ``path`` may also be the run folder holding it. Raises ``FileNotFoundError`` or
    ``ValueError`` naming the file and the field that is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_JSON
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path} (a training run that held out cases writes "
                                f"{SPLIT_JSON} into its run folder)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object with data, seed, fraction, val_cases, train_cases; "
                         f"got {type(doc).__name__}")
    for key in ("val_cases", "train_cases"):
        value = doc.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise ValueError(f"{path}: {key}: expected a non-empty list of case names, got {value!r}")
    both = set(doc["val_cases"]) & set(doc["train_cases"])
    if both:
        raise ValueError(f"{path}: cases on both sides of the split: {sorted(both)[:5]}")
    if not isinstance(doc.get("data"), str):
        raise ValueError(f"{path}: data: expected the data spec the split was made of, got {doc.get('data')!r}")
    seed, fraction = doc.get("seed", 0), doc.get("fraction", 0.0)
    if not isinstance(seed, int) or not isinstance(fraction, (int, float)):
        raise ValueError(f"{path}: seed and fraction: expected an int and a number, got {seed!r} and {fraction!r}")
    return CaseSplit(doc["data"], seed, float(fraction), tuple(doc["val_cases"]), tuple(doc["train_cases"]))


class CaseSubset:
    """The samples of ``dataset`` at ``indices``, a dataset itself (``len``, ``[i]``, ``names``, ``case_names``,
    ``bad_samples``). Other attributes (``is_volume``, ``axis``, ...) are the full dataset's."""

    def __init__(self, dataset: Any, indices: Sequence[int], report_bad: bool = True) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        # the full dataset's skipped files are reported once, with the training side
        self.bad_samples = list(getattr(dataset, "bad_samples", [])) if report_bad else []
        self.dropped_objects = int(getattr(dataset, "dropped_objects", 0)) if report_bad else 0
        self.skipped_empty_slices = int(getattr(dataset, "skipped_empty_slices", 0)) if report_bad else 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.indices):
            raise IndexError(f"sample index {i!r} out of range 0..{len(self.indices) - 1}")
        return self.dataset[self.indices[i]]

    @property
    def names(self) -> list[str]:
        names = self.dataset.names
        return [names[i] for i in self.indices]

    @property
    def case_names(self) -> list[str]:
        cases = case_names(self.dataset)
        return [cases[i] for i in self.indices]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _split_keys(dataset: Any, split: CaseSplit, data: str) -> list[str]:
    """The dataset's case keys in the form ``split`` records them: relative to the data folder (:func:`case_keys`),
    or the full case names of a split written before ``prefix:PATH`` specs were made relative (read as written)."""
    keys = case_keys(dataset, data)
    listed = {*split.val_cases, *split.train_cases}
    if listed <= set(keys):
        return keys
    names = case_names(dataset)
    return names if listed <= set(names) else keys


def split_datasets(dataset: Any, split: CaseSplit, data: str | None = None) -> tuple[CaseSubset, CaseSubset]:
    """(training view, held-out view) of ``dataset`` (opened from ``data``, default the split's own data spec) by
    ``split``'s cases. A case of the split that the dataset lacks is an error naming it; a case of the dataset in
    neither list (files added since) is left out of both."""
    what = split.data if data is None else str(data)
    cases = _split_keys(dataset, split, what)
    present = set(cases)
    missing = [c for c in (*split.val_cases, *split.train_cases) if c not in present]
    if missing:
        raise ValueError(f"the split of {split.data} names {len(missing)} case(s) that {what} does not have, e.g. "
                         f"{missing[:3]}: was the data moved or changed? (expected the cases the split was made of)")
    val, train = set(split.val_cases), set(split.train_cases)
    train_idx = [i for i, c in enumerate(cases) if c in train]
    val_idx = [i for i, c in enumerate(cases) if c in val]
    return CaseSubset(dataset, train_idx), CaseSubset(dataset, val_idx, report_bad=False)


def unlisted_cases(dataset: Any, split: CaseSplit, data: str) -> list[str]:
    """Cases of ``dataset`` (opened from ``data``) in neither side of ``split`` (e.g. files added since)."""
    listed = set(split.val_cases) | set(split.train_cases)
    return sorted({c for c in _split_keys(dataset, split, data) if c not in listed})


def held_out_split(dataset: Any, data: str, fraction: float, seed: int, run_dir: str | os.PathLike,
                   given: str | os.PathLike | None = None, write: bool = True) -> tuple[CaseSplit, Path]:
    """The split a training run validates with, and the file that holds it: ``given`` (a ``split.json`` or a run
    folder) if named, else ``run_dir/split.json`` when it exists (a resumed run keeps its split), else a new split of
    ``dataset``'s cases written there (when ``write``; ``write=False`` for processes other than the first)."""
    own = Path(run_dir) / SPLIT_JSON
    source = Path(given) if given is not None else own
    if source.is_dir():
        source = source / SPLIT_JSON
    if given is not None or own.is_file():
        split = read_split(source)
    else:
        split = make_split(case_keys(dataset, data), fraction, seed, data)
    if write and (not own.is_file() or source.resolve() != own.resolve()):
        write_split(split, own)
    return split, source


def describe_split(split: CaseSplit, path: str | os.PathLike, train_view: CaseSubset, data: str) -> str:
    """What a trainer prints about its split of ``data``: the held-out count and the file; cases on neither side."""
    lines = [f"validating on {len(split.val_cases)} held-out cases of {data} (training on "
             f"{len(split.train_cases)}; fraction {split.fraction:g}, seed {split.seed}: {path})"]
    extra = unlisted_cases(train_view.dataset, split, data)
    if extra:
        lines.append(f"  {len(extra)} case(s) of {data} are on neither side of the split (added since it was "
                     f"made?) and are not used, e.g. {extra[:3]}")
    return "\n".join(lines)

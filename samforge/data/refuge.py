"""REFUGE / REFUGE2 fundus photographs with the optic disc and cup drawn by several raters.

The layout, as released with seven raters' masks and as Medical-SAM2's ``func_2d/dataset.py`` reads it::

    ROOT/Training-400/<case>/<case>.jpg
    ROOT/Training-400/<case>/<case>_seg_cup_K.png    K = 1..R (REFUGE: R = 7)
    ROOT/Training-400/<case>/<case>_seg_disc_K.png
    ROOT/Test-400/...  (and Validation-400/ for REFUGE2), alike

Medical-SAM2's cropped variant (``<case>_cropped.jpg`` with ``<case>_seg_cup_K_cropped.jpg``) is read too.
``ROOT`` may also be one ``*-400`` folder itself. Every sub-folder of a part is a case, named by the folder.

* A mask pixel is foreground where its grey value is >= 128 (Medical-SAM2: ``ToTensor() >= 0.5``).
* Each sample has two objects, the optic disc (object 0) and the optic cup (object 1), as Medical-SAM2 treats
  them: two separate masks. The disc is the whole disc, cup included, as REFUGE's evaluation measures it: a
  rater's disc drawn as a rim (without their cup) is completed with that rater's cup.
* The raters of each structure are fused by ``rater`` (:mod:`samforge.data.raters`): ``majority`` (default,
  Medical-SAM2's vote), ``K``, ``mean`` (soft target) or ``all`` (each rater a sample).

Opening checks every case's files and image/mask sizes from their headers; a case with no image, a missing
rater's mask, or masks of another size than the image (or than each other) is a bad sample, listed with the
file and what was expected, and skipped. A structure that comes out empty is an error when the case is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from samforge.data.bad_samples import natural_key, raise_if_no_samples
from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb
from samforge.data.mask_folder import image_size
from samforge.data.raters import DEFAULT_RATER_RULE, RaterIndex, RaterRule, fuse_objects, parse_rater_rule
from samforge.data.sample import BadSample, Sample

CASE_PARTS = ("Training-400", "Validation-400", "Test-400")
PARTS = {"training": ("Training-400",), "validation": ("Validation-400",), "test": ("Test-400",), "all": CASE_PARTS}
STRUCTURES = ("disc", "cup")  # object 0, object 1
FOREGROUND_GREY = 128  # a mask pixel >= this is the structure (Medical-SAM2: ToTensor() >= 0.5)
_MASK = re.compile(r"_seg_(cup|disc)_(\d+)(_cropped)?\.(png|jpg|jpeg|bmp|tif|tiff)", re.IGNORECASE)


def split_options(spec: str, allowed: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``"BASE:key=value:key=value"`` -> ``(BASE, {key: value})``: trailing ``key=value`` segments (keys in
    ``allowed``) are options, the rest (which may hold ``:`` itself) is the base."""
    head, options = spec, {}
    while ":" in head:
        rest, last = head.rsplit(":", 1)
        key, eq, value = last.partition("=")
        if not eq:
            break
        if key not in allowed or key in options or not value:
            raise ValueError(f"bad option {last!r} in {spec!r}: expected {', '.join(k + '=...' for k in allowed)}, "
                             "each at most once")
        options[key] = value
        head = rest
    return head, options


def open_refuge_spec(spec: str) -> "RefugeDataset":
    """The dataset of a ``refuge:PATH[:rater=R][:part=P]`` spec (R: majority, mean, all or K; P: training,
    validation, test or all)."""
    if not spec.startswith("refuge:"):
        raise ValueError(f"a REFUGE spec starts with 'refuge:', got {spec!r}")
    path, options = split_options(spec[len("refuge:"):], ("rater", "part"))
    if not path:
        raise ValueError(f"{spec!r}: expected refuge:PATH[:rater=majority|mean|all|K][:part=training|validation|"
                         "test|all]")
    if not Path(path).exists():
        raise FileNotFoundError(f"REFUGE folder not found: {path} (from {spec!r})")
    return RefugeDataset(path, rater=options.get("rater", DEFAULT_RATER_RULE), part=options.get("part"))


def is_refuge_root(path: Path) -> bool:
    """Whether ``path`` is a folder holding one of the REFUGE parts (``Training-400/``, ``Test-400/``, ...)."""
    return path.is_dir() and any((path / p).is_dir() for p in CASE_PARTS)


def is_refuge_folder(path: Path, look: int = 3) -> bool:
    """Whether ``path`` is a REFUGE root, or a part folder whose first case folders (up to ``look``) hold
    ``<case>/<case>_seg_disc_K`` or ``_seg_cup_K`` masks."""
    if is_refuge_root(path):
        return True
    if not path.is_dir():
        return False
    cases = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    return any(_MASK.fullmatch(f.name[len(c.name):]) is not None
               for c in cases[:look] for f in c.iterdir() if f.name.startswith(c.name + "_seg_"))


@dataclass
class _Case:
    name: str
    image: Path
    cup: list[Path]  # rater K's file at K - 1
    disc: list[Path]


def read_rater_mask(path: Path) -> np.ndarray:
    """One rater's mask file as H x W bool (grey >= 128). Raises ``ValueError`` naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"))
    except Exception as e:  # Pillow raises many types on bad files (OSError, SyntaxError, EOFError, ...)
        raise ValueError(f"{path}: unreadable mask ({type(e).__name__}: {e})") from e
    return grey >= FOREGROUND_GREY


def refuge_sample(image: np.ndarray, disc: np.ndarray, cup: np.ndarray, rater: RaterRule, draw: int | None,
                  name: str) -> Sample | str:
    """The sample of one case from its raters' masks (``disc``, ``cup``: R x H x W bool each): the disc completed
    with each rater's cup, both fused by ``rater`` (``draw``: the rater of an ``all`` sample). Returns the reason
    instead when a structure comes out empty."""
    if disc.shape != cup.shape:
        raise ValueError(f"{name}: disc raters {disc.shape} and cup raters {cup.shape} must have one shape")
    masks, soft = fuse_objects([disc | cup, cup], rater, draw)
    empty = [s for s, m in zip(STRUCTURES, masks) if not m.any()]
    if empty:
        return f"the {' and the '.join(empty)} mask is empty after fusing the raters (rater={rater})"
    return Sample(image, masks, name=name, soft_masks=soft)


class RefugeDataset:
    """The REFUGE layout under ``root`` (see the module docstring): ``part`` is ``training`` (the default when
    ``root`` holds ``Training-400/``), ``validation``, ``test`` or ``all``; ``rater`` the fusion rule. ``names``
    gives each sample's image path (``[rater=K]`` appended under ``rater=all``), ``case_names`` its case."""

    structures = STRUCTURES

    def __init__(self, root: str | Path, rater: RaterRule = DEFAULT_RATER_RULE, part: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"REFUGE folder not found: {self.root}")
        self.rater = parse_rater_rule(rater)
        self.bad_samples: list[BadSample] = []
        self._cases: list[_Case] = []
        for folder in self._part_folders(part):
            for case_dir in sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                                   key=lambda p: natural_key(p.name)):
                case = self._scan(case_dir)
                if case is not None:
                    self._cases.append(case)
        raise_if_no_samples(self.root, len(self._cases), self.bad_samples, what="REFUGE cases")
        self.index = RaterIndex([len(c.disc) for c in self._cases], self.rater)

    def _part_folders(self, part: str | None) -> list[Path]:
        if part is not None and part not in PARTS:
            raise ValueError(f"REFUGE part: expected one of {sorted(PARTS)}, got {part!r}")
        if not is_refuge_root(self.root):
            if part is not None:
                raise ValueError(f"{self.root}: part={part} needs a REFUGE root holding {PARTS[part][0]}/; "
                                 f"this folder holds no {'/, '.join(CASE_PARTS)}/")
            return [self.root]  # one part folder given directly
        names = PARTS[part or "training"]
        found = [self.root / n for n in names if (self.root / n).is_dir()]
        if not found:
            raise ValueError(f"{self.root}: expected {' or '.join(n + '/' for n in names)} inside (part="
                             f"{part or 'training'}), found {sorted(p.name for p in self.root.iterdir())}")
        return found

    def _bad(self, path: Path, reason: str) -> None:
        self.bad_samples.append(BadSample(str(path), reason))

    def _scan(self, folder: Path) -> _Case | None:
        name = folder.name
        files = {p.name: p for p in folder.iterdir() if p.is_file()}
        image = next((files[name + v + s] for v in ("", "_cropped") for s in IMAGE_SUFFIXES if name + v + s in files),
                     None)
        if image is None:
            return self._bad(folder, f"no image: expected {name}/{name}.jpg (or {name}_cropped.jpg)")
        cropped = image.stem.endswith("_cropped")
        raters: dict[str, dict[int, Path]] = {"cup": {}, "disc": {}}
        for fname, path in files.items():
            m = _MASK.fullmatch(fname[len(name):]) if fname.startswith(name + "_seg_") else None
            if m is not None and bool(m[3]) == cropped:
                raters[m[1].lower()][int(m[2])] = path
        count = max([0, *raters["cup"], *raters["disc"]])
        if count == 0:
            return self._bad(folder, f"no mask: expected {name}_seg_cup_K.png and {name}_seg_disc_K.png, K = 1, 2, ...")
        tail = "_cropped.jpg" if cropped else ".png"
        for k in range(1, count + 1):
            for s in ("cup", "disc"):
                if k not in raters[s]:
                    return self._bad(folder / f"{name}_seg_{s}_{k}{tail}",
                                     f"missing mask: {count} raters found, each must draw the cup and the disc")
        if isinstance(self.rater, int) and self.rater > count:
            return self._bad(folder, f"rater={self.rater} asked for, but this case has {count} raters")
        try:
            hw = image_size(image)
        except ValueError as e:
            return self._bad(image, str(e))
        for s in ("cup", "disc"):
            for k in range(1, count + 1):
                path = raters[s][k]
                try:
                    mhw = image_size(path)
                except ValueError as e:
                    return self._bad(path, str(e))
                if mhw != hw:
                    return self._bad(path, f"mask size {mhw[1]}x{mhw[0]} (WxH) differs from the image {image.name} "
                                           f"{hw[1]}x{hw[0]}: every rater's mask must have the image's size")
        return _Case(name, image, [raters["cup"][k] for k in range(1, count + 1)],
                     [raters["disc"][k] for k in range(1, count + 1)])

    @property
    def case_names(self) -> list[str]:
        """The case (its image path) of each sample; samples of one case share it under ``rater=all``."""
        return [str(self._cases[self.index[i][0]].image) for i in range(len(self))]

    @property
    def names(self) -> list[str]:
        return [self._name(*self.index[i]) for i in range(len(self))]

    def _name(self, c: int, draw: int | None) -> str:
        image = str(self._cases[c].image)
        return image if draw is None else f"{image}[rater={draw + 1}]"

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        c, draw = self.index[i]
        case = self._cases[c]
        image = read_image_rgb(case.image)
        disc = np.stack([read_rater_mask(p) for p in case.disc])
        cup = np.stack([read_rater_mask(p) for p in case.cup])
        if disc.shape[1:] != image.shape[:2] or cup.shape[1:] != image.shape[:2]:
            raise ValueError(f"{case.image.parent}: masks changed on disk since the dataset was opened "
                             f"(sizes no longer match {case.image.name})")
        sample = refuge_sample(image, disc, cup, self.rater, draw, self._name(c, draw))
        if isinstance(sample, str):
            raise ValueError(f"{case.image.parent}: {sample}")
        return sample

"""The synthetic scenes as a dataset served on the fly (no files): sample ``i`` is scene ``seed + i``.

Two kinds: ``"default"`` (:func:`~samforge.data.synthetic.make_scene`, colourful overlapping objects,
named ``synthetic:<seed>``) and ``"medical"`` (:func:`~samforge.data.synthetic_medical.make_medical_scene`,
grey low-contrast abutting organs, named ``synthetic-medical:<seed>``).
"""

from __future__ import annotations

from samforge.data.sample import BadSample, Sample
from samforge.data.synthetic import make_scene
from samforge.data.synthetic_medical import make_medical_scene

SYNTHETIC_KINDS = {  # kind: (scene function, name prefix, default num_objects)
    "default": (make_scene, "synthetic", (3, 6)),
    "medical": (make_medical_scene, "synthetic-medical", (2, 5)),
}


class SyntheticDataset:
    """Scenes ``seed .. seed + num_images - 1`` of one ``kind`` (see the module docstring), generated
    when asked for; ``num_objects`` defaults to the kind's own default."""

    def __init__(self, num_images: int, image_size: tuple[int, int] = (256, 256), seed: int = 0,
                 num_objects: tuple[int, int] | None = None, kind: str = "default") -> None:
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(f"kind: expected one of {sorted(SYNTHETIC_KINDS)}, got {kind!r}")
        self.kind = kind
        self._make, self.prefix, default_objects = SYNTHETIC_KINDS[kind]
        self.num_images = num_images
        self.image_size = tuple(image_size)
        self.seed = seed
        self.num_objects = default_objects if num_objects is None else num_objects
        self.bad_samples: list[BadSample] = []

    @property
    def names(self) -> list[str]:
        return [f"{self.prefix}:{self.seed + i}" for i in range(self.num_images)]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.num_images:
            raise IndexError(f"sample index {i} out of range 0..{self.num_images - 1}")
        scene = self._make(self.seed + i, image_size=self.image_size, num_objects=self.num_objects)
        return Sample(scene.image, scene.masks, name=f"{self.prefix}:{self.seed + i}")

"""The synthetic scenes as a dataset served on the fly (no files): sample ``i`` is scene ``seed + i``."""

from __future__ import annotations

from samforge.data.sample import BadSample, Sample
from samforge.data.synthetic import make_scene


class SyntheticDataset:
    def __init__(self, num_images: int, image_size: tuple[int, int] = (256, 256), seed: int = 0,
                 num_objects: tuple[int, int] = (3, 6)) -> None:
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        self.num_images = num_images
        self.image_size = tuple(image_size)
        self.seed = seed
        self.num_objects = num_objects
        self.bad_samples: list[BadSample] = []

    @property
    def names(self) -> list[str]:
        return [f"synthetic:{self.seed + i}" for i in range(self.num_images)]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.num_images:
            raise IndexError(f"sample index {i} out of range 0..{self.num_images - 1}")
        scene = make_scene(self.seed + i, image_size=self.image_size, num_objects=self.num_objects)
        return Sample(scene.image, scene.masks, name=f"synthetic:{self.seed + i}")

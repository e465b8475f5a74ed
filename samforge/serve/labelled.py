"""The annotator's saved objects as training samples: what the data engine's retrain learns from."""

from __future__ import annotations

import numpy as np

from samforge.data.sample import Sample
from samforge.serve.store import AnnotationStore, rle_to_mask


def labelled_samples(store: AnnotationStore) -> list[Sample]:
    """One :class:`Sample` per image of ``store``'s folder with at least one saved object: the image as the model
    sees it, its objects' masks (in the saved order), named by the image's file name."""
    if not isinstance(store, AnnotationStore):
        raise TypeError(f"store must be an AnnotationStore, got {type(store).__name__}")
    samples = []
    for entry in store.folder.entries:
        objects = store.get(entry.name)["objects"]
        if objects:
            masks = np.stack([rle_to_mask(o["segmentation"]) for o in objects])
            samples.append(Sample(store.folder.read(entry.name), masks, name=entry.name))
    return samples

"""Reading images from disk as the ``H x W x 3`` uint8 RGB arrays every predictor takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB. 16-bit and float images are scaled by their
    own min/max to 0-255; grayscale is repeated to three channels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
                return np.repeat(np.round(arr).astype(np.uint8)[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"could not read image {path}: {e}") from e

"""``load_video_frames``: the official ``sam2.utils.misc`` function, on samforge's frame readers.

Returns ``(images, video_height, video_width)`` as the official one: ``images`` a ``T x 3 x S x S`` float32
tensor, each frame resized to ``S x S`` (PIL), scaled to [0, 1] and normalised with ``img_mean`` / ``img_std``
in the official order of operations (bit-identical for JPEG folders). With ``async_loading_frames`` the frames
come as a lazy :class:`~samforge.predict.video_frames.VideoFrames` (the default mean / std only), as the
official returns its lazy loader. Sources: a folder of JPEG/PNG frames, a video file (PyAV) or a
``T x H x W x 3`` uint8 array.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from samforge.predict.sam2_transforms import IMAGENET_MEAN, IMAGENET_STD
from samforge.predict.video_frames import VideoFrames


def _check_stats(values: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if t.shape != (3,) or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be 3 finite numbers (one per RGB channel), got {values!r}")
    return t[:, None, None]


def load_video_frames(
    video_path: Any,
    image_size: int,
    offload_video_to_cpu: bool,
    img_mean: Sequence[float] = IMAGENET_MEAN,
    img_std: Sequence[float] = IMAGENET_STD,
    async_loading_frames: bool = False,
    compute_device: torch.device | str | None = None,
) -> tuple[torch.Tensor | VideoFrames, int, int]:
    """The frames of a clip, resized to ``image_size`` and normalised, with the video's height and width
    (see the module docstring). They are put on ``compute_device`` (default: CUDA when available, else the CPU;
    the official default is CUDA) unless ``offload_video_to_cpu``."""
    mean, std = _check_stats(img_mean, "img_mean"), _check_stats(img_std, "img_std")
    if compute_device is None:
        compute_device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cpu") if offload_video_to_cpu else torch.device(compute_device)
    frames = VideoFrames(video_path, image_size, device="cpu", cache_size=1)
    if async_loading_frames:
        if not (torch.equal(mean, _check_stats(IMAGENET_MEAN, "")) and torch.equal(std, _check_stats(IMAGENET_STD, ""))):
            raise ValueError("async_loading_frames=True reads frames with SAM 2's ImageNet mean / std; "
                             f"got img_mean={img_mean!r}, img_std={img_std!r}")
        return VideoFrames(video_path, image_size, device=device), frames.video_height, frames.video_width
    images = torch.zeros(len(frames), 3, image_size, image_size, dtype=torch.float32)
    for i in range(len(frames)):  # as official: uint8 / 255 in float64, stored in float32
        rgb = np.asarray(Image.fromarray(frames.rgb(i)).resize((image_size, image_size)))
        images[i] = torch.from_numpy(rgb / 255.0).permute(2, 0, 1)
    images = images.to(device)
    images -= mean.to(device)
    images /= std.to(device)
    return images, frames.video_height, frames.video_width

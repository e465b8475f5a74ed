"""Datasets, prompt simulation, the built-in synthetic scenes and image reading."""

from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb
from samforge.data.synthetic import SyntheticScene, make_scene, make_scenes
from samforge.data.synthetic_medical import make_medical_scene
from samforge.data.davis_dataset import DavisDataset, VideoClip, open_video_dataset
from samforge.data.synthetic_video import SyntheticClip, make_clip, make_clips

__all__ = ["IMAGE_SUFFIXES", "DavisDataset", "SyntheticClip", "SyntheticScene", "VideoClip", "make_clip", "make_clips",
           "make_medical_scene", "make_scene", "make_scenes", "open_video_dataset", "read_image_rgb"]

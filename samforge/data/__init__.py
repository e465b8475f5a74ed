"""Datasets, prompt simulation, the built-in synthetic scenes and image reading."""

from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb
from samforge.data.synthetic import SyntheticScene, make_scene, make_scenes
from samforge.data.synthetic_medical import make_medical_scene
from samforge.data.davis_dataset import DavisDataset, VideoClip, open_video_dataset
from samforge.data.synthetic_video import SyntheticClip, make_clip, make_clips
from samforge.data.synthetic_medical_volume import MedicalVolume, make_medical_volume
from samforge.data.clip_dataset import Clip, open_clip_dataset

__all__ = ["IMAGE_SUFFIXES", "Clip", "DavisDataset", "MedicalVolume", "SyntheticClip", "SyntheticScene", "VideoClip",
           "make_clip", "make_clips", "make_medical_scene", "make_medical_volume", "make_scene", "make_scenes",
           "open_clip_dataset", "open_video_dataset", "read_image_rgb"]

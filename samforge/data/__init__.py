"""Datasets, prompt simulation, the built-in synthetic scenes and image reading."""

from samforge.data.image_io import IMAGE_SUFFIXES, read_image_rgb
from samforge.data.synthetic import SyntheticScene, make_scene, make_scenes
from samforge.data.synthetic_medical import make_medical_scene

__all__ = ["IMAGE_SUFFIXES", "SyntheticScene", "make_medical_scene", "make_scene", "make_scenes", "read_image_rgb"]

"""Pure ``nn.Module`` models, named configurations and checkpoint loading. Imports nothing above it."""

from samforge.models.build import build_sam, load_sam, sam_model_registry
from samforge.models.checkpoint import load_state_dict_strict, read_checkpoint, read_state_dict
from samforge.models.configs import SAM_CONFIGS, SamConfig
from samforge.models.load import load_model
from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2_CONFIGS, SAM2Base, build_sam2

__all__ = ["SAM2_CONFIGS", "SAM2Base", "SAM_CONFIGS", "Sam", "SamConfig", "build_sam", "build_sam2", "load_model", "load_sam", "load_state_dict_strict", "read_checkpoint", "read_state_dict", "sam_model_registry"]

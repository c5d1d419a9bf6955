"""The CLIP-MUSED network: subject tokens, input adapters, Transformer encoder."""

from .adapters import ROIAdapter, VolumeAdapter, VolumeGrid
from .clip_mused import CLIPMUSED, TOKEN_MODES, ModelOutput
from .encoder import Attention, Block, Encoder, Mlp
from .readout import SpatialReadout, VoxelReadout
from .tokens import SubjectTokens, SubjectVocab
from .volume_resnet import ResNetVolumeAdapter

__all__ = [
    "CLIPMUSED",
    "ModelOutput",
    "TOKEN_MODES",
    "SubjectTokens",
    "SubjectVocab",
    "ROIAdapter",
    "VolumeAdapter",
    "VolumeGrid",
    "ResNetVolumeAdapter",
    "SpatialReadout",
    "VoxelReadout",
    "Attention",
    "Mlp",
    "Block",
    "Encoder",
]

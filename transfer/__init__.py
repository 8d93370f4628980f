"""Transfer: backbone checkpoints in and out (torchvision, Detectron2 and other frameworks' layouts).

Entry points: :func:`load_backbone` (any supported checkpoint → torchvision state dict + report),
:func:`build_backbone` (a torchvision ResNet with those weights), :func:`to_detectron2` /
:func:`from_detectron2` (name mapping both ways) and :func:`export_backbone` (``mochi export``).
"""

from mochi.resnet import ARCHS, build_torchvision_resnet, infer_arch

from .backbone import BackboneReport, build_backbone, inspect_checkpoint, load_backbone
from .detectron2 import from_detectron2, to_detectron2, write_detectron2_pkl
from .export import export_backbone
from .loading import read_checkpoint

__all__ = [
    "ARCHS",
    "BackboneReport",
    "build_backbone",
    "build_torchvision_resnet",
    "export_backbone",
    "from_detectron2",
    "infer_arch",
    "inspect_checkpoint",
    "load_backbone",
    "read_checkpoint",
    "to_detectron2",
    "write_detectron2_pkl",
]

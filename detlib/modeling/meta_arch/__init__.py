"""Meta-architectures: whole models assembled from a backbone and heads, all on `MetaArchitecture`'s protocol."""

from .base import MetaArchitecture
from .build import META_ARCH_REGISTRY, build_model
from .dense_detector import DenseDetector
from .fcos import FCOS
from .panoptic_fpn import PanopticFPN
from .rcnn import GeneralizedRCNN, ProposalNetwork
from .retinanet import RetinaNet
from .semantic_seg import SemanticSegmentor

__all__ = [
    "META_ARCH_REGISTRY",
    "build_model",
    "MetaArchitecture",
    "DenseDetector",
    "FCOS",
    "GeneralizedRCNN",
    "ProposalNetwork",
    "RetinaNet",
    "PanopticFPN",
    "SemanticSegmentor",
]

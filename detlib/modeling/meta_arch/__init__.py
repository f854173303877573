"""Meta-architectures: whole detectors assembled from a backbone and heads."""

from .build import META_ARCH_REGISTRY, build_model
from .rcnn import GeneralizedRCNN, ProposalNetwork
from .retinanet import RetinaNet, RetinaNetHead

__all__ = ["META_ARCH_REGISTRY", "build_model", "GeneralizedRCNN", "ProposalNetwork", "RetinaNet", "RetinaNetHead"]

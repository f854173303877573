"""One-stage (dense) detection heads, selected from `DENSE_HEAD_REGISTRY` by `MODEL.DENSE_HEAD.NAME`."""

from .base import DenseHead, anchor_major
from .build import DENSE_HEAD_REGISTRY, build_dense_head
from .fcos_head import FCOSHead
from .retinanet_head import RetinaNetHead

__all__ = ["DENSE_HEAD_REGISTRY", "build_dense_head", "DenseHead", "anchor_major", "RetinaNetHead", "FCOSHead"]

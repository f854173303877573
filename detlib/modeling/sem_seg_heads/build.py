"""The registry of semantic segmentation heads, and building the one a config selects."""

from typing import Dict

from torch import nn

from detlib.layers import ShapeSpec
from detlib.utils.registry import Registry

__all__ = ["SEM_SEG_HEADS_REGISTRY", "build_sem_seg_head"]

SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
SEM_SEG_HEADS_REGISTRY.__doc__ = """
Semantic segmentation heads, built as `cls(cfg, input_shape)` where `input_shape` maps the backbone's feature
names to their `ShapeSpec`. Called as `head(features, targets=None)`, a head returns (N x C x H x W per-class
logits at the padded input's resolution, a dict of its losses: empty without targets).
Selected by `MODEL.SEM_SEG_HEAD.NAME`.
"""


def build_sem_seg_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The semantic segmentation head `cfg.MODEL.SEM_SEG_HEAD.NAME` names."""
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, input_shape)

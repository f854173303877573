"""The registry of one-stage (dense) heads, and building the one a config selects."""

from typing import Dict

from torch import nn

from detlib.layers import ShapeSpec
from detlib.utils.registry import Registry

__all__ = ["DENSE_HEAD_REGISTRY", "build_dense_head"]

DENSE_HEAD_REGISTRY = Registry("DENSE_HEAD")
DENSE_HEAD_REGISTRY.__doc__ = """
One-stage detection heads (subclasses of `DenseHead`), built as `cls(cfg, input_shape)` where
`input_shape` maps the backbone's feature names to their `ShapeSpec`. Selected by `MODEL.DENSE_HEAD.NAME`
(empty: the meta-architecture's own head, e.g. RetinaNet's `RetinaNetHead`).
"""


def build_dense_head(cfg, input_shape: Dict[str, ShapeSpec], default: str) -> nn.Module:
    """The dense head `cfg.MODEL.DENSE_HEAD.NAME` names, or `default` when that is empty."""
    name = cfg.MODEL.DENSE_HEAD.NAME or default
    return DENSE_HEAD_REGISTRY.get(name)(cfg, input_shape)

"""`BACKBONE_REGISTRY` and `build_backbone`: how a config names its backbone."""

from typing import Optional

from detlib.layers import ShapeSpec
from detlib.utils.registry import Registry

from .backbone import Backbone

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Registry for backbones: functions or classes called as `obj(cfg, input_shape)` that return a `Backbone`.
`cfg.MODEL.BACKBONE.NAME` selects one.
"""


def build_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """
    Build the backbone named by `cfg.MODEL.BACKBONE.NAME`.

    Args:
        input_shape: of the input images; by default as many channels as `cfg.MODEL.PIXEL_MEAN` has.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"MODEL.BACKBONE.NAME={name!r} built a {type(backbone).__name__}, which is not a Backbone.")
    return backbone

"""
A differential case whose backbone is built by code in both libraries: for the backbones that Detectron2 builds
only from Python configs (Swin, MViT, RegNet), so that the harness's YAML models can carry them. The code gets the
library's name and builds the same module from that library's classes; it is registered in the library's
`BACKBONE_REGISTRY` when the case's config is made.
"""

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
from harness import Case


@dataclass(frozen=True)
class CodeBackboneCase(Case):
    """`build_backbone(library, cfg, input_shape)` returns the backbone, from `<library>.modeling.backbone` classes."""

    build_backbone: Optional[Callable[[str, Any, Any], Any]] = None
    needs_timm: bool = False  # Detectron2's transformer blocks import timm

    def _backbone_name(self, library: str) -> str:
        registry = importlib.import_module(f"{library}.modeling").BACKBONE_REGISTRY
        name = f"differential_{self.name}"
        if name not in registry:

            def build(cfg, input_shape):
                return self.build_backbone(library, cfg, input_shape)

            build.__name__ = name
            registry.register(build)
        return name

    def detlib_config(self):
        cfg = super().detlib_config()
        cfg.MODEL.BACKBONE.NAME = self._backbone_name("detlib")
        return cfg

    def d2_config(self):
        if self.needs_timm:
            pytest.importorskip("timm")
        cfg = super().d2_config()
        cfg.MODEL.BACKBONE.NAME = self._backbone_name("detectron2")
        return cfg


def backbone_module(library: str, name: str):
    """`<library>.modeling.backbone.<name>`."""
    return importlib.import_module(f"{library}.modeling.backbone.{name}")


def under_fpn(library: str, cfg, bottom_up, in_features, norm: str = ""):
    """`bottom_up` under the library's FPN (MODEL.FPN.OUT_CHANNELS wide) with a max-pooled p6, as the zoo configs have it."""
    fpn = backbone_module(library, "fpn")
    return fpn.FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=norm,
        top_block=fpn.LastLevelMaxPool(),
    )

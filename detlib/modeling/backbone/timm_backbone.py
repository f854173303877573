"""
timm models as detlib backbones: `TimmBackbone` wraps `timm.create_model(..., features_only=True)`, and the YAML
builders put FPN (`build_timm_fpn_backbone`) or ViTDet's simple pyramid (`build_timm_sfp_backbone`) on top.

timm is an optional dependency (`pip install detlib[timm]`): it is imported when a timm backbone is built.
"""

import math
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from detlib.layers import ShapeSpec

from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .fpn import FPN, LastLevelMaxPool
from .vit import SimpleFeaturePyramid, build_simple_feature_pyramid

__all__ = ["TimmBackbone", "build_timm_fpn_backbone", "build_timm_sfp_backbone"]


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "timm backbones need the timm package: pip install 'detlib[timm]' (or pip install timm)"
        ) from e
    return timm


class TimmBackbone(Backbone):
    """
    The feature maps of a timm model, named "res<k>" for stride 2**k (so "res2".."res5" for the usual four
    levels, as ResNet's), with channels and strides from the model's `feature_info`.
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        pretrained: bool = False,
        pretrained_file: str = "",
        in_chans: int = 3,
        model_kwargs: Optional[Mapping[str, Any]] = None,
    ):
        """
        Args:
            model_name: a name `timm.create_model` knows, e.g. "resnet50", "convnext_tiny", "vit_small_patch16_224".
            out_indices: feature levels to output (indices into timm's `feature_info`); their strides must differ.
            pretrained: load timm's pretrained weights, from `pretrained_file` when given, else from the
                Hugging Face / timm cache (set HF_HUB_OFFLINE=1 so that nothing is downloaded).
            pretrained_file: a local weights file in timm's format for the full model.
            in_chans: image channels.
            model_kwargs: further keyword arguments of `timm.create_model` (e.g. img_size, dynamic_img_size).
        """
        super().__init__()
        timm = _import_timm()
        kwargs = dict(model_kwargs or {})
        if pretrained_file:
            kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
        self.body = timm.create_model(
            model_name,
            pretrained=pretrained or bool(pretrained_file),
            features_only=True,
            out_indices=tuple(out_indices),
            in_chans=in_chans,
            **kwargs,
        )
        info = self.body.feature_info
        strides, channels = info.reduction(), info.channels()
        if len(set(strides)) != len(strides):
            raise ValueError(
                f"timm model {model_name!r}: out_indices {list(out_indices)} give strides {strides}; choose "
                "levels of distinct strides (outputs are named by stride), e.g. only the last one for a plain ViT"
            )
        self._out_features = [f"res{int(math.log2(s))}" for s in strides]
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._out_feature_channels = dict(zip(self._out_features, channels))
        self.model_name = model_name

    @property
    def size_divisibility(self) -> int:
        """The coarsest stride: every level's size is then exactly the input's divided by its stride."""
        return max(self._out_feature_strides.values())

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (N, C, H, W) -> {"res<k>": (N, channels, H / 2**k, W / 2**k)}."""
        return dict(zip(self._out_features, self.body(x)))


def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """`TimmBackbone` from `cfg.MODEL.TIMM`."""
    timm_cfg = cfg.MODEL.TIMM
    return TimmBackbone(
        timm_cfg.NAME,
        out_indices=tuple(timm_cfg.OUT_INDICES),
        pretrained=timm_cfg.PRETRAINED,
        pretrained_file=timm_cfg.PRETRAINED_FILE,
        in_chans=input_shape.channels,
        model_kwargs=dict(timm_cfg.KWARGS),
    )


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """
    A timm model (`cfg.MODEL.TIMM`) under FPN (`cfg.MODEL.FPN`), with p6 from `LastLevelMaxPool`. An empty
    MODEL.FPN.IN_FEATURES takes every timm output.
    """
    bottom_up = build_timm_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=list(cfg.MODEL.FPN.IN_FEATURES) or bottom_up._out_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_timm_sfp_backbone(cfg, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """ViTDet's simple pyramid (`cfg.MODEL.SFP`) over the last (coarsest) output of a timm model (`cfg.MODEL.TIMM`)."""
    net = build_timm_backbone(cfg, input_shape)
    return build_simple_feature_pyramid(cfg, net, net._out_features[-1])

"""Backbones: the `Backbone` interface, its registry, ResNet, FPN, ViT + SimpleFeaturePyramid, Swin, MViT, RegNet,
timm models."""

from .backbone import Backbone
from .build import BACKBONE_REGISTRY, build_backbone
from .fpn import (
    FPN,
    LastLevelMaxPool,
    LastLevelP6P7,
    build_fcos_resnet_fpn_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from .mvit import MViT
from .regnet import AnyNet, RegNet
from .resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet, build_resnet_backbone, make_stage
from .swin import SwinTransformer
from .timm_backbone import TimmBackbone, build_timm_fpn_backbone, build_timm_sfp_backbone
from .vit import SimpleFeaturePyramid, ViT, build_vit_sfp_backbone, get_vit_lr_decay_rate

__all__ = [
    "Backbone",
    "BACKBONE_REGISTRY",
    "build_backbone",
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "build_fcos_resnet_fpn_backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "ResNet",
    "build_resnet_backbone",
    "make_stage",
    "AnyNet",
    "RegNet",
    "MViT",
    "SwinTransformer",
    "SimpleFeaturePyramid",
    "ViT",
    "get_vit_lr_decay_rate",
    "build_vit_sfp_backbone",
    "TimmBackbone",
    "build_timm_fpn_backbone",
    "build_timm_sfp_backbone",
]

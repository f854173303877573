"""
Mask R-CNN on ViTDet's backbone (a ViT with window, global and residual blocks under the simple feature pyramid)
against Detectron2, via the differential harness: detections, masks and training losses.

Detectron2 builds this backbone only from Python configs; its YAML model gets it here from a backbone builder
registered for the test, with the arguments `VIT` that detlib's `build_vit_sfp_backbone` reads from `MODEL.VIT`.
The synthetic images are not multiples of the patch size: both libraries feed them unpadded (Detectron2's
pyramid names its size constraint "size_divisiblity", which its `ImageList` does not read).
"""

from dataclasses import dataclass
from functools import partial

import pytest
import torch.nn as nn
from harness import RCNN_HEAD_STD, Case, case_tests

# ViT arguments, in `ViT`'s keywords and as the MODEL.VIT keys detlib's builder reads.
VIT = {
    "img_size": 128,
    "patch_size": 16,
    "embed_dim": 48,
    "depth": 3,
    "num_heads": 3,
    "window_size": 4,
    "window_block_indexes": [0, 2],
    "residual_block_indexes": [1],
    "use_rel_pos": True,
    "drop_path_rate": 0.0,  # the training forward is compared: no random depth
    "pretrain_img_size": 64,
    "pretrain_use_cls_token": True,
}
D2_BACKBONE = "detlib_differential_vit_sfp"


def _register_detectron2_backbone() -> None:
    pytest.importorskip("timm")  # Detectron2's ViT blocks import timm's Mlp and DropPath
    from detectron2.modeling import BACKBONE_REGISTRY
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detectron2.modeling.backbone.vit import SimpleFeaturePyramid, ViT

    if D2_BACKBONE in BACKBONE_REGISTRY:
        return

    def detlib_differential_vit_sfp(cfg, input_shape):
        net = ViT(in_chans=input_shape.channels, norm_layer=partial(nn.LayerNorm, eps=1e-6), **VIT)
        return SimpleFeaturePyramid(
            net, "last_feat", cfg.MODEL.FPN.OUT_CHANNELS, (4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool(), norm="LN"
        )

    BACKBONE_REGISTRY.register(detlib_differential_vit_sfp)


@dataclass(frozen=True)
class ViTCase(Case):
    """The Mask R-CNN case with the backbone replaced in both libraries."""

    def detlib_config(self):
        cfg = super().detlib_config()
        cfg.MODEL.BACKBONE.NAME = "build_vit_sfp_backbone"
        for key, value in VIT.items():
            setattr(cfg.MODEL.VIT, key.upper(), value)
        cfg.MODEL.SFP.NORM = "LN"
        return cfg

    def d2_config(self):
        _register_detectron2_backbone()
        cfg = super().d2_config()
        cfg.MODEL.BACKBONE.NAME = D2_BACKBONE
        return cfg


CASE = ViTCase(
    name="mask_rcnn_vit",
    config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    # Pixels are ~100 in size: a small patch embedding brings the tokens to ~1.
    head_std={**RCNN_HEAD_STD, r"patch_embed\.proj\.weight$": 0.0004},
)

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

"""Mask R-CNN on MViTv2 under an FPN with LayerNorm (as ViTDet's MViTv2 configs) against Detectron2, via the
harness: window attention in the first stage, pooling attention, relative positions resized to the input."""

from functools import partial

import torch.nn as nn
from code_backbone_case import CodeBackboneCase, backbone_module, under_fpn
from harness import RCNN_HEAD_STD, case_tests


def mvit_fpn(library: str, cfg, input_shape):
    mvit = backbone_module(library, "mvit").MViT(
        img_size=64,
        embed_dim=16,
        depth=5,
        last_block_indexes=(0, 2, 3, 4),
        adaptive_window_size=8,
        drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    return under_fpn(library, cfg, mvit, ("scale2", "scale3", "scale4", "scale5"), norm="LN")


CASE = CodeBackboneCase(
    name="mask_rcnn_mvit",
    config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    head_std={**RCNN_HEAD_STD, r"patch_embed\.proj\.weight$": 0.0015},
    build_backbone=mvit_fpn,
    needs_timm=True,
)

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

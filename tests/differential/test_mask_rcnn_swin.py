"""Mask R-CNN on a Swin Transformer under an FPN with LayerNorm (as ViTDet's Swin configs) against Detectron2, via
the harness: shifted windows (with the attention mask where the input is padded to whole windows), patch merging,
relative position bias, absolute position embedding resized to the input."""

from code_backbone_case import CodeBackboneCase, backbone_module, under_fpn
from harness import RCNN_HEAD_STD, case_tests


def swin_fpn(library: str, cfg, input_shape):
    swin = backbone_module(library, "swin").SwinTransformer(
        pretrain_img_size=32,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        window_size=3,
        drop_path_rate=0.0,
        ape=True,
        out_indices=(0, 1, 2, 3),
    )
    return under_fpn(library, cfg, swin, ("p0", "p1", "p2", "p3"), norm="LN")


CASE = CodeBackboneCase(
    name="mask_rcnn_swin",
    config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    head_std={**RCNN_HEAD_STD, r"patch_embed\.proj\.weight$": 0.0015},
    build_backbone=swin_fpn,
    needs_timm=True,
)

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

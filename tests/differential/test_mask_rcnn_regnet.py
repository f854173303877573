"""Mask R-CNN on a RegNetY (squeeze-excitation; stem and first stage frozen, FrozenBatchNorm) under FPN, as the
zoo's `mask_rcnn_regnety_4gf_dds_fpn_1x` has it in miniature, against Detectron2 via the harness."""

from code_backbone_case import CodeBackboneCase, backbone_module, under_fpn
from harness import RCNN_HEAD_STD, case_tests


def regnet_fpn(library: str, cfg, input_shape):
    regnet = backbone_module(library, "regnet")
    bottom_up = regnet.RegNet(
        stem_class=regnet.SimpleStem,
        stem_width=16,
        block_class=regnet.ResBottleneckBlock,
        depth=6,
        w_a=16.0,
        w_0=16,
        w_m=1.5,
        group_width=8,
        se_ratio=0.25,
        freeze_at=2,
        norm="FrozenBN",
        out_features=["s1", "s2", "s3", "s4"],
    )
    return under_fpn(library, cfg, bottom_up, ("s1", "s2", "s3", "s4"))


CASE = CodeBackboneCase(
    name="mask_rcnn_regnet",
    config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    head_std={**RCNN_HEAD_STD, r"^backbone\.bottom_up\.stem\.conv\.weight$": 0.002},
    build_backbone=regnet_fpn,
)

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

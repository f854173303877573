"""Mask R-CNN with deformable convolutions (v1) in res3-res5 (the dconv_c3-c5 zoo config, ResNet-50: Detectron2
has no deformable basic block), against Detectron2: the offsets come from the random `conv2_offset` weights."""

from harness import Case, case_tests

CASE = Case(
    name="mask_rcnn_deform",
    config="Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml",
    overrides=["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256],
    seeds=(0,),  # one: ResNet-50 at full width takes half a minute per seed on a CPU
)  # fmt: skip

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

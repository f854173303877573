"""Mask R-CNN DC5 (ResNet-50 with a dilated res5 at stride 16, RPN and 2-fc / 4-conv heads on res5), against
Detectron2. ResNet-50, since ResNet-18's basic blocks have no dilated form."""

from harness import Case, case_tests

CASE = Case(
    name="mask_rcnn_dc5",
    config="COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml",
    overrides=["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256],
    seeds=(0,),  # one: ResNet-50 at full width takes half a minute per seed on a CPU
)  # fmt: skip

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

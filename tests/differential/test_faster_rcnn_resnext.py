"""Faster R-CNN on ResNeXt (32 groups of 8 channels, stride in the 3x3 conv) + FPN, against Detectron2: the
X-101-32x8d zoo config at depth 50."""

from harness import Case, case_tests

CASE = Case(
    name="faster_rcnn_resnext",
    config="COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    overrides=["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256],
)  # fmt: skip

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

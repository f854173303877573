"""Mask R-CNN C4 (Res5ROIHeads: res5 on ROI-pooled res4 features, shared by the box and mask heads; RPN on res4),
against Detectron2."""

from harness import Case, case_tests

CASE = Case(name="mask_rcnn_c4", config="COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

"""Mask R-CNN (ResNet-FPN, mask head) against Detectron2, via the differential harness."""

from harness import Case, case_tests

CASE = Case(name="mask_rcnn", config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

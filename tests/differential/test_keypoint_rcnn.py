"""Keypoint R-CNN (ResNet-FPN, keypoint head) against Detectron2, via the differential harness."""

from harness import Case, case_tests

# SHRINK gives the keypoint head 4 convs of 64 channels (the zoo's has 8 of 512).
CASE = Case(name="keypoint_rcnn", config="COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

"""Mask R-CNN with the GIoU box loss in the RPN (weight 2) and the box head (weight 10), the zoo's giou config,
against Detectron2."""

from harness import Case, case_tests

CASE = Case(name="mask_rcnn_giou", config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

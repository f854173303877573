"""Mask R-CNN with one box and one mask per RoI for every class (CLS_AGNOSTIC_BBOX_REG, CLS_AGNOSTIC_MASK), the
zoo's cls_agnostic config, against Detectron2."""

from harness import Case, case_tests

CASE = Case(name="mask_rcnn_cls_agnostic", config="Misc/mask_rcnn_R_50_FPN_1x_cls_agnostic.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

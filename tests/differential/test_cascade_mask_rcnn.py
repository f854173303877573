"""Cascade Mask R-CNN (three box stages, mask head) against Detectron2, via the differential harness."""

from harness import Case, case_tests

CASE = Case(name="cascade_mask_rcnn", config="Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

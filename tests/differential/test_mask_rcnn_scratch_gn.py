"""Mask R-CNN trained from scratch with GroupNorm everywhere (ResNet, FPN, box and mask heads; FREEZE_AT 0, so the
training losses flow through a backbone with no frozen stage), against Detectron2."""

from harness import Case, case_tests

CASE = Case(name="mask_rcnn_scratch_gn", config="Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

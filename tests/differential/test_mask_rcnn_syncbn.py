"""Mask R-CNN with SyncBN in the ResNet and FPN (one process: batch statistics of the training batch), against
Detectron2."""

from harness import Case, case_tests

CASE = Case(name="mask_rcnn_syncbn", config="Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml")

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

"""Keypoint R-CNN (ResNet-FPN, keypoint head) against Detectron2, via the differential harness."""

import pytest
from harness import Case, check_live, check_recorded

# SHRINK gives the keypoint head 4 convs of 64 channels (the zoo's has 8 of 512).
CASE = Case(name="keypoint_rcnn", config="COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml")


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_recorded_detectron2(seed, tmp_path):
    check_recorded(CASE, seed, tmp_path)


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_live_detectron2(seed, tmp_path):
    pytest.importorskip("detectron2")
    check_live(CASE, seed, tmp_path)

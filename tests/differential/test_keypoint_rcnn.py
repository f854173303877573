"""Keypoint R-CNN (ResNet-FPN, keypoint head) against Detectron2, via the differential harness."""

import pytest
from harness import Case, check_live, check_recorded

CASE = Case(
    name="keypoint_rcnn",
    config="COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    # The zoo head has 8 convs of 512 channels; 2 of 64 keep the test fast and test the same code.
    overrides=["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(64, 64)"],
)


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_recorded_detectron2(seed, tmp_path):
    check_recorded(CASE, seed, tmp_path)


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_live_detectron2(seed, tmp_path):
    pytest.importorskip("detectron2")
    check_live(CASE, seed, tmp_path)

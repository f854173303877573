"""Cascade Mask R-CNN (three box stages, mask head) against Detectron2, via the differential harness."""

import pytest
from harness import Case, check_live, check_recorded

CASE = Case(name="cascade_mask_rcnn", config="Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_recorded_detectron2(seed, tmp_path):
    check_recorded(CASE, seed, tmp_path)


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_live_detectron2(seed, tmp_path):
    pytest.importorskip("detectron2")
    check_live(CASE, seed, tmp_path)

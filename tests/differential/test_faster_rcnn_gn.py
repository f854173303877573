"""Faster R-CNN with GroupNorm in the FPN and in a 4-conv + 1-fc box head, against Detectron2."""

import pytest
from harness import Case, check_live, check_recorded

CASE = Case(
    name="faster_rcnn_gn",
    config="COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    overrides=[
        "MODEL.FPN.NORM", "GN",
        "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_CONV", 4,
        "MODEL.ROI_BOX_HEAD.NUM_FC", 1,
        "MODEL.ROI_BOX_HEAD.NORM", "GN",
    ],
)  # fmt: skip


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_recorded_detectron2(seed, tmp_path):
    check_recorded(CASE, seed, tmp_path)


@pytest.mark.parametrize("seed", CASE.seeds)
def test_matches_live_detectron2(seed, tmp_path):
    pytest.importorskip("detectron2")
    check_live(CASE, seed, tmp_path)

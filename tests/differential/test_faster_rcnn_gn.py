"""Faster R-CNN with GroupNorm in the FPN and in a 4-conv + 1-fc box head, against Detectron2."""

from harness import Case, case_tests

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

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

"""RetinaNet with GroupNorm in its head's subnets (shared by the levels) against Detectron2."""

from harness import Case, case_tests

CASE = Case(
    name="retinanet_gn",
    config="COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    overrides=["MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.RETINANET.NORM", "GN", "MODEL.RETINANET.NUM_CONVS", 2],
    head_std={r"stem\.conv1\.weight$": 0.0015, r"cls_score\.weight$": 0.01, r"bbox_pred\.weight$": 0.002},
    bias_offset={r"cls_score\.bias$": -2.5},
)

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

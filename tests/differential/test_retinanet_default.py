"""
RetinaNet with its default head (no norm) against Detectron2. Not named test_retinanet.py: the test
directories are not packages, so pytest needs basenames unique across them (tests/modeling has one).
"""

from harness import Case, case_tests

CASE = Case(
    name="retinanet",
    config="COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    overrides=["MODEL.RETINANET.NUM_CLASSES", 3],
    head_std={r"stem\.conv1\.weight$": 0.0015, r"cls_score\.weight$": 0.01, r"bbox_pred\.weight$": 0.002},
    bias_offset={r"cls_score\.bias$": -2.0},
)

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

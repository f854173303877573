"""Panoptic FPN (Mask R-CNN + SemSegFPNHead with GN, combined into panoptic_seg) against Detectron2: instances,
sem_seg, panoptic_seg and the training losses (loss_sem_seg included)."""

from harness import Case, case_tests

CASE = Case(
    name="panoptic_fpn",
    config="COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    overrides=[
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64,
        # Low enough that the random-weight model's detections and small stuff regions make segments.
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", 0.2,
        "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", 256,
    ],
)  # fmt: skip

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)

r"""
RetinaNet from Detectron2's Python config (`COCO-Detection/retinanet_R_50_FPN_1x.py`, ours with its imports
changed to detlib) against Detectron2's: the detector's keywords (`head_in_features`, `anchor_generator`,
`anchor_matcher`, `box2box_transform`, the focal loss's, `smooth_l1_beta`'s default of 0, ...) reach detlib's
head through `RetinaNet`, and the head takes Detectron2's `input_shape` / `num_anchors`. Both are shrunk the
same way (ResNet-18, 64-channel FPN with P6/P7 from C5, two 64-channel convs per subnet, 3 classes) and compared
by `PythonConfigCase` (python_config_case.py): pyramid features, detections and losses with the harness's
tolerances, then matched scores within 1e-5, boxes within 1e-3 px and losses within 1e-5 relative; Detectron2's
state_dict loads into detlib's model with strict=True.

Recorded references: `data/retinanet_python_config_seed<k>.npz`. Regenerate (needs Detectron2):

    PYTHONPATH=$PWD python tests/differential/test_retinanet_python_config.py
"""

from harness import Case
from python_config_case import PythonConfigCase, shrink_to_r18_fpn

# The weight rules of the YAML RetinaNet case (test_retinanet_default.py); not named CASE (see PythonConfigCase).
WEIGHTS = Case(
    name="retinanet_python_config",
    config="COCO-Detection/retinanet_R_50_FPN_1x.py",
    head_std={r"stem\.conv1\.weight$": 0.0015, r"cls_score\.weight$": 0.01, r"bbox_pred\.weight$": 0.002},
    bias_offset={r"cls_score\.bias$": -2.0},
    seeds=(0, 1),
)


def shrink(model, package: str) -> None:
    """ResNet-18 (res5: 512 channels, which P6 is computed from), a 64-channel FPN and head convs."""
    shrink_to_r18_fpn(model, package, top_block_in_channels=512)


RETINANET_CASE = PythonConfigCase(weights=WEIGHTS, shrink=shrink)
test_matches_recorded_detectron2, test_matches_live_detectron2 = RETINANET_CASE.tests()

if __name__ == "__main__":
    RETINANET_CASE.regenerate()

r"""
FCOS against Detectron2. FCOS has no YAML zoo config, so `harness.Case` (which builds YAML configs) does
not apply: both models come from the Python config `COCO-Detection/fcos_R_50_FPN_1x.py` (Detectron2's,
and ours with its imports changed to detlib), shrunk the same way (ResNet-18, 64-channel FPN and head,
3 classes), and compared by `PythonConfigCase` (python_config_case.py): pyramid features (sampled) within
1e-3 relative, then `compare_outputs` (>= 98% of detections matched at IoU > 0.99, same class, score within
1e-3; losses within 1e-3 relative), then `compare_values` (scores within 1e-5, boxes within 1e-3 px, losses
within 1e-5 relative).

Recorded references: `data/fcos_seed<k>.npz`. Regenerate (needs Detectron2):

    PYTHONPATH=$PWD python tests/differential/test_fcos.py
"""

from harness import Case
from python_config_case import PythonConfigCase, shrink_to_r18_fpn

# Weight rules only (not a YAML case: named so that the harness's regeneration does not collect it).
WEIGHTS = Case(
    name="fcos",
    config="COCO-Detection/fcos_R_50_FPN_1x.py",
    head_std={r"stem\.conv1\.weight$": 0.0015, r"cls_score\.weight$": 0.01, r"bbox_pred\.weight$": 0.002},
    # Logits near the 0.2 threshold of sqrt(class * centerness); distances of ~2 strides per side.
    bias_offset={r"cls_score\.bias$": -3.0, r"bbox_pred\.bias$": 2.0},
    seeds=(0, 1),
)
NUM_CLASSES = 3


def shrink(model, package: str) -> None:
    """ResNet-18, a 64-channel FPN (P6/P7 from P5) and a head of two 64-channel convs."""
    shrink_to_r18_fpn(model, package, top_block_in_channels=64)


FCOS_CASE = PythonConfigCase(weights=WEIGHTS, shrink=shrink, num_classes=NUM_CLASSES)
build = FCOS_CASE.build
test_fcos_matches_recorded_detectron2, test_fcos_matches_live_detectron2 = FCOS_CASE.tests()

if __name__ == "__main__":
    FCOS_CASE.regenerate()

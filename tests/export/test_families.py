"""
Every detector family exports through the one wrapper (`ExportableDetector` over the model's own
`inference`): RetinaNet, Cascade Mask R-CNN, Keypoint R-CNN and C4 Mask R-CNN (Res5ROIHeads) here (Mask / Faster R-CNN in
test_torch_export.py / test_onnx_export.py). Each is the differential tests' shrunk zoo model with the same
seeded random weights (scores spread out, so there are tens to hundreds of detections); exported from one
image size and run at two others, as a saved .pt2 and in ONNX Runtime, it gives the eager detections, masks
and keypoints, and it returns empty outputs without failing when nothing passes the threshold.
"""

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from export_checks import assert_same_detections, eager_outputs, onnxruntime_runner

from detlib.export import ExportableDetector, export_program, min_image_side
from detlib.modeling import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))
from harness import random_weights, synthetic_batch  # noqa: E402

# Family -> the differential test module whose CASE (config, overrides, weight rules) it exports.
FAMILIES = {
    "retinanet": "test_retinanet_default",
    "cascade_mask_rcnn": "test_cascade_mask_rcnn",
    "keypoint_rcnn": "test_keypoint_rcnn",
    "mask_rcnn_c4": "test_mask_rcnn_c4",
}
# Sizes other than the sample's (the first synthetic image, 150 x 180), all above RetinaNet's 129 px minimum.
RUN_SIZES = [(176, 144), (144, 224)]


def _model(family: str, score_thresh: float = None) -> torch.nn.Module:
    case = importlib.import_module(FAMILIES[family]).CASE
    cfg = case.detlib_config()
    if score_thresh is not None:
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    model = build_model(cfg)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    weights = random_weights(shapes, 0, case)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
    return model.eval()


def _images(sizes):
    source = torch.from_numpy(synthetic_batch(0, num_classes=3)[0].image)[None].float()
    return [
        F.interpolate(source, size=size, mode="bilinear")[0].round().clamp(0, 255).to(torch.uint8) for size in sizes
    ]


@pytest.fixture(scope="module")
def exported():
    """`exported(family, score_thresh=None)`: (eager model, its ExportedProgram), once per module."""
    cache = {}

    def get(family: str, score_thresh: float = None):
        if (family, score_thresh) not in cache:
            model = _model(family, score_thresh)
            sample = torch.from_numpy(synthetic_batch(0, num_classes=3)[0].image)
            cache[family, score_thresh] = model, export_program(model, sample)
        return cache[family, score_thresh]

    return get


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_program_matches_eager_on_other_sizes(exported, family, tmp_path):
    model, program = exported(family)
    names = ExportableDetector(model).output_names
    assert min(min(size) for size in RUN_SIZES) >= min_image_side(model)
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    for image in _images(RUN_SIZES):
        expected = eager_outputs(model, image)
        assert len(expected[0]) > 10  # enough detections for the comparison to mean something
        assert_same_detections(expected, loaded(image), names)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnxruntime_matches_eager_on_other_sizes(exported, family, tmp_path):
    model, program = exported(family)
    sample = torch.from_numpy(synthetic_batch(0, num_classes=3)[0].image)
    run = onnxruntime_runner(model, program, sample, tmp_path / "model.onnx")
    for image in _images(RUN_SIZES):
        assert_same_detections(eager_outputs(model, image), run(image), ExportableDetector(model).output_names)


@pytest.mark.parametrize("family", ["retinanet", "keypoint_rcnn"])
def test_no_detection_gives_empty_outputs(exported, family):
    model, program = exported(family, score_thresh=1.0)
    names = ExportableDetector(model).output_names
    for image in _images(RUN_SIZES):
        outputs = dict(zip(names, program.module()(image)))
        assert outputs["boxes"].shape == (0, 4) and outputs["scores"].shape == (0,)
        if "keypoints" in outputs:
            assert outputs["keypoints"].shape == (0, model.roi_heads.keypoint_head.num_keypoints, 3)
        assert len(eager_outputs(model, image)[0]) == 0

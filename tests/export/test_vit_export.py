"""
ViTDet (Mask R-CNN on a ViT under the simple feature pyramid) exports through the one wrapper
(`ExportableDetector` over its own `inference`): the differential test's shrunk model (window blocks, a global
block with a residual block, relative positions) with its seeded random weights, exported once from the first
synthetic image (150 x 180), gives the eager detections and masks at two other sizes as a saved .pt2 and in
ONNX Runtime (`assert_same_detections`). One size has token maps that fill the windows and the global block's
position tables exactly (128 px: 8 tokens), the others need padding and resized tables. The pyramid does not
pad its input, so the program's minimum side is the smallest at which p6 has two rows; with the classes' logits
pushed far down, the same program returns empty outputs.
"""

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from export_checks import assert_same_detections, eager_outputs, onnxruntime_runner

from detlib.export import MAX_IMAGE_SIDE, ExportableDetector, export_program, image_size_range, min_image_side
from detlib.modeling import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))
from harness import random_weights, synthetic_batch  # noqa: E402

RUN_SIZES = [(128, 208), (176, 144)]


def _images(sample: torch.Tensor, sizes):
    source = sample[None].float()
    return [
        F.interpolate(source, size=size, mode="bilinear")[0].round().clamp(0, 255).to(torch.uint8) for size in sizes
    ]


@pytest.fixture(scope="module")
def exported():
    """(eager model, its weights, the sample image, its ExportedProgram), once per module."""
    case = importlib.import_module("test_mask_rcnn_vit").CASE
    model = build_model(case.detlib_config())
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    weights = {name: torch.from_numpy(value) for name, value in random_weights(shapes, 0, case).items()}
    model.load_state_dict(weights)
    model.eval()
    sample = torch.from_numpy(synthetic_batch(0, num_classes=3)[0].image)
    return model, weights, sample, export_program(model, sample)


def _coarsest_rows(model: torch.nn.Module, side: int) -> int:
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, side, side))
    return min(feature.shape[-2] for feature in features.values())


def test_saved_program_matches_eager_and_handles_no_detection(exported, tmp_path):
    model, weights, sample, program = exported
    names = ExportableDetector(model).output_names
    assert names == ("boxes", "scores", "classes", "masks")
    low = image_size_range(program)[0][0]
    assert image_size_range(program) == ((low, MAX_IMAGE_SIDE), (low, MAX_IMAGE_SIDE))
    # Raised above the generic minimum to the smallest side at which the eager pyramid's p6 has two rows.
    assert low > min_image_side(model)
    assert _coarsest_rows(model, low) == 2 and _coarsest_rows(model, low - 1) == 1
    assert min(min(size) for size in RUN_SIZES) >= low

    torch.export.save(program, tmp_path / "vit.pt2")
    loaded = torch.export.load(tmp_path / "vit.pt2").module()
    images = _images(sample, RUN_SIZES)
    for image in images:
        expected = eager_outputs(model, image)
        assert len(expected[0]) > 10  # enough detections for the comparison to mean something
        assert_same_detections(expected, loaded(image), names)
    with pytest.raises(AssertionError, match=f">= {low}"):  # the input guard
        loaded(_images(sample, [(low - 1, 160)])[0])

    # The same program with every foreground logit at -30: softmax scores below the 0.05 threshold.
    bias = weights["roi_heads.box_predictor.cls_score.bias"].clone()
    bias[:-1] = -30.0  # the last logit is the background's
    silent = {**weights, "roi_heads.box_predictor.cls_score.bias": bias}
    loaded.load_state_dict({f"model.{name}": value for name, value in silent.items()})
    model.load_state_dict(silent)
    try:
        for image in images:
            boxes, scores, classes, masks = loaded(image)
            assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
            assert masks.shape == (0, *image.shape[1:])
            assert len(eager_outputs(model, image)[0]) == 0
    finally:
        model.load_state_dict(weights)


def test_onnxruntime_matches_eager_on_other_sizes(exported, tmp_path):
    model, _, sample, program = exported
    run = onnxruntime_runner(model, program, sample, tmp_path / "vit.onnx")
    for image in _images(sample, RUN_SIZES):
        assert_same_detections(eager_outputs(model, image), run(image), ExportableDetector(model).output_names)

"""
FCOS exports through the one wrapper (`ExportableDetector` over its own `inference`): the differential test's
shrunk FCOS with its seeded random weights, exported once from the first synthetic image (150 x 180), saved as
.pt2 and in ONNX Runtime, run at two other sizes, gives the eager detections (`assert_same_detections`:
>= 98% matched at IoU > 0.99, same class, score within 1e-3); with class logits pushed far down, the same
program returns empty outputs without failing.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from export_checks import assert_same_detections, eager_outputs, onnxruntime_runner

from detlib.export import ExportableDetector, export_program, min_image_side

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))
from harness import random_weights, synthetic_batch  # noqa: E402
from test_fcos import NUM_CLASSES, WEIGHTS, build  # noqa: E402

RUN_SIZES = [(176, 144), (144, 224)]


def _images(sample: torch.Tensor):
    return [
        F.interpolate(sample[None].float(), size=size, mode="bilinear")[0].round().clamp(0, 255).to(torch.uint8)
        for size in RUN_SIZES
    ]


@pytest.fixture(scope="module")
def exported():
    """(eager model, its weights, the sample image, its ExportedProgram), once per module."""
    model = build("detlib")
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    weights = {name: torch.from_numpy(value) for name, value in random_weights(shapes, 0, WEIGHTS).items()}
    model.load_state_dict(weights)
    model.eval()
    sample = torch.from_numpy(synthetic_batch(0, NUM_CLASSES)[0].image)
    return model, weights, sample, export_program(model, sample)


def test_fcos_saved_program_matches_eager_and_handles_no_detection(exported, tmp_path):
    model, weights, sample, program = exported
    names = ExportableDetector(model).output_names
    assert names == ("boxes", "scores", "classes")
    assert min(min(size) for size in RUN_SIZES) >= min_image_side(model) == 129
    torch.export.save(program, tmp_path / "fcos.pt2")
    loaded = torch.export.load(tmp_path / "fcos.pt2").module()
    images = _images(sample)
    for image in images:
        expected = eager_outputs(model, image)
        assert len(expected[0]) > 10  # enough detections for the comparison to mean something
        assert_same_detections(expected, loaded(image), names)

    # The same program with every class logit at -30: sqrt(sigmoid * centerness) < 1e-6, below the threshold.
    silent = {**weights, "head.cls_score.bias": torch.full_like(weights["head.cls_score.bias"], -30.0)}
    loaded.load_state_dict({f"model.{name}": value for name, value in silent.items()})
    model.load_state_dict(silent)
    try:
        for image in images:
            boxes, scores, classes = loaded(image)
            assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
            assert len(eager_outputs(model, image)[0]) == 0
    finally:
        model.load_state_dict(weights)


def test_fcos_onnxruntime_matches_eager_on_other_sizes(exported, tmp_path):
    model, _, sample, program = exported
    run = onnxruntime_runner(model, program, sample, tmp_path / "fcos.onnx")
    for image in _images(sample):
        expected = eager_outputs(model, image)
        assert len(expected[0]) > 10
        assert_same_detections(expected, run(image), ExportableDetector(model).output_names)

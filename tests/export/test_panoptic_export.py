"""
Panoptic FPN exports through the one wrapper: the differential tests' shrunk Panoptic FPN with its seeded random
weights, exported from one image size and run at two others, as a saved .pt2 and in ONNX Runtime, gives the eager
detections and masks, the eager "sem_seg" (argmax equal on >= 99.9% of the pixels), and, combined outside the
program, the eager "panoptic_seg". (SemanticSegmentor's "sem_seg" is the same output of the same wrapper.)
"""

import sys
from pathlib import Path
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F
from export_checks import assert_same_detections, eager_outputs, onnxruntime_runner

from detlib.export import ExportableDetector, export_program, min_image_side
from detlib.modeling import build_model, combine_semantic_and_instance_outputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))
from harness import random_weights, synthetic_batch  # noqa: E402
from test_panoptic_fpn import CASE  # noqa: E402

# Sizes other than the sample's (the first synthetic image, 150 x 180).
RUN_SIZES = [(176, 144), (144, 224)]


def _sample() -> torch.Tensor:
    return torch.from_numpy(synthetic_batch(0, num_classes=3)[0].image)


@pytest.fixture(scope="module")
def exported():
    """(eager model, its ExportedProgram), once per module."""
    model = build_model(CASE.detlib_config())
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    weights = random_weights(shapes, 0, CASE)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
    model.combine_stuff_area_thresh = 16  # these small images' stuff regions make segments too
    model.eval()
    return model, export_program(model, _sample())


def _images():
    sample = _sample()[None].float()
    return [
        F.interpolate(sample, size=size, mode="bilinear")[0].round().clamp(0, 255).to(torch.uint8) for size in RUN_SIZES
    ]


def _assert_matches_eager(model: torch.nn.Module, image: torch.Tensor, actual: Sequence[torch.Tensor]) -> None:
    names = ExportableDetector(model).output_names
    assert names == ("boxes", "scores", "classes", "masks", "sem_seg")
    expected = eager_outputs(model, image)
    assert len(expected[0]) > 10  # enough detections for the comparison to mean something
    assert_same_detections(expected, actual, names)
    sem_seg, got_sem_seg = expected[names.index("sem_seg")], actual[names.index("sem_seg")]
    assert got_sem_seg.shape == sem_seg.shape == (4, *image.shape[1:])
    assert (got_sem_seg.argmax(0) == sem_seg.argmax(0)).float().mean() >= 0.999

    masks, scores, classes = (actual[names.index(n)] for n in ("masks", "scores", "classes"))
    thresholds = (model.combine_overlap_thresh, model.combine_stuff_area_thresh, model.combine_instances_score_thresh)
    ids, segments = combine_semantic_and_instance_outputs(masks, scores, classes, got_sem_seg.argmax(0), *thresholds)
    with torch.no_grad():
        eager_ids, eager_segments = model([{"image": image}])[0]["panoptic_seg"]
    assert any(s["isthing"] for s in eager_segments) and not all(s["isthing"] for s in eager_segments)
    fields = [[(s["id"], s["isthing"], s["category_id"]) for s in found] for found in (segments, eager_segments)]
    assert fields[0] == fields[1]
    assert (ids == eager_ids).float().mean() >= 0.999


def test_saved_program_matches_eager_on_other_sizes(exported, tmp_path):
    model, program = exported
    assert min(min(size) for size in RUN_SIZES) >= min_image_side(model)
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    for image in _images():
        _assert_matches_eager(model, image, loaded(image))


def test_onnxruntime_matches_eager_on_other_sizes(exported, tmp_path):
    model, program = exported
    run = onnxruntime_runner(model, program, _sample(), tmp_path / "model.onnx")
    for image in _images():
        _assert_matches_eager(model, image, run(image))

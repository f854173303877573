"""
Panoptic FPN exports through the one wrapper: the differential tests' shrunk Panoptic FPN with its seeded random
weights, exported from one image size as a saved .pt2 and run at two others, gives the eager detections and masks,
the eager "sem_seg" (argmax equal on >= 99.9% of the pixels), and, combined outside the program, the eager
"panoptic_seg". (SemanticSegmentor's "sem_seg" is the same output of the same wrapper.)
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from export_checks import assert_same_detections, eager_outputs

from detlib.export import ExportableDetector, export_program, min_image_side
from detlib.modeling import build_model, combine_semantic_and_instance_outputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))
from harness import random_weights, synthetic_batch  # noqa: E402
from test_panoptic_fpn import CASE  # noqa: E402

# Sizes other than the sample's (the first synthetic image, 150 x 180).
RUN_SIZES = [(176, 144), (144, 224)]


def _model() -> torch.nn.Module:
    model = build_model(CASE.detlib_config())
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    weights = random_weights(shapes, 0, CASE)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
    model.combine_stuff_area_thresh = 16  # these small images' stuff regions make segments too
    return model.eval()


def _resized(image: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(image[None].float(), size=size, mode="bilinear")[0].round().clamp(0, 255).to(torch.uint8)


def test_saved_program_matches_eager_on_other_sizes(tmp_path):
    model = _model()
    sample = torch.from_numpy(synthetic_batch(0, num_classes=3)[0].image)
    names = ExportableDetector(model).output_names
    assert names == ("boxes", "scores", "classes", "masks", "sem_seg")
    assert min(min(size) for size in RUN_SIZES) >= min_image_side(model)
    torch.export.save(export_program(model, sample), tmp_path / "model.pt2")
    program = torch.export.load(tmp_path / "model.pt2").module()
    for size in RUN_SIZES:
        image = _resized(sample, size)
        expected, actual = eager_outputs(model, image), program(image)
        assert len(expected[0]) > 10  # enough detections for the comparison to mean something
        assert_same_detections(expected, actual, names)
        sem_seg, got_sem_seg = expected[names.index("sem_seg")], actual[names.index("sem_seg")]
        assert got_sem_seg.shape == sem_seg.shape == (4, *size)
        assert (got_sem_seg.argmax(0) == sem_seg.argmax(0)).float().mean() >= 0.999

        masks, scores, classes = (actual[names.index(n)] for n in ("masks", "scores", "classes"))
        thresholds = (model.combine_overlap_thresh, model.combine_stuff_area_thresh)
        thresholds += (model.combine_instances_score_thresh,)
        ids, segments = combine_semantic_and_instance_outputs(
            masks, scores, classes, got_sem_seg.argmax(0), *thresholds
        )
        with torch.no_grad():
            eager_ids, eager_segments = model([{"image": image}])[0]["panoptic_seg"]
        assert any(s["isthing"] for s in eager_segments) and not all(s["isthing"] for s in eager_segments)
        assert [(s["id"], s["isthing"], s["category_id"]) for s in segments] == [
            (s["id"], s["isthing"], s["category_id"]) for s in eager_segments
        ]
        assert (ids == eager_ids).float().mean() >= 0.999

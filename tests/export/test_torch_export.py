"""torch.export of parity case A's Mask / Faster R-CNN: saved, loaded and run on other image sizes, it gives
the eager model's detections, also when none survives; on CUDA too when a GPU is present."""

import pytest
import torch
from export_checks import RUN_SIZES, SAMPLE_SIZE, assert_same_detections, eager_outputs

from detlib.export import export_program


@pytest.mark.parametrize("mask_on", [True, False], ids=["mask_rcnn", "faster_rcnn"])
def test_saved_program_matches_eager_on_other_sizes(exported, case_images, mask_on, tmp_path):
    model, program = exported(mask_on)
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    for image in case_images(RUN_SIZES):
        expected = eager_outputs(model, image)
        assert len(expected[0]) > 10  # enough detections for the comparison to mean something
        actual = loaded(image)
        assert_same_detections(expected, actual)
        if mask_on:
            assert actual[3].shape == (len(actual[0]), *image.shape[1:])


def test_no_detection_gives_empty_outputs(exported, case_images):
    model, program = exported(True, score_thresh=1.0)
    for image in case_images(RUN_SIZES):
        boxes, scores, classes, masks = program.module()(image)
        assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
        assert masks.shape == (0, *image.shape[1:])
        assert len(eager_outputs(model, image)[0]) == 0


def test_rejects_a_float_sample(case_model):
    with pytest.raises(ValueError, match="uint8"):
        export_program(case_model(False), torch.zeros(3, *SAMPLE_SIZE))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_program_matches_eager(case_model, case_images):
    model = case_model(True).cuda()
    program = export_program(model, case_images([SAMPLE_SIZE])[0].cuda())
    for image in case_images(RUN_SIZES):
        image = image.cuda()
        expected = [t.cpu() for t in eager_outputs(model, image)]
        assert_same_detections(expected, [t.cpu() for t in program.module()(image)])

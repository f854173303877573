"""Fixtures of the export tests: the parity case's model (Mask or Faster R-CNN), small test images, and the
programs exported from them."""

from typing import Callable, List, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from export_checks import SAMPLE_SIZE

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import get_cfg
from detlib.modeling import build_model


@pytest.fixture(scope="session")
def case_model(d2_case) -> Callable[..., torch.nn.Module]:
    """`case_model(mask_on, score_thresh=None)`: parity case A's model with its stored weights, in eval mode."""

    def build(mask_on: bool, score_thresh: float = None) -> torch.nn.Module:
        cfg = get_cfg()
        cfg.merge_from_file(str(d2_case / "config.yaml"))
        cfg.MODEL.MASK_ON = mask_on
        if score_thresh is not None:
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
        model = build_model(cfg)
        DetectionCheckpointer(model).load(str(d2_case / "model.pkl"))
        return model.eval()

    return build


@pytest.fixture(scope="session")
def case_images(d2_case) -> Callable[[Sequence], List[torch.Tensor]]:
    """`case_images(sizes)`: the parity case's input images (uint8 BGR) resized to each (height, width)."""
    stored = np.load(d2_case / "expected_inference.npz")
    sources = [torch.from_numpy(stored[k]) for k in sorted(stored.files) if k.endswith("__input_image_chw_bgr_uint8")]

    def resize(sizes: Sequence) -> List[torch.Tensor]:
        images = []
        for i, size in enumerate(sizes):
            image = sources[i % len(sources)][None].float()
            image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)
            images.append(image[0].round().clamp(0, 255).to(torch.uint8))
        return images

    return resize


@pytest.fixture(scope="session")
def exported(case_model, case_images):
    """`exported(mask_on, score_thresh=None)`: (eager model, its ExportedProgram from a SAMPLE_SIZE image),
    exported once per session: the ONNX tests convert the same programs."""
    from detlib.export import export_program

    cache = {}

    def get(mask_on: bool, score_thresh: float = None):
        key = (mask_on, score_thresh)
        if key not in cache:
            model = case_model(mask_on, score_thresh)
            cache[key] = model, export_program(model, case_images([SAMPLE_SIZE])[0])
        return cache[key]

    return get

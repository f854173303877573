"""`tools/demo.py`: one PNG per input image, at the input's size, with the predictions drawn."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detlib.config import get_cfg
from detlib.data.datasets.shapes import ShapesSpec, render_shapes_image
from detlib.modeling import build_model

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "Shapes" / "mask_rcnn_shapes.yaml"


def _load_demo():
    spec = importlib.util.spec_from_file_location("detlib_demo_tool", REPO / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An untrained Shapes Mask R-CNN: its detections are arbitrary but there are some to draw."""
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("demo_weights") / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


@pytest.fixture
def images(tmp_path) -> list:
    """Two shapes images (BGR PNGs), one of them not square and not at the model's input size."""
    paths = []
    for name, size in (("square", (128, 128)), ("wide", (96, 160))):
        image, _ = render_shapes_image(ShapesSpec(num_images=1, seed=3, image_size=size), 0)
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), image[:, :, ::-1])
    return paths


def _run_demo(weights, images, output_dir, threshold, *extra):
    _load_demo().main(
        [
            "--config-file",
            str(CONFIG),
            "--input",
            *map(str, images),
            "--output",
            str(output_dir),
            "--confidence-threshold",
            str(threshold),
            *extra,
            "--opts",
            "MODEL.WEIGHTS",
            str(weights),
            "MODEL.DEVICE",
            "cpu",
        ]
    )


def test_demo_draws_predictions_into_pngs(weights, images, tmp_path):
    output_dir = tmp_path / "drawn"
    _run_demo(weights, images, output_dir, threshold=0.0)  # every detection is drawn
    for image_path in images:
        original = cv2.imread(str(image_path))
        drawn = cv2.imread(str(output_dir / image_path.name))
        assert drawn is not None, f"no PNG written for {image_path.name}"
        assert drawn.shape == original.shape
        assert np.any(drawn != original), f"nothing drawn on {image_path.name}"


def test_demo_without_detections_leaves_images_unchanged(weights, images, tmp_path):
    output_dir = tmp_path / "drawn"
    _run_demo(weights, images, output_dir, threshold=1.01)  # no score can pass
    for image_path in images:
        np.testing.assert_array_equal(cv2.imread(str(output_dir / image_path.name)), cv2.imread(str(image_path)))


def test_demo_scale_enlarges_the_drawing(weights, images, tmp_path):
    output_dir = tmp_path / "drawn"
    _run_demo(weights, images, output_dir, 1.01, "--scale", "3")
    for image_path in images:
        original = cv2.imread(str(image_path))
        drawn = cv2.imread(str(output_dir / image_path.name))
        assert drawn.shape == (3 * original.shape[0], 3 * original.shape[1], 3)
        # Nothing is drawn, so the picture is the input with each pixel repeated 3 x 3 times.
        np.testing.assert_array_equal(drawn[1::3, 1::3], original)

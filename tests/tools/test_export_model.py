"""`tools/deploy/export_model.py`: parity case A's Faster R-CNN from its config and weights, exported to a .pt2
that, loaded, gives the eager model's detections on an image of another size."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from detlib.checkpoint import DetectionCheckpointer
from detlib.export.inputs import load_test_image
from detlib.modeling import build_model

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "export"))
from export_checks import assert_same_detections, eager_outputs  # noqa: E402


def _load_tool():
    spec = importlib.util.spec_from_file_location("detlib_export_tool", REPO / "tools" / "deploy" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(d2_case, output, image, fmt="pt2"):
    return [
        "--config-file", str(d2_case / "config.yaml"), "--format", fmt, "--output", str(output),
        "--sample-image", str(image),
        "MODEL.WEIGHTS", str(d2_case / "model.pkl"), "MODEL.MASK_ON", "False",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
    ]  # fmt: skip


def test_pt2_from_config_and_weights(d2_case, tmp_path):
    tool = _load_tool()
    path = tool.main(_argv(d2_case, tmp_path / "out", d2_case / "images" / "img0_480x640.png"))
    assert path == tmp_path / "out" / "model.pt2" and not list((tmp_path / "out").glob("*.partial*"))
    program = torch.export.load(path).module()

    cfg = tool.get_cfg()
    cfg.merge_from_file(str(d2_case / "config.yaml"))
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "112", "INPUT.MAX_SIZE_TEST", "200"])
    image = load_test_image(cfg, str(d2_case / "images" / "img2_640x427.png"))
    assert image.shape[1:] == (168, 112)
    cfg.MODEL.MASK_ON = False
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(d2_case / "model.pkl"))
    assert_same_detections(eager_outputs(model, image), program(image))


def test_missing_sample_image_is_named(d2_case, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        _load_tool().main(_argv(d2_case, tmp_path, tmp_path / "nothere.png"))

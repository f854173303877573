"""Caffe2-named ImageNet ResNets (Detectron2's `ImageNetPretrained/MSRA/R-50.pkl` layout) load into
an R50-FPN. The file is built here from a detlib ResNet's state dict by the inverse naming, written
out by hand from Detectron's naming scheme."""

import logging
import pickle
import re

import numpy as np
import pytest
import torch

from detlib.checkpoint import DetectionCheckpointer
from detlib.checkpoint.caffe2_names import convert_caffe2_names
from detlib.config import get_cfg
from detlib.model_zoo import get_config_file
from detlib.modeling import build_model

_BRANCH = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}
_FIELD = {"weight": "s", "bias": "b"}


def caffe2_name(detlib_name: str) -> str:
    """Detectron's name for a ResNet-relative detlib parameter name (weights and affine norms)."""
    if detlib_name == "stem.conv1.weight":
        return "conv1_w"
    if m := re.fullmatch(r"stem\.conv1\.norm\.(weight|bias)", detlib_name):
        return f"res_conv1_bn_{_FIELD[m[1]]}"
    if m := re.fullmatch(r"res(\d)\.(\d+)\.(shortcut|conv\d)\.weight", detlib_name):
        return f"res{m[1]}_{m[2]}_{_BRANCH[m[3]]}_w"
    if m := re.fullmatch(r"res(\d)\.(\d+)\.(shortcut|conv\d)\.norm\.(weight|bias)", detlib_name):
        return f"res{m[1]}_{m[2]}_{_BRANCH[m[3]]}_bn_{_FIELD[m[4]]}"
    raise AssertionError(f"no Caffe2 name for {detlib_name}")


@pytest.fixture(scope="module")
def r50_fpn():
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return build_model(cfg)


def _caffe2_blobs(model):
    """Random values, shaped like the model's ResNet, under Caffe2 names; plus the ImageNet classifier."""
    rng = np.random.default_rng(0)
    blobs = {}
    for name, value in model.backbone.bottom_up.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # MSRA's files fold the statistics into the scale and bias
        blobs[caffe2_name(name)] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, dtype=np.float32)
    return blobs


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "blobs"])
def test_a_caffe2_r50_loads_into_every_backbone_tensor_of_r50_fpn(r50_fpn, tmp_path, wrapped, caplog):
    blobs = _caffe2_blobs(r50_fpn)
    assert len(blobs) == 159 + 2  # 159 backbone tensors, and the classifier
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs} if wrapped else blobs, protocol=2))

    checkpointer = DetectionCheckpointer(r50_fpn)
    with caplog.at_level(logging.INFO, logger="detlib.checkpoint"):
        checkpointer.load(str(path))

    state = r50_fpn.state_dict()
    set_names = []
    for name, value in r50_fpn.backbone.bottom_up.state_dict().items():
        full = "backbone.bottom_up." + name
        # No statistics in the file: the frozen norms take identity ones (mean 0, variance 1, as
        # Detectron2's FrozenBatchNorm2d does for files without them).
        if name.endswith("running_mean"):
            assert torch.equal(state[full], torch.zeros_like(value)), full
        elif name.endswith("running_var"):
            assert torch.equal(state[full], torch.ones_like(value)), full
        elif not name.endswith("num_batches_tracked"):
            assert torch.equal(state[full], torch.from_numpy(blobs[caffe2_name(name)])), full
            set_names.append(full)
    assert len(set_names) == 159
    keys = checkpointer.incompatible_keys
    assert keys.unexpected == [] and keys.shape_mismatch == []
    assert not [k for k in keys.missing if k.startswith("backbone.bottom_up.")]
    assert "fc1000_w" in caplog.text  # dropped, and said so


def test_unknown_caffe2_names_are_reported_as_unexpected(r50_fpn, tmp_path):
    blobs = _caffe2_blobs(r50_fpn)
    blobs["fpn_inner_res5_2_sum_w"] = np.zeros((256, 2048, 1, 1), dtype=np.float32)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(blobs))
    checkpointer = DetectionCheckpointer(r50_fpn)
    checkpointer.load(str(path))
    assert checkpointer.incompatible_keys.unexpected == ["fpn_inner_res5_2_sum_w"]


def test_norm_statistics_and_group_norm_names_convert():
    names = ["conv1_w", "res_conv1_bn_rm", "res_conv1_bn_riv", "res3_1_branch2b_gn_s", "res4_0_branch1_b"]
    names.append("x_momentum")
    converted = convert_caffe2_names({n: np.zeros(1) for n in names})
    assert sorted(converted) == [
        "res3.1.conv2.norm.weight",
        "res4.0.shortcut.bias",
        "stem.conv1.norm.running_mean",
        "stem.conv1.norm.running_var",
        "stem.conv1.weight",
    ]

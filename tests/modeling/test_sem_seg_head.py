"""SemSegFPNHead: its loss against a cross-entropy computed by hand, its logits against its layers applied by
hand, Detectron2's parameter names, and its configuration errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detlib.config import get_cfg
from detlib.layers import ShapeSpec
from detlib.modeling import SEM_SEG_HEADS_REGISTRY, SemSegFPNHead, build_sem_seg_head
from detlib.modeling.sem_seg_heads import sem_seg_loss

FPN_SHAPES = {f"p{level}": ShapeSpec(channels=8, stride=2**level) for level in (2, 3, 4, 5)}


def _by_hand_cross_entropy(logits: np.ndarray, targets: np.ndarray, ignore: int) -> float:
    total, count = 0.0, 0
    for n, y, x in np.ndindex(*targets.shape):
        label = targets[n, y, x]
        if label == ignore:
            continue
        scores = logits[n, :, y, x].astype(np.float64)
        total += math.log(np.exp(scores).sum()) - scores[label]
        count += 1
    return total / count


def test_loss_is_mean_cross_entropy_over_pixels_not_ignored():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=generator)
    targets = torch.randint(0, 3, (2, 4, 5), generator=generator)
    targets[0, :2] = 255
    targets[1, :, 0] = 255
    expected = _by_hand_cross_entropy(logits.numpy(), targets.numpy(), 255)
    assert sem_seg_loss(logits, targets, 255).item() == pytest.approx(expected, rel=1e-5)


def test_loss_of_an_image_all_ignored_is_zero():
    loss = sem_seg_loss(torch.randn(1, 3, 4, 4, requires_grad=True), torch.full((1, 4, 4), 255), 255)
    assert loss.item() == 0.0


def _head(**kwargs) -> SemSegFPNHead:
    args = dict(num_classes=3, conv_dims=32, common_stride=4, norm="GN", ignore_value=255, loss_weight=0.5)
    return SemSegFPNHead(FPN_SHAPES, **{**args, **kwargs})


def test_parameter_names_are_detectron2s():
    # Detectron2's layout: one Sequential per feature, named by it, a convolution at each even index
    # (upsamplings between), its GroupNorm as `.norm`; no biases with a norm.
    names = set(_head().state_dict())
    convs = {"p2": [0], "p3": [0], "p4": [0, 2], "p5": [0, 2, 4]}
    expected = {"predictor.weight", "predictor.bias"}
    for feature, indices in convs.items():
        for i in indices:
            expected |= {f"{feature}.{i}.weight", f"{feature}.{i}.norm.weight", f"{feature}.{i}.norm.bias"}
    assert names == expected


def test_logits_and_loss_are_its_layers_applied_by_hand():
    torch.manual_seed(0)
    head = _head(norm="").eval()
    features = {name: torch.randn(2, 8, 64 // s.stride, 96 // s.stride) for name, s in FPN_SHAPES.items()}
    up = dict(scale_factor=2, mode="bilinear", align_corners=False)
    summed = 0
    for name, convs in (("p2", 1), ("p3", 1), ("p4", 2), ("p5", 3)):
        x = features[name]
        for k in range(convs):
            conv = getattr(head, name)[2 * k]
            x = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1))
            if name != "p2":
                x = F.interpolate(x, **up)
        summed = summed + x
    expected = F.conv2d(summed, head.predictor.weight, head.predictor.bias)
    expected = F.interpolate(expected, scale_factor=4, mode="bilinear", align_corners=False)
    logits, losses = head(features)
    assert logits.shape == (2, 3, 64, 96) and losses == {}
    torch.testing.assert_close(logits, expected)

    targets = torch.randint(0, 3, (2, 64, 96))
    targets[:, :10] = 255
    _, losses = head.train()(features, targets)
    assert losses.keys() == {"loss_sem_seg"}
    torch.testing.assert_close(losses["loss_sem_seg"], 0.5 * F.cross_entropy(expected, targets, ignore_index=255))


def test_built_from_config_with_detectron2s_keys():
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 7
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 0.25
    cfg.MODEL.LOSS_WEIGHTS.loss_sem_seg = 2.0
    head = build_sem_seg_head(cfg, FPN_SHAPES)
    assert isinstance(head, SEM_SEG_HEADS_REGISTRY.get("SemSegFPNHead"))
    assert head.in_features == ["p2", "p3"] and head.ignore_value == 7 and head.loss_weight == 0.5
    assert head.predictor.weight.shape == (5, 32, 1, 1)
    assert isinstance(head.p2[0].norm, torch.nn.GroupNorm)


def test_configuration_errors_name_the_problem():
    with pytest.raises(ValueError, match="stride 4, below COMMON_STRIDE 8"):
        _head(common_stride=8)
    with pytest.raises(ValueError, match="at least one input feature"):
        SemSegFPNHead({}, num_classes=3, conv_dims=16, common_stride=4)
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p7"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_sem_seg_head(cfg, FPN_SHAPES)

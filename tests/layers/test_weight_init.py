"""Caffe2-style initializations: their distributions against the formulas they implement."""

import math

import torch
import torch.nn as nn

from detlib.layers.weight_init import c2_msra_fill, c2_xavier_fill


def test_c2_msra_fill_is_normal_with_fan_out_std():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, kernel_size=3)
    c2_msra_fill(conv)
    expected_std = math.sqrt(2.0 / (128 * 3 * 3))
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02
    assert abs(conv.weight.mean().item()) < 0.05 * expected_std
    assert torch.all(conv.bias == 0)


def test_c2_xavier_fill_is_uniform_with_fan_in_bound():
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 64, kernel_size=3)
    c2_xavier_fill(conv)
    bound = math.sqrt(3.0 / (128 * 3 * 3))
    w = conv.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.02
    assert torch.all(conv.bias == 0)


def test_fills_accept_bias_free_layers():
    conv = nn.Conv2d(4, 4, 1, bias=False)
    c2_msra_fill(conv)
    c2_xavier_fill(conv)
    assert conv.bias is None

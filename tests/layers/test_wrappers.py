"""Conv2d with norm and activation, and the small tensor helpers of detlib.layers.wrappers."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from detlib.layers import (
    Conv2d,
    FrozenBatchNorm2d,
    cat,
    cross_entropy,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)


def test_conv2d_applies_conv_norm_activation_in_order():
    torch.manual_seed(0)
    conv = Conv2d(3, 4, kernel_size=3, padding=1, stride=2, bias=False, norm=nn.GroupNorm(2, 4), activation=F.relu)
    x = torch.randn(2, 3, 9, 9)
    expected = F.relu(
        F.group_norm(F.conv2d(x, conv.weight, None, stride=2, padding=1), 2, conv.norm.weight, conv.norm.bias)
    )
    torch.testing.assert_close(conv(x), expected)
    assert sorted(conv.state_dict()) == ["norm.bias", "norm.weight", "weight"]


def test_conv2d_without_norm_is_plain_conv():
    torch.manual_seed(0)
    conv = Conv2d(3, 4, kernel_size=1)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias))
    assert conv.norm is None and conv.activation is None


def test_conv2d_empty_batch():
    conv = Conv2d(3, 4, kernel_size=3, padding=1, norm=nn.BatchNorm2d(4)).eval()
    assert conv(torch.zeros(0, 3, 5, 5)).shape == (0, 4, 5, 5)
    sync = Conv2d(3, 4, kernel_size=3, padding=1, norm=nn.SyncBatchNorm(4)).train()
    with pytest.raises(ValueError, match="empty"):
        sync(torch.zeros(0, 3, 5, 5))


def test_cat():
    a = torch.arange(3)
    assert cat([a]) is a
    assert torch.equal(cat([a, a + 3]), torch.arange(6))
    assert cat([a[None], a[None]], dim=1).shape == (1, 6)
    with pytest.raises(TypeError, match="list or tuple"):
        cat(a)


def test_nonzero_tuple():
    x = torch.tensor([[0, 1, 0], [2, 0, 3]])
    rows, cols = nonzero_tuple(x)
    assert rows.tolist() == [0, 1, 1] and cols.tolist() == [1, 0, 2]
    (index,) = nonzero_tuple(torch.tensor(5))
    assert index.tolist() == [0]
    (index,) = nonzero_tuple(torch.tensor(0))
    assert index.numel() == 0


def test_shapes_to_tensor_and_move_device_like():
    assert shapes_to_tensor([3, 4]).tolist() == [3, 4]
    stacked = shapes_to_tensor([torch.tensor(3), torch.tensor(4)])
    assert stacked.tolist() == [3, 4]
    dst = torch.zeros(1, dtype=torch.float64)
    moved = move_device_like(torch.ones(2), dst)
    assert moved.device == dst.device and moved.dtype == torch.float32


def test_cross_entropy_empty_batch_is_zero_with_gradient():
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.shape == (0, 3)
    full = torch.tensor([[2.0, 0.0, 0.0]])
    torch.testing.assert_close(
        cross_entropy(full, torch.tensor([0])),
        -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 2)),
    )


def _conv_with_frozen_norm(bias: bool, seed: int = 0) -> Conv2d:
    """A conv + FrozenBatchNorm2d + ReLU with random weights and non-trivial statistics."""
    g = torch.Generator().manual_seed(seed)
    conv = Conv2d(5, 7, 3, padding=1, bias=bias, norm=FrozenBatchNorm2d(7), activation=F.relu)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        if bias:
            conv.bias.copy_(torch.randn(7, generator=g))
        conv.norm.weight.copy_(torch.rand(7, generator=g) + 0.5)
        conv.norm.bias.copy_(torch.randn(7, generator=g))
        conv.norm.running_mean.copy_(torch.randn(7, generator=g))
        conv.norm.running_var.copy_(torch.rand(7, generator=g) * 3)
    return conv


def _unfolded_reference(conv: Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv, then eval-mode batch norm, then ReLU, by plain torch ops in float64."""
    x, weight = x.double(), conv.weight.double()
    y = F.conv2d(x, weight, None if conv.bias is None else conv.bias.double(), padding=1)
    n = conv.norm
    y = F.batch_norm(
        y,
        n.running_mean.double(),
        n.running_var.double(),
        n.weight.double(),
        n.bias.double(),
        training=False,
        eps=n.eps,
    )
    return F.relu(y)


@pytest.mark.parametrize("bias", [False, True])
def test_frozen_norm_folded_in_eval_without_grad_equals_unfolded(bias):
    conv = _conv_with_frozen_norm(bias).eval()
    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert conv._folds_norm(x)
        folded = conv(x)
    with torch.enable_grad():
        assert not conv._folds_norm(x)
        unfolded = conv(x)
    reference = _unfolded_reference(conv, x)
    torch.testing.assert_close(folded.double(), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unfolded.double(), reference, rtol=1e-5, atol=1e-5)


def test_frozen_norm_fold_follows_changed_weights_and_keeps_state_dict():
    conv = _conv_with_frozen_norm(bias=False).eval()
    names = set(conv.state_dict())
    x = torch.randn(1, 5, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        conv(x)
        conv.norm.running_mean.add_(1.0)  # a changed statistic must be used at once: nothing stale is cached
        conv.weight.mul_(2.0)
        after = conv(x)
    torch.testing.assert_close(after.double(), _unfolded_reference(conv, x), rtol=1e-5, atol=1e-5)
    assert (
        set(conv.state_dict())
        == names
        == {"weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"}
    )


def test_frozen_norm_not_folded_in_training_or_with_grad():
    conv = _conv_with_frozen_norm(bias=False).train()
    x = torch.randn(1, 5, 6, 6, generator=torch.Generator().manual_seed(3))
    assert not conv._folds_norm(x)
    with torch.no_grad():
        assert not conv._folds_norm(x)
    conv.eval()
    assert not conv._folds_norm(x)
    out = conv(x.clone().requires_grad_())
    out.sum().backward()
    assert conv.weight.grad is not None


def test_norms_other_than_frozen_are_not_folded():
    conv = Conv2d(5, 7, 3, padding=1, norm=nn.BatchNorm2d(7)).eval()
    with torch.no_grad():
        assert not conv._folds_norm(torch.zeros(1, 5, 4, 4))

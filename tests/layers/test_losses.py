import math

import pytest
import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from detlib.layers.losses import (
    BOX_LOSS_REGISTRY,
    BoxLoss,
    BoxLossKind,
    build_box_loss,
    check_loss_weights,
    ciou_loss,
    diou_loss,
    giou_loss,
    smooth_l1_loss,
)

# Two squares: [0, 0, 2, 2] and [1, 1, 3, 3]. Intersection 1, union 7, enclosing box [0, 0, 3, 3]
# of area 9 and squared diagonal 18; centers (1, 1) and (2, 2), squared distance 2.
A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])


def test_smooth_l1_by_hand():
    x = torch.tensor([0.0, 0.5, -2.0])
    target = torch.zeros(3)
    # beta 1: 0.5 * x**2 below 1, |x| - 0.5 above.
    torch.testing.assert_close(smooth_l1_loss(x, target, beta=1.0), torch.tensor([0.0, 0.125, 1.5]))
    torch.testing.assert_close(smooth_l1_loss(x, target, beta=0.0), torch.tensor([0.0, 0.5, 2.0]))
    torch.testing.assert_close(smooth_l1_loss(x, target, beta=1.0, reduction="sum"), torch.tensor(1.625))
    torch.testing.assert_close(smooth_l1_loss(x[:0], target[:0], beta=1.0, reduction="mean"), torch.tensor(0.0))


def test_iou_losses_by_hand():
    torch.testing.assert_close(giou_loss(A, B), torch.tensor([1 - 1 / 7 + (9 - 7) / 9]))
    torch.testing.assert_close(diou_loss(A, B), torch.tensor([1 - 1 / 7 + 2 / 18]))
    # Same aspect ratio: the CIoU term v is 0.
    torch.testing.assert_close(ciou_loss(A, B), diou_loss(A, B))
    # [0, 0, 2, 2] vs [0, 0, 2, 4]: IoU 1/2, enclosing diagonal**2 = 20, center distance**2 = 1.
    tall = torch.tensor([[0.0, 0.0, 2.0, 4.0]])
    v = 4 / math.pi**2 * (math.atan(2 / 4) - math.atan(2 / 2)) ** 2
    alpha = v / (1 - 0.5 + v)
    torch.testing.assert_close(ciou_loss(A, tall), torch.tensor([1 - 0.5 + 1 / 20 + alpha * v]))


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 0.5], dim=1)


@pytest.mark.parametrize(
    "ours, theirs",
    [(giou_loss, generalized_box_iou_loss), (diou_loss, distance_box_iou_loss), (ciou_loss, complete_box_iou_loss)],
)
def test_iou_losses_match_torchvision(ours, theirs):
    pred, target = _random_boxes(200, 0), _random_boxes(200, 1)
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(ours(pred, target, reduction), theirs(pred, target, reduction))
    pred.requires_grad_(True)
    pred_tv = pred.detach().clone().requires_grad_(True)
    ours(pred, target, "sum").backward()
    theirs(pred_tv, target, "sum").backward()
    torch.testing.assert_close(pred.grad, pred_tv.grad, rtol=1e-4, atol=1e-6)


def test_registered_losses_and_parameters():
    assert {"smooth_l1", "l1", "giou", "diou", "ciou"} <= {name for name, _ in BOX_LOSS_REGISTRY}
    assert build_box_loss("smooth_l1").params == {"beta": 0.0}
    assert build_box_loss("l1").params == {}
    assert build_box_loss("ciou").params == {"eps": 1e-7}
    pred, target = torch.tensor([[0.5, -2.0, 0.0, 0.0]]), torch.zeros(1, 4)
    assert build_box_loss("smooth_l1").kind is BoxLossKind.DELTAS
    torch.testing.assert_close(build_box_loss("smooth_l1", beta=1.0)(pred, target), torch.tensor(0.125 + 1.5))
    torch.testing.assert_close(build_box_loss("l1")(pred, target), torch.tensor(2.5))
    giou = build_box_loss("giou")
    assert giou.kind is BoxLossKind.BOXES
    torch.testing.assert_close(giou(A, B), giou_loss(A, B).sum())


def test_check_loss_weights():
    assert check_loss_weights("Head", 2, ["a", "b"]) == {"a": 2.0, "b": 2.0}
    assert check_loss_weights("Head", {"b": 0.5}, ["a", "b"]) == {"a": 1.0, "b": 0.5}
    with pytest.raises(ValueError, match=r"Head: no loss term \['c'\] to weight; its terms are \['a', 'b'\]"):
        check_loss_weights("Head", {"c": 1.0}, ["a", "b"])
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="Head: the weight of 'a' must be a finite number >= 0"):
            check_loss_weights("Head", {"a": bad}, ["a"])


def test_invalid_settings_fail_with_choices():
    with pytest.raises(KeyError, match=r"'smoth_l1'.*\['ciou', 'diou', 'giou', 'l1', 'smooth_l1'"):
        build_box_loss("smoth_l1")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        build_box_loss("smooth_l1", beta=-0.1)
    with pytest.raises(ValueError, match="beta"):
        build_box_loss("smooth_l1", beta=float("nan"))
    with pytest.raises(ValueError, match="eps must be > 0"):
        build_box_loss("giou", eps=0.0)
    with pytest.raises(TypeError, match=r"no parameter\(s\) \['beta'\].*\{'eps': 1e-07\}"):
        build_box_loss("giou", beta=1.0)
    with pytest.raises(ValueError, match="'pixels' is not a valid BoxLossKind"):
        BoxLoss("bad", "pixels", lambda p, t: p)


def test_user_registered_loss():
    @BOX_LOSS_REGISTRY.register()
    def test_scaled_l1(scale: float = 2.0) -> BoxLoss:
        return BoxLoss("test_scaled_l1", BoxLossKind.DELTAS, lambda p, t: scale * (p - t).abs().sum(), {"scale": scale})

    loss = build_box_loss("test_scaled_l1", scale=3.0)
    torch.testing.assert_close(loss(torch.ones(2, 4), torch.zeros(2, 4)), torch.tensor(24.0))
    assert loss.params == {"scale": 3.0}

import math

import pytest
import torch

from detlib.layers import build_box_loss
from detlib.modeling.box_regression import Box2BoxTransform, dense_box_regression_loss
from detlib.structures import Boxes

SRC = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # center (5, 10), 10 x 20
TARGET = torch.tensor([[5.0, 5.0, 25.0, 45.0]])  # center (15, 25), 20 x 40


def test_known_deltas():
    # dx = (15 - 5) / 10, dy = (25 - 10) / 20, dw = log(20 / 10), dh = log(40 / 20)
    plain = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(plain.get_deltas(SRC, TARGET), torch.tensor([[1.0, 0.75, math.log(2), math.log(2)]]))
    weighted = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    expected = torch.tensor([[10.0, 7.5, 5 * math.log(2), 5 * math.log(2)]])
    torch.testing.assert_close(weighted.get_deltas(SRC, TARGET), expected)
    torch.testing.assert_close(weighted.apply_deltas(expected, SRC), TARGET)


def _random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_round_trips():
    g = torch.Generator().manual_seed(0)
    src, target = _random_boxes(50, g), _random_boxes(50, g)
    transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    deltas = transform.get_deltas(src, target)
    # apply_deltas decodes in float32.
    torch.testing.assert_close(transform.apply_deltas(deltas, src), target.float(), rtol=1e-5, atol=1e-4)
    small_deltas = torch.randn(50, 4, generator=g, dtype=torch.float64)
    decoded = transform.apply_deltas(small_deltas, src).double()
    torch.testing.assert_close(transform.get_deltas(src, decoded), small_deltas, rtol=1e-4, atol=1e-4)


def test_several_boxes_per_source():
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.75, math.log(2), math.log(2)]])
    decoded = transform.apply_deltas(deltas, SRC)
    assert decoded.shape == (1, 8)
    torch.testing.assert_close(decoded, torch.cat([SRC, TARGET], dim=1))


def test_scale_clamp_and_precision():
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    decoded = transform.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 0.0]], dtype=torch.float16), SRC)
    assert decoded.dtype == torch.float32
    # Width clamped to exp(log(1000 / 16)) = 62.5 times the source width, around center x = 5.
    torch.testing.assert_close(decoded, torch.tensor([[5 - 312.5, 0.0, 5 + 312.5, 20.0]]))


def test_degenerate_source_raises():
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(RuntimeError, match="positive width and height"):
        transform.get_deltas(torch.tensor([[0.0, 0.0, 0.0, 10.0]]), TARGET)
    with pytest.raises(ValueError, match="4 weights"):
        Box2BoxTransform(weights=(1.0, 1.0))


def _two_anchor_case():
    # Anchor 0 is foreground with gt equal to itself (gt deltas 0); anchor 1 is background, and its
    # "matched gt" is the all-zero box of an image without gt, whose deltas would be -inf.
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]])), Boxes(torch.tensor([[20.0, 20.0, 30.0, 30.0]]))]
    gt_boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])]
    fg_mask = torch.tensor([[True, False]])
    return anchors, gt_boxes, fg_mask


def test_dense_loss_on_deltas():
    anchors, gt_boxes, fg_mask = _two_anchor_case()
    pred = [torch.tensor([[[0.5, -0.25, 0.0, 0.1]]], requires_grad=True), torch.tensor([[[9.0, 9.0, 9.0, 9.0]]])]
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    loss = dense_box_regression_loss(anchors, transform, pred, gt_boxes, fg_mask, build_box_loss("smooth_l1"))
    torch.testing.assert_close(loss, torch.tensor(0.85))  # |0.5| + |-0.25| + |0| + |0.1|
    # beta 0.5: 0.5 * 0.25**2 / 0.5 + 0.5 * 0.1**2 / 0.5 for the quadratic part, 0.5 - 0.25 for the linear one
    loss_beta = dense_box_regression_loss(
        anchors, transform, pred, gt_boxes, fg_mask, build_box_loss("smooth_l1", beta=0.5)
    )
    torch.testing.assert_close(loss_beta, torch.tensor(0.25 + 0.0625 + 0.01))
    loss.backward()
    assert torch.isfinite(pred[0].grad).all()


def test_dense_loss_on_boxes():
    anchors, gt_boxes, fg_mask = _two_anchor_case()
    gt_boxes = [torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 0.0, 0.0]])]
    pred = [torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)]  # predicted box = anchor [0, 0, 10, 10]
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    # IoU 100 / 200, enclosing box = union: GIoU loss 0.5.
    loss = dense_box_regression_loss(anchors, transform, pred, gt_boxes, fg_mask, build_box_loss("giou"))
    torch.testing.assert_close(loss, torch.tensor(0.5))
    # Plain tensors as anchors and `...` as the mask (every element counts), as the box head calls it.
    one_anchor = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    loss_all = dense_box_regression_loss(
        one_anchor, transform, [torch.zeros(1, 1, 4)], [gt_boxes[0][:1]], ..., build_box_loss("giou")
    )
    torch.testing.assert_close(loss_all, torch.tensor(0.5))

import pytest
import torch
import torch.nn.functional as F

from detlib.config import get_cfg
from detlib.layers import ShapeSpec
from detlib.modeling.roi_heads import MaskRCNNConvUpsampleHead, build_mask_head, mask_rcnn_inference, mask_rcnn_loss
from detlib.structures import BitMasks, Boxes, Instances, PolygonMasks
from detlib.utils.events import EventStorage


def _bce(logits, targets):
    """Binary cross-entropy with logits, from its definition: -t log s(x) - (1 - t) log(1 - s(x))."""
    p = torch.sigmoid(logits.double())
    return -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean()


def test_head_layers_names_and_forward():
    torch.manual_seed(0)
    head = MaskRCNNConvUpsampleHead(ShapeSpec(channels=4), num_classes=3, conv_dims=[5, 5, 6])
    assert list(head.state_dict()) == [
        "mask_fcn1.weight", "mask_fcn1.bias", "mask_fcn2.weight", "mask_fcn2.bias",
        "deconv.weight", "deconv.bias", "predictor.weight", "predictor.bias",
    ]  # fmt: skip
    x = torch.randn(2, 4, 7, 7)
    y = F.relu(F.conv2d(x, head.mask_fcn1.weight, head.mask_fcn1.bias, padding=1))
    y = F.relu(F.conv2d(y, head.mask_fcn2.weight, head.mask_fcn2.bias, padding=1))
    y = F.relu(F.conv_transpose2d(y, head.deconv.weight, head.deconv.bias, stride=2))
    y = F.conv2d(y, head.predictor.weight, head.predictor.bias)
    out = head.layers(x)
    assert out.shape == (2, 3, 14, 14)
    torch.testing.assert_close(out, y)


def test_head_from_config():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", 5, "MODEL.ROI_MASK_HEAD.NUM_CONV", 3,
                         "MODEL.ROI_MASK_HEAD.CONV_DIM", 8])  # fmt: skip
    head = build_mask_head(cfg, ShapeSpec(channels=4, height=14, width=14))
    assert [n for n, _ in head.named_children()][:3] == ["mask_fcn1", "mask_fcn2", "mask_fcn3"]
    assert head.predictor.out_channels == 5
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    assert build_mask_head(cfg, ShapeSpec(channels=4)).predictor.out_channels == 1


def _fg_instances():
    # The polygon covers [0, 10] x [0, 10]; proposal 0 is that square (target all ones), proposal 1
    # twice as wide (target: the left 14 of 28 columns).
    square = [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]]
    inst = Instances((30, 30))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0]]))
    inst.gt_classes = torch.tensor([2, 0])
    inst.gt_masks = PolygonMasks([square, square])
    return inst


def test_mask_loss_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 28, 28, requires_grad=True)
    targets = torch.zeros(2, 28, 28)
    targets[0] = 1
    targets[1, :, :14] = 1
    with EventStorage(0) as storage:
        loss = mask_rcnn_loss(logits, [_fg_instances(), Instances((30, 30), **_fg_instances()[:0].get_fields())])
    expected = _bce(torch.stack([logits[0, 2], logits[1, 0]]), targets.double())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert logits.grad[:, 1].abs().sum() == 0  # only the gt class's logits are trained

    chosen = torch.stack([logits[0, 2], logits[1, 0]]).detach()
    accuracy = ((chosen > 0) == targets.bool()).float().mean().item()
    assert storage.latest()["mask_rcnn/accuracy"][0] == pytest.approx(accuracy)


def test_mask_loss_with_bitmasks_and_class_agnostic_logits():
    logits = torch.randn(2, 1, 28, 28)
    bitmask = torch.zeros(1, 30, 30, dtype=torch.bool)
    bitmask[0, :10, :10] = True
    inst = _fg_instances()
    inst.proposal_boxes = Boxes(torch.tensor([[1.0, 1.0, 9.0, 9.0], [15.0, 0.0, 25.0, 10.0]]))
    inst.gt_masks = BitMasks(bitmask.expand(2, 30, 30))
    with EventStorage(0):
        loss = mask_rcnn_loss(logits, [inst])
    targets = torch.zeros(2, 28, 28)
    targets[0] = 1  # the first proposal lies inside the mask, the second right of it
    assert loss.item() == pytest.approx(_bce(logits[:, 0], targets.double()).item(), rel=1e-6)


def test_mask_loss_without_foreground_is_zero_and_differentiable():
    logits = torch.randn(0, 3, 28, 28, requires_grad=True)
    with EventStorage(0):
        loss = mask_rcnn_loss(logits, [_fg_instances()[:0]])
    assert loss.item() == 0
    loss.backward()


def test_mask_inference_takes_the_predicted_class():
    logits = torch.randn(3, 4, 5, 5)
    first = Instances((9, 9), pred_classes=torch.tensor([3, 1]))
    second = Instances((9, 9), pred_classes=torch.tensor([0]))
    mask_rcnn_inference(logits, [first, second])
    assert first.pred_masks.shape == (2, 1, 5, 5) and second.pred_masks.shape == (1, 1, 5, 5)
    torch.testing.assert_close(first.pred_masks[:, 0], torch.sigmoid(logits[[0, 1], [3, 1]]))
    torch.testing.assert_close(second.pred_masks[0, 0], torch.sigmoid(logits[2, 0]))

    agnostic = Instances((9, 9), pred_classes=torch.tensor([2]))
    mask_rcnn_inference(logits[:1, :1], [agnostic])
    torch.testing.assert_close(agnostic.pred_masks, torch.sigmoid(logits[:1, :1]))


def test_head_forward_owns_its_weighted_loss():
    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
                         "MODEL.ROI_MASK_HEAD.CONV_DIM", 4, "MODEL.LOSS_WEIGHTS.loss_mask", 2.5])  # fmt: skip
    head = build_mask_head(cfg, ShapeSpec(channels=2)).train()
    x = torch.randn(2, 2, 14, 14)
    with EventStorage(0):
        losses = head(x, [_fg_instances()])
        plain = mask_rcnn_loss(head.layers(x), [_fg_instances()])
    assert set(losses) == {"loss_mask"}
    assert losses["loss_mask"].item() == pytest.approx(2.5 * plain.item(), rel=1e-6)

    head.eval()
    inst = Instances((30, 30), pred_classes=torch.tensor([1, 2]))
    assert head(x, [inst])[0].pred_masks.shape == (2, 1, 28, 28)

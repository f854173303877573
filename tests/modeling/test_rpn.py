import math

import pytest
import torch
from torch import nn

from detlib.config import get_cfg
from detlib.layers import ShapeSpec
from detlib.modeling.anchor_generator import DefaultAnchorGenerator
from detlib.modeling.box_regression import Box2BoxTransform
from detlib.modeling.matcher import Matcher
from detlib.modeling.proposal_generator import (
    RPN,
    StandardRPNHead,
    add_ground_truth_to_proposals,
    build_proposal_generator,
    find_top_rpn_proposals,
)
from detlib.structures import Boxes, ImageList, Instances
from detlib.utils.events import EventStorage

# The tiny case: an 8 x 16 image, one feature level of stride 8 (a 1 x 2 grid) and one 8 x 8 anchor
# per location (offset 0.5): anchor 0 = [0, 0, 8, 8], anchor 1 = [8, 0, 16, 8].
IMAGE_SIZE = (8, 16)
LOGITS = [[2.0, -1.0], [0.5, 0.0]]  # per image, per anchor
DELTAS = [[[0.1, -0.2, 0.0, 0.3], [1.0, 1.0, 1.0, 1.0]], [[0.0] * 4, [0.0] * 4]]


class FixedHead(nn.Module):
    """Returns LOGITS and DELTAS in the head's layout (N x A x H x W, N x A*4 x H x W)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # something to take gradients against

    def forward(self, features):
        logits = torch.tensor(LOGITS).view(2, 1, 1, 2) * self.scale
        deltas = torch.tensor(DELTAS).permute(0, 2, 1).reshape(2, 4, 1, 2) * self.scale
        return [logits], [deltas]


def _tiny_rpn(**overrides):
    kwargs = dict(
        in_features=["p"],
        head=FixedHead(),
        anchor_generator=DefaultAnchorGenerator(sizes=[[8]], aspect_ratios=[[1.0]], strides=[8], offset=0.5),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=4,
        positive_fraction=0.5,
        pre_nms_topk=(10, 10),
        post_nms_topk=(10, 10),
    )
    kwargs.update(overrides)
    return RPN(**kwargs)


def _inputs():
    images = ImageList(torch.zeros(2, 3, *IMAGE_SIZE), [IMAGE_SIZE, IMAGE_SIZE])
    features = {"p": torch.zeros(2, 1, 1, 2)}
    # Image 0: one gt equal to anchor 0 (IoU 1; anchor 1 has IoU 0). Image 1: no gt.
    gt = [
        Instances(IMAGE_SIZE, gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]]))),
        Instances(IMAGE_SIZE, gt_boxes=Boxes(torch.zeros(0, 4))),
    ]
    return images, features, gt


def _bce(logit, label):
    return math.log1p(math.exp(-logit)) if label == 1 else math.log1p(math.exp(logit))


def test_losses_by_hand():
    rpn = _tiny_rpn().train()
    images, features, gt = _inputs()
    with EventStorage(0) as storage:
        _, losses = rpn(images, features, gt)
    # Sampled: image 0 anchor 0 positive, anchor 1 negative; image 1 both negative (4 >= all of them).
    # Both losses are sums divided by batch_size_per_image * num_images = 8.
    cls = (_bce(2.0, 1) + _bce(-1.0, 0) + _bce(0.5, 0) + _bce(0.0, 0)) / 8
    loc = (0.1 + 0.2 + 0.0 + 0.3) / 8  # L1 of the positive's deltas, its gt deltas being 0
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(cls))
    torch.testing.assert_close(losses["loss_rpn_loc"], torch.tensor(loc))
    latest = storage.latest()
    assert latest["rpn/num_pos_anchors"][0] == pytest.approx(0.5)
    assert latest["rpn/num_neg_anchors"][0] == pytest.approx(1.5)

    sum(losses.values()).backward()
    # d/dscale of the losses: each term is linear or smooth in the scaled predictions.
    expected_grad = (
        2.0 * (torch.sigmoid(torch.tensor(2.0)) - 1)
        + -1.0 * torch.sigmoid(torch.tensor(-1.0))
        + 0.5 * torch.sigmoid(torch.tensor(0.5))
        + 0.0
    ) / 8 + loc
    torch.testing.assert_close(rpn.rpn_head.scale.grad, expected_grad)


def test_loss_weights_and_box_loss_choice():
    images, features, gt = _inputs()
    weighted = _tiny_rpn(
        loss_weight={"loss_rpn_cls": 2.0, "loss_rpn_loc": 0.5}, box_reg_loss_type="smooth_l1", smooth_l1_beta=1.0
    ).train()
    with EventStorage(0):
        _, losses = weighted(images, features, gt)
    cls = (_bce(2.0, 1) + _bce(-1.0, 0) + _bce(0.5, 0) + _bce(0.0, 0)) / 8
    loc = 0.5 * (0.1**2 + 0.2**2 + 0.3**2) / 8  # smooth-L1 with beta 1: all |x| < 1
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(2.0 * cls))
    torch.testing.assert_close(losses["loss_rpn_loc"], torch.tensor(0.5 * loc))

    giou = _tiny_rpn(box_reg_loss_type="giou").train()
    with EventStorage(0):
        _, losses = giou(images, features, gt)
    # Decoded positive: center (4.8, 2.4), 8 x 8e^0.3 -> IoU with the gt [0, 0, 8, 8] by hand.
    h = 8 * math.exp(0.3)
    box = (0.8, 2.4 - h / 2, 8.8, 2.4 + h / 2)
    inter = (8 - 0.8) * (box[3] - 0)
    union = 64 + 8 * h - inter
    enclosing = 8.8 * (8 - box[1])  # x from 0 to 8.8, y from box[1] < 0 to 8
    expected = (1 - inter / union + (enclosing - union) / enclosing) / 8
    torch.testing.assert_close(losses["loss_rpn_loc"], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_sampling_limits_the_anchors_used():
    images, features, gt = _inputs()
    rpn = _tiny_rpn(batch_size_per_image=1, positive_fraction=1.0).train()
    with EventStorage(0) as storage:
        gt_labels, _ = rpn.label_and_sample_anchors(rpn.anchor_generator([features["p"]]), gt)
        assert gt_labels[0].tolist() == [1, -1]  # one sample: the positive
        assert sorted(gt_labels[1].tolist()) == [-1, 0]  # no positive: one negative
        assert storage.latest() == {}


def test_boundary_thresh_ignores_outside_anchors():
    images, features, gt = _inputs()
    rpn = _tiny_rpn(anchor_boundary_thresh=0)
    # Image 0 pretends to be 9 x 12: anchor 1 ([8, 0, 16, 8]) sticks out and is ignored.
    gt[0] = Instances((9, 12), gt_boxes=gt[0].gt_boxes)
    gt_labels, matched = rpn.label_and_sample_anchors(rpn.anchor_generator([features["p"]]), gt)
    assert gt_labels[0].tolist() == [1, -1]
    torch.testing.assert_close(matched[0][0], torch.tensor([0.0, 0.0, 8.0, 8.0]))


def test_proposals_by_hand():
    rpn = _tiny_rpn().eval()
    images, features, _ = _inputs()
    proposals, losses = rpn(images, features)
    assert losses == {}
    # Image 0, sorted by logit: anchor 0 decoded to center (4.8, 2.4), 8 x 8e^0.3; anchor 1 to
    # center (20, 12), 8e x 8e; both clipped to the 8 x 16 image. They do not overlap: NMS keeps both.
    h0 = 8 * math.exp(0.3)
    s1 = 8 * math.e
    expected = torch.tensor([[0.8, 0.0, 8.8, 2.4 + h0 / 2], [20 - s1 / 2, 12 - s1 / 2, 16.0, 8.0]])
    torch.testing.assert_close(proposals[0].proposal_boxes.tensor, expected)
    torch.testing.assert_close(proposals[0].objectness_logits, torch.tensor([2.0, -1.0]))
    # Image 1: the anchors themselves, best logit first.
    torch.testing.assert_close(proposals[1].proposal_boxes.tensor, torch.tensor([[0.0, 0, 8, 8], [8.0, 0, 16, 8]]))
    torch.testing.assert_close(proposals[1].objectness_logits, torch.tensor([0.5, 0.0]))
    assert proposals[0].image_size == IMAGE_SIZE

    # min_box_size: image 0's first proposal is 8 wide and ~7.8 high, the second ~9.1 x ~6.9.
    small = _tiny_rpn(min_box_size=7.0).eval()
    proposals, _ = small(images, features)
    torch.testing.assert_close(proposals[0].proposal_boxes.tensor, expected[:1])
    top1 = _tiny_rpn(post_nms_topk=(10, 1)).eval()
    proposals, _ = top1(images, features)
    assert [len(p) for p in proposals] == [1, 1]


def test_find_top_proposals_nms_per_level():
    box = [0.0, 0.0, 10.0, 10.0]
    shifted = [1.0, 0.0, 11.0, 10.0]  # IoU 9/11 with `box`
    far = [20.0, 20.0, 30.0, 30.0]
    level0 = torch.tensor([[box, shifted, far]])
    level1 = torch.tensor([[shifted]])
    logits = [torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[2.5]])]
    (result,) = find_top_rpn_proposals(
        [level0, level1],
        logits,
        [(40, 40)],
        nms_thresh=0.7,
        pre_nms_topk=2,
        post_nms_topk=10,
        min_box_size=0.0,
        training=False,
    )
    # Level 0 keeps its top 2 (box, shifted) and NMS drops `shifted`; level 1's box overlaps `box`
    # just as much but NMS runs within levels only.
    torch.testing.assert_close(result.proposal_boxes.tensor, torch.tensor([box, shifted]))
    torch.testing.assert_close(result.objectness_logits, torch.tensor([3.0, 2.5]))

    bad = [torch.tensor([[box, [float("nan")] * 4]])]
    bad_logits = [torch.tensor([[1.0, 2.0]])]
    (result,) = find_top_rpn_proposals(bad, bad_logits, [(40, 40)], 0.7, 10, 10, 0.0, training=False)
    torch.testing.assert_close(result.proposal_boxes.tensor, torch.tensor([box]))
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_rpn_proposals(bad, bad_logits, [(40, 40)], 0.7, 10, 10, 0.0, training=True)


def test_add_ground_truth_to_proposals():
    proposals = Instances((20, 20))
    proposals.proposal_boxes = Boxes(torch.tensor([[1.0, 1.0, 5.0, 5.0]]))
    proposals.objectness_logits = torch.tensor([0.3])
    gt = Instances((20, 20), gt_boxes=Boxes(torch.tensor([[2.0, 2.0, 9.0, 9.0]])), gt_classes=torch.tensor([1]))
    (merged,) = add_ground_truth_to_proposals([gt], [proposals])
    assert sorted(merged.get_fields()) == ["objectness_logits", "proposal_boxes"]
    torch.testing.assert_close(merged.proposal_boxes.tensor, torch.tensor([[1.0, 1, 5, 5], [2.0, 2, 9, 9]]))
    # A logit of probability 1 - 1e-10: log(p / (1 - p)) ~ 23.03.
    torch.testing.assert_close(merged.objectness_logits, torch.tensor([0.3, math.log(1e10)]), rtol=1e-6, atol=1e-4)
    (from_boxes,) = add_ground_truth_to_proposals([gt.gt_boxes], [proposals])
    assert len(from_boxes) == 2
    with pytest.raises(ValueError, match="2 gt entries for 1 images"):
        add_ground_truth_to_proposals([gt, gt], [proposals])


def _fpn_shapes():
    return {f"p{i}": ShapeSpec(channels=16, stride=2**i) for i in range(2, 7)}


def test_build_from_config_and_checkpoint_names():
    cfg = get_cfg()
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.LOSS_WEIGHT = 2.0
    cfg.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 0.5
    rpn = build_proposal_generator(cfg, _fpn_shapes())
    assert isinstance(rpn, RPN) and isinstance(rpn.rpn_head, StandardRPNHead)
    assert rpn.loss_weight == {"loss_rpn_cls": 2.0, "loss_rpn_loc": 1.0}
    assert rpn.anchor_generator.strides == [4, 8, 16, 32, 64]
    assert {k: tuple(v.shape) for k, v in rpn.state_dict().items()} == {
        "rpn_head.conv.weight": (16, 16, 3, 3),
        "rpn_head.conv.bias": (16,),
        "rpn_head.objectness_logits.weight": (3, 16, 1, 1),
        "rpn_head.objectness_logits.bias": (3,),
        "rpn_head.anchor_deltas.weight": (12, 16, 1, 1),
        "rpn_head.anchor_deltas.bias": (12,),
    }
    cfg.MODEL.RPN.CONV_DIMS = [8, -1]
    head = build_proposal_generator(cfg, _fpn_shapes()).rpn_head
    assert tuple(head.conv.conv0.weight.shape) == (8, 16, 3, 3)
    assert tuple(head.conv.conv1.weight.shape) == (8, 8, 3, 3)
    assert head.objectness_logits.in_channels == 8

    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    assert build_proposal_generator(cfg, _fpn_shapes()) is None


def test_standard_head_forward_shapes():
    head = StandardRPNHead(in_channels=16, num_anchors=3)
    logits, deltas = head([torch.randn(2, 16, 8, 10), torch.randn(2, 16, 4, 5)])
    assert [tuple(x.shape) for x in logits] == [(2, 3, 8, 10), (2, 3, 4, 5)]
    assert [tuple(x.shape) for x in deltas] == [(2, 12, 8, 10), (2, 12, 4, 5)]


def test_invalid_settings_fail_at_build_time():
    cfg = get_cfg()
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = "gio"
    with pytest.raises(KeyError, match=r"'gio'.*'giou'"):
        build_proposal_generator(cfg, _fpn_shapes())
    cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
    cfg.MODEL.RPN.SMOOTH_L1_BETA = -1.0
    with pytest.raises(ValueError, match="beta"):
        build_proposal_generator(cfg, _fpn_shapes())
    cfg.MODEL.RPN.SMOOTH_L1_BETA = 0.0
    cfg.MODEL.RPN.LOSS_WEIGHT = -1.0
    with pytest.raises(ValueError, match="RPN: the weight of .loss_rpn_cls. must be a finite number >= 0"):
        build_proposal_generator(cfg, _fpn_shapes())
    cfg.MODEL.RPN.LOSS_WEIGHT = 1.0
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    with pytest.raises(ValueError, match="res4"):
        build_proposal_generator(cfg, _fpn_shapes())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_losses_match_cpu():
    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32]]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 100000  # every anchor sampled: no randomness in the losses
    shapes = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}
    rpn = build_proposal_generator(cfg, shapes).train()
    features = {"p2": torch.randn(1, 8, 16, 16), "p3": torch.randn(1, 8, 8, 8)}
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    gt = [Instances((64, 64), gt_boxes=Boxes(torch.tensor([[4.0, 4.0, 30.0, 40.0]])))]
    losses = {}
    for device in ("cpu", "cuda"):
        rpn.to(device)
        with EventStorage(0):
            proposals, losses[device] = rpn(
                images.to(device), {k: v.to(device) for k, v in features.items()}, [g.to(device) for g in gt]
            )
        assert proposals[0].proposal_boxes.device.type == device
    for name in ("loss_rpn_cls", "loss_rpn_loc"):
        # rtol covers TF32 convolutions on recent GPUs.
        torch.testing.assert_close(losses["cuda"][name].cpu(), losses["cpu"][name], rtol=1e-3, atol=1e-6)

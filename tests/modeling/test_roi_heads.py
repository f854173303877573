import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from detlib.config import get_cfg
from detlib.layers import ShapeSpec, build_box_loss
from detlib.modeling import Box2BoxTransform, Matcher
from detlib.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    ROIHeads,
    StandardROIHeads,
    build_roi_heads,
    random_subset,
    select_foreground_proposals,
)
from detlib.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detlib.structures import Boxes, Instances, PolygonMasks
from detlib.utils.events import EventStorage


def _deltas_by_hand(src, dst, weights=(10.0, 10.0, 5.0, 5.0)):
    """The (dx, dy, dw, dh) R-CNN coding of box `dst` relative to box `src`, from its definition."""
    sw, sh = src[2] - src[0], src[3] - src[1]
    dw_, dh_ = dst[2] - dst[0], dst[3] - dst[1]
    scx, scy = src[0] + sw / 2, src[1] + sh / 2
    dcx, dcy = dst[0] + dw_ / 2, dst[1] + dh_ / 2
    wx, wy, ww, wh = weights
    return [wx * (dcx - scx) / sw, wy * (dcy - scy) / sh, ww * math.log(dw_ / sw), wh * math.log(dh_ / sh)]


# --- box head -------------------------------------------------------------------------------------


def test_conv_fc_head_layers_and_names():
    torch.manual_seed(0)
    head = FastRCNNConvFCHead(ShapeSpec(channels=3, height=5, width=5), conv_dims=[4], fc_dims=[6, 7])
    assert [k for k in head.state_dict()] == [
        "conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"
    ]  # fmt: skip
    assert head.output_shape.channels == 7
    x = torch.randn(2, 3, 5, 5)
    y = F.relu(F.conv2d(x, head.conv1.weight, head.conv1.bias, padding=1)).flatten(1)
    y = F.relu(F.linear(F.relu(F.linear(y, head.fc1.weight, head.fc1.bias)), head.fc2.weight, head.fc2.bias))
    torch.testing.assert_close(head(x), y)


def test_conv_only_head_reports_spatial_output():
    head = FastRCNNConvFCHead(ShapeSpec(channels=3, height=5, width=4), conv_dims=[8, 2], fc_dims=[])
    shape = head.output_shape
    assert (shape.channels, shape.height, shape.width) == (2, 5, 4)
    assert head(torch.zeros(1, 3, 5, 4)).shape == (1, 2, 5, 4)
    with pytest.raises(ValueError, match="at least one"):
        FastRCNNConvFCHead(ShapeSpec(channels=3, height=5, width=4), conv_dims=[], fc_dims=[])


# --- box predictor --------------------------------------------------------------------------------


def _predictor(**kwargs):
    args = dict(box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), num_classes=2)
    args.update(kwargs)
    return FastRCNNOutputLayers(ShapeSpec(channels=4), **args)


def _one_image_proposals():
    proposals = Instances((100, 100))
    proposals.proposal_boxes = Boxes(
        torch.tensor([[10.0, 10.0, 30.0, 40.0], [0.0, 0.0, 50.0, 50.0], [60.0, 20.0, 80.0, 30.0]])
    )
    proposals.gt_boxes = Boxes(torch.tensor([[12.0, 8.0, 34.0, 44.0], [0.0, 0.0, 1.0, 1.0], [58.0, 22.0, 81.0, 29.0]]))
    proposals.gt_classes = torch.tensor([0, 2, 1])  # 2 = background
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0]])
    deltas = torch.tensor(
        [[0.5, -0.2, 0.1, 0.3, 9.0, 9.0, 9.0, 9.0], [9.0] * 8, [9.0, 9.0, 9.0, 9.0, -0.1, 0.4, 0.2, -0.3]]
    )
    return proposals, scores, deltas


def _nll(scores, labels):
    return torch.logsumexp(scores, dim=1) - scores[torch.arange(len(labels)), labels]


def test_fast_rcnn_losses_by_hand():
    proposals, scores, deltas = _one_image_proposals()
    with EventStorage(0) as storage:
        losses = _predictor().losses((scores, deltas), [proposals])

    labels = proposals.gt_classes
    assert losses["loss_cls"].item() == pytest.approx(_nll(scores, labels).mean().item(), rel=1e-6)
    # Plain L1 (beta 0) on the gt class's deltas of the two foreground proposals, over all 3.
    p, g = proposals.proposal_boxes.tensor.tolist(), proposals.gt_boxes.tensor.tolist()
    l1 = sum(abs(a - b) for a, b in zip(deltas[0, 0:4].tolist(), _deltas_by_hand(p[0], g[0])))
    l1 += sum(abs(a - b) for a, b in zip(deltas[2, 4:8].tolist(), _deltas_by_hand(p[2], g[2])))
    assert losses["loss_box_reg"].item() == pytest.approx(l1 / 3, rel=1e-5)

    # argmax: 0, 2, 1 -> all three right.
    assert storage.latest()["fast_rcnn/cls_accuracy"][0] == 1.0
    assert storage.latest()["fast_rcnn/fg_cls_accuracy"][0] == 1.0
    assert storage.latest()["fast_rcnn/false_negative"][0] == 0.0


def test_fast_rcnn_loss_weights_and_class_weights():
    proposals, scores, deltas = _one_image_proposals()
    with EventStorage(0):
        plain = _predictor().losses((scores, deltas), [proposals])
        weighted = _predictor(
            loss_weight={"loss_cls": 2.0, "loss_box_reg": 0.5}, cls_loss_weights=[1.0, 3.0, 0.5]
        ).losses((scores, deltas), [proposals])
    w = torch.tensor([1.0, 3.0, 0.5])[proposals.gt_classes]
    expected_cls = 2.0 * (w * _nll(scores, proposals.gt_classes)).sum() / w.sum()
    assert weighted["loss_cls"].item() == pytest.approx(expected_cls.item(), rel=1e-6)
    assert weighted["loss_box_reg"].item() == pytest.approx(0.5 * plain["loss_box_reg"].item(), rel=1e-6)

    with pytest.raises(ValueError, match="cls_loss_weights"):
        _predictor(cls_loss_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="loss_box_reg"):
        _predictor(loss_weight={"loss_box_reg": -1.0})


def test_fast_rcnn_giou_loss_and_class_agnostic_regression():
    proposals, scores, deltas = _one_image_proposals()
    fg = torch.tensor([0, 2])
    transform = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    with EventStorage(0):
        giou = _predictor(box_reg_loss_type=build_box_loss("giou")).losses((scores, deltas), [proposals])[
            "loss_box_reg"
        ]
        agnostic = _predictor(cls_agnostic_bbox_reg=True)
        assert agnostic.bbox_pred.out_features == 4
        agnostic_loss = agnostic.losses((scores, deltas[:, 4:]), [proposals])["loss_box_reg"]

    fg_deltas = torch.stack([deltas[0, 0:4], deltas[2, 4:8]])
    decoded = transform.apply_deltas(fg_deltas, proposals.proposal_boxes.tensor[fg])
    expected = generalized_box_iou_loss(decoded, proposals.gt_boxes.tensor[fg], reduction="sum") / 3
    assert giou.item() == pytest.approx(expected.item(), rel=1e-5)

    p, g = proposals.proposal_boxes.tensor.tolist(), proposals.gt_boxes.tensor.tolist()
    l1 = sum(abs(a - b) for i in (0, 2) for a, b in zip(deltas[i, 4:].tolist(), _deltas_by_hand(p[i], g[i])))
    assert agnostic_loss.item() == pytest.approx(l1 / 3, rel=1e-5)


def test_fast_rcnn_losses_without_gt():
    proposals = Instances((50, 50))
    proposals.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 30.0]]))
    proposals.gt_classes = torch.tensor([2, 2])
    scores = torch.randn(2, 3, requires_grad=True)
    deltas = torch.randn(2, 8, requires_grad=True)
    with EventStorage(0):
        losses = _predictor().losses((scores, deltas), [proposals])
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_cls"].item() == pytest.approx(_nll(scores, proposals.gt_classes).mean().item(), rel=1e-6)
    sum(losses.values()).backward()
    assert deltas.grad is not None and not deltas.grad.any()


def test_fast_rcnn_inference_by_hand():
    a = [10.0, 10.0, 50.0, 50.0]
    a2 = [12.0, 10.0, 52.0, 50.0]  # IoU with a: 38 * 40 / (2 * 1600 - 1520) = 0.905
    b = [60.0, 60.0, 120.0, 90.0]  # sticks out of the 100 x 100 image
    boxes = torch.tensor([a + a, a2 + a2, b + b, [float("nan")] * 8])
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.15, 0.05], [0.3, 0.02, 0.68], [0.99, 0.0, 0.01]])
    result, kept = fast_rcnn_inference_single_image(boxes, scores, (100, 100), 0.05, 0.5, topk_per_image=100)
    # class 0: a (0.9) suppresses a2 (0.8), b (0.3) survives; class 1: a2 (0.15); a's 0.05 is not > 0.05.
    assert result.scores.tolist() == pytest.approx([0.9, 0.3, 0.15])
    assert result.pred_classes.tolist() == [0, 0, 1]
    assert kept.tolist() == [0, 2, 1]
    assert torch.equal(result.pred_boxes.tensor, torch.tensor([a, [60.0, 60.0, 100.0, 90.0], a2]))

    top2, _ = fast_rcnn_inference_single_image(boxes, scores, (100, 100), 0.05, 0.5, topk_per_image=2)
    assert top2.scores.tolist() == pytest.approx([0.9, 0.3])

    agnostic, _ = fast_rcnn_inference_single_image(boxes[:, :4], scores, (100, 100), 0.05, 0.5, 100)
    assert agnostic.scores.tolist() == pytest.approx([0.9, 0.3, 0.15])


def test_predictor_inference_decodes_and_splits_per_image():
    torch.manual_seed(0)
    predictor = _predictor(test_score_thresh=0.0, test_topk_per_image=-1)
    p1 = Instances((60, 60), proposal_boxes=Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]])))
    p2 = Instances((60, 60), proposal_boxes=Boxes(torch.tensor([[30.0, 30.0, 50.0, 40.0], [5.0, 5.0, 9.0, 9.0]])))
    scores, deltas = torch.randn(3, 3), torch.zeros(3, 8)
    results, _ = predictor.inference((scores, deltas), [p1, p2])
    assert [len(r) for r in results] == [2, 4]
    # Zero deltas decode to the proposals themselves.
    assert torch.equal(results[0].pred_boxes.tensor, torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 2))
    probs = F.softmax(scores, dim=1)
    expected = probs[1:, :2].flatten().sort(descending=True).values
    assert sorted(results[1].scores.tolist(), reverse=True) == pytest.approx(expected.tolist())


# --- proposal labelling and sampling --------------------------------------------------------------


def _targets():
    t = Instances((100, 100))
    t.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0]]))
    t.gt_classes = torch.tensor([1, 0])
    t.gt_masks = PolygonMasks([[[0.0, 0.0, 40.0, 0.0, 40.0, 40.0]], [[50.0, 50.0, 90.0, 50.0, 90.0, 90.0]]])
    return t


def _proposals():
    p = Instances((100, 100))
    p.proposal_boxes = Boxes(
        torch.tensor([[0.0, 0.0, 40.0, 32.0], [50.0, 50.0, 70.0, 60.0], [50.0, 50.0, 90.0, 80.0]])
    )  # IoU 0.8 with gt 0; 0.125 with gt 1; 0.75 with gt 1
    p.objectness_logits = torch.tensor([1.0, 0.5, 0.2])
    return p


def _heads(batch_size=100, fraction=0.5):
    return ROIHeads(
        num_classes=2,
        batch_size_per_image=batch_size,
        positive_fraction=fraction,
        proposal_matcher=Matcher([0.5], [0, 1]),
        proposal_append_gt=True,
    )


def test_label_and_sample_proposals():
    empty = Instances((100, 100), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    empty.gt_masks = PolygonMasks([])
    with EventStorage(0) as storage:
        sampled = _heads().label_and_sample_proposals([_proposals(), _proposals()], [_targets(), empty])

    first = sampled[0]
    assert len(first) == 5  # 3 proposals + 2 gt boxes, all sampled
    by_box = {tuple(b.tolist()): i for i, b in enumerate(first.proposal_boxes.tensor)}
    expected = {  # proposal box -> (class, matched gt box)
        (0.0, 0.0, 40.0, 32.0): (1, [0.0, 0.0, 40.0, 40.0]),
        (50.0, 50.0, 70.0, 60.0): (2, None),
        (50.0, 50.0, 90.0, 80.0): (0, [50.0, 50.0, 90.0, 90.0]),
        (0.0, 0.0, 40.0, 40.0): (1, [0.0, 0.0, 40.0, 40.0]),
        (50.0, 50.0, 90.0, 90.0): (0, [50.0, 50.0, 90.0, 90.0]),
    }
    for box, (cls, gt_box) in expected.items():
        i = by_box[box]
        assert first.gt_classes[i].item() == cls
        if gt_box is not None:
            assert first.gt_boxes.tensor[i].tolist() == gt_box
            assert first.gt_masks[i].polygons[0][0][2] == gt_box[2]  # the matched gt's polygon
    # gt boxes come in with a near-certain objectness.
    assert first.objectness_logits[by_box[(0.0, 0.0, 40.0, 40.0)]] > 20

    second = sampled[1]
    assert len(second) == 3 and (second.gt_classes == 2).all()
    assert not second.has("gt_boxes")
    assert storage.latest()["roi_head/num_fg_samples"][0] == 2.0
    assert storage.latest()["roi_head/num_bg_samples"][0] == 2.0


def test_sampling_respects_batch_size_and_fraction():
    torch.manual_seed(0)
    with EventStorage(0):
        sampled = _heads(batch_size=2, fraction=0.5).label_and_sample_proposals([_proposals()], [_targets()])[0]
    assert sorted(sampled.gt_classes.tolist())[1] == 2 and sorted(sampled.gt_classes.tolist())[0] in (0, 1)
    assert len(sampled) == 2


def test_select_foreground_proposals():
    p = Instances((10, 10), gt_classes=torch.tensor([0, 2, -1, 1]), proposal_boxes=Boxes(torch.zeros(4, 4)))
    fg, masks = select_foreground_proposals([p], bg_label=2)
    assert fg[0].gt_classes.tolist() == [0, 1]
    assert masks[0].tolist() == [True, False, False, True]


def test_random_subset():
    p = Instances((10, 10), proposal_boxes=Boxes(torch.arange(24.0).reshape(6, 4)), gt_classes=torch.arange(6))
    assert random_subset(p, 6) is p and random_subset(p, 10) is p
    torch.manual_seed(0)
    subset = random_subset(p, 4)
    picked = subset.gt_classes.tolist()
    assert len(picked) == len(set(picked)) == 4
    assert torch.equal(subset.proposal_boxes.tensor, p.proposal_boxes.tensor[subset.gt_classes])  # fields stay aligned
    seen = {c for _ in range(30) for c in random_subset(p, 2).gt_classes.tolist()}
    assert seen == set(range(6))  # every proposal can be drawn


# --- StandardROIHeads -----------------------------------------------------------------------------


def _small_cfg(mask_on=True):
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.MASK_ON", mask_on,
        "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
        "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3"],
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
        "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC", 2,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 16,
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4,
        "MODEL.ROI_MASK_HEAD.NUM_CONV", 2,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
        "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", 7,
    ])  # fmt: skip
    return cfg


def _shapes():
    return {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}


def _features():
    return {"p2": torch.randn(2, 8, 16, 16), "p3": torch.randn(2, 8, 8, 8)}


def test_standard_roi_heads_from_config():
    heads = build_roi_heads(_small_cfg(), _shapes())
    assert isinstance(heads, StandardROIHeads)
    assert heads.box_in_features == heads.mask_in_features == ["p2", "p3"]
    assert heads.box_pooler.output_size == (4, 4) and heads.mask_pooler.output_size == (7, 7)
    assert heads.box_predictor.cls_score.out_features == 4
    assert heads.box_predictor.bbox_pred.out_features == 12
    assert heads.mask_head.predictor.out_channels == 3
    assert "roi_heads" not in dict(heads.named_modules())
    assert not build_roi_heads(_small_cfg(mask_on=False), _shapes()).mask_on
    with pytest.raises(ValueError, match="p4"):
        cfg = _small_cfg()
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p3", "p4"]
        build_roi_heads(cfg, _shapes())


def test_standard_roi_heads_train_with_and_without_gt():
    torch.manual_seed(0)
    heads = build_roi_heads(_small_cfg(), _shapes()).train()
    targets = _targets()
    targets.gt_boxes.scale(0.6, 0.6)
    targets.gt_masks.scale(0.6, 0.6)
    targets = Instances((64, 64), **targets.get_fields())
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    empty.gt_masks = PolygonMasks([])
    proposals = [Instances((64, 64), **_proposals().get_fields()) for _ in range(2)]

    features = _features()
    for f in features.values():
        f.requires_grad_(True)
    with EventStorage(0) as storage:
        _, losses = heads(None, features, proposals, [targets, empty])
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_mask"] > 0 and losses["loss_box_reg"] > 0
    sum(losses.values()).backward()
    assert features["p2"].grad is not None
    assert "mask_rcnn/accuracy" in storage.latest()

    # Only images without gt: background only, zero box and mask losses, still differentiable.
    with EventStorage(0):
        _, losses = heads(None, {k: v[:1] for k, v in _features().items()}, [proposals[0][:1]], [empty])
    assert losses["loss_box_reg"].item() == 0 and losses["loss_mask"].item() == 0 and losses["loss_cls"] > 0
    sum(losses.values()).backward()


def test_mask_head_trains_on_at_most_train_rois_per_image_foreground_proposals():
    cfg = _small_cfg()
    cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE = 1
    torch.manual_seed(0)
    heads = build_roi_heads(cfg, _shapes()).train()
    assert build_roi_heads(_small_cfg(), _shapes()).mask_train_rois_per_image == 0  # default: all of them
    seen = []
    heads.mask_head.register_forward_pre_hook(lambda module, args: seen.append([len(i) for i in args[1]]))
    targets = _targets()
    targets.gt_boxes.scale(0.6, 0.6)
    targets.gt_masks.scale(0.6, 0.6)
    targets = Instances((64, 64), **targets.get_fields())
    proposals = [Instances((64, 64), **_proposals().get_fields()) for _ in range(2)]
    with EventStorage(0) as storage:
        _, losses = heads(None, _features(), proposals, [targets, targets])
    # Each image has 2 foreground proposals (its gt boxes, appended); the box head still samples both.
    assert storage.latest()["roi_head/num_fg_samples"][0] == 2.0
    assert seen == [[1, 1]]
    assert losses["loss_mask"] > 0


def test_standard_roi_heads_inference_and_given_boxes():
    torch.manual_seed(0)
    heads = build_roi_heads(_small_cfg(), _shapes()).eval()
    heads.box_predictor.test_score_thresh = 0.0
    proposals = [Instances((64, 64), **_proposals().get_fields()) for _ in range(2)]
    with torch.no_grad():
        results, losses = heads(None, _features(), proposals)
    assert losses == {}
    for r in results:
        assert set(r.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
        assert len(r) > 0 and r.pred_masks.shape == (len(r), 1, 14, 14)

    given = Instances((64, 64), pred_boxes=Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0]])))
    given.pred_classes = torch.tensor([2])
    with torch.no_grad():
        out = heads.forward_with_given_boxes(_features(), [given, given[:0]])
    assert out[0].pred_masks.shape == (1, 1, 14, 14) and out[1].pred_masks.shape == (0, 1, 14, 14)


def test_predict_boxes_for_gt_classes_decodes_each_proposals_own_class():
    predictor = _predictor()
    proposals, scores, _ = _one_image_proposals()
    target = proposals.gt_boxes.tensor.tolist()
    deltas = torch.full((3, 8), 5.0)  # nonsense everywhere but in each proposal's gt-class slot
    for i, cls in enumerate(proposals.gt_classes.tolist()):
        if cls < 2:
            source = proposals.proposal_boxes.tensor[i].tolist()
            deltas[i, 4 * cls : 4 * cls + 4] = torch.tensor(_deltas_by_hand(source, target[i]))
    (boxes,) = predictor.predict_boxes_for_gt_classes((scores, deltas), [proposals])
    assert boxes.shape == (3, 4)
    torch.testing.assert_close(boxes[[0, 2]], proposals.gt_boxes.tensor[[0, 2]], rtol=0, atol=1e-4)

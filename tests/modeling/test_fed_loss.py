"""Sigmoid classification and the federated loss of FastRCNNOutputLayers (LVIS configs): by hand, and
against Detectron2's implementation on the same logits and random draws when it is installed."""

import pytest
import torch

from detlib.data import MetadataCatalog
from detlib.data.detection_utils import get_fed_loss_cls_weights
from detlib.modeling.box_regression import Box2BoxTransform
from detlib.modeling.roi_heads import FastRCNNOutputLayers
from detlib.modeling.roi_heads.fed_loss import get_fed_loss_classes, sigmoid_cross_entropy

K = 6


def _predictor(**kwargs):
    return FastRCNNOutputLayers(8, num_classes=K, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), **kwargs)


def test_sigmoid_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])  # K = 2, last column background
    gt = torch.tensor([0, 2])  # the second proposal is background
    # Row 1: -log s(2) - log(1 - s(-1)); row 2: -log(1 - s(0)) - log(1 - s(1)); divided by R = 2.
    s = torch.sigmoid
    expected = (
        -torch.log(s(torch.tensor(2.0)))
        - torch.log(1 - s(torch.tensor(-1.0)))
        - torch.log(1 - s(torch.tensor(0.0)))
        - torch.log(1 - s(torch.tensor(1.0)))
    ) / 2
    torch.testing.assert_close(sigmoid_cross_entropy(logits, gt), expected)
    # Counting class 1 only drops the class-0 terms.
    only_1 = (-torch.log(1 - s(torch.tensor(-1.0))) - torch.log(1 - s(torch.tensor(1.0)))) / 2
    torch.testing.assert_close(sigmoid_cross_entropy(logits, gt, torch.tensor([1])), only_1)


def test_fed_loss_classes_keep_present_ones_and_never_draw_background_or_zero_weight():
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    for seed in range(20):
        torch.manual_seed(seed)
        classes = get_fed_loss_classes(torch.tensor([4, 6, 4]), 4, K, weight)
        assert len(classes) == len(set(classes.tolist())) == 4
        assert {4, 6} <= set(classes.tolist())  # present classes, background included as given
        assert not {1} & set(classes.tolist())


def test_predictor_options_and_scores():
    with pytest.raises(ValueError, match="use_sigmoid_ce"):
        _predictor(use_fed_loss=True, get_fed_loss_cls_weights=lambda: torch.ones(K))
    with pytest.raises(ValueError, match="shape"):
        _predictor(use_sigmoid_ce=True, use_fed_loss=True, get_fed_loss_cls_weights=lambda: torch.ones(3))
    predictor = _predictor(use_sigmoid_ce=True)
    scores = torch.randn(3, K + 1)
    (probs,) = predictor.predict_probs((scores, None), [type("P", (), {"num_instances": lambda self: 3})()])
    torch.testing.assert_close(probs, scores.sigmoid())


def test_fed_loss_weights_from_metadata():
    MetadataCatalog.get("fed_loss_test").set(
        class_image_count=[{"id": 2, "image_count": 9}, {"id": 1, "image_count": 4}]
    )
    torch.testing.assert_close(get_fed_loss_cls_weights("fed_loss_test", 0.5), torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match="class_image_count"):
        get_fed_loss_cls_weights("fed_loss_no_counts")


def test_matches_detectron2_sigmoid_and_fed_loss():
    d2 = pytest.importorskip("detectron2.modeling.roi_heads.fast_rcnn")
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform as D2Box2BoxTransform

    weights = torch.rand(K) + 0.1
    ours = _predictor(
        use_sigmoid_ce=True, use_fed_loss=True, get_fed_loss_cls_weights=lambda: weights, fed_loss_num_classes=4
    )
    theirs = d2.FastRCNNOutputLayers(
        D2ShapeSpec(channels=8),
        num_classes=K,
        box2box_transform=D2Box2BoxTransform((10, 10, 5, 5)),
        use_sigmoid_ce=True,
        use_fed_loss=True,
        get_fed_loss_cls_weights=lambda: weights,
        fed_loss_num_classes=4,
    )
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(12, K + 1, generator=g)
        gt = torch.randint(0, K + 1, (12,), generator=g)
        torch.manual_seed(seed)
        expected = theirs.sigmoid_cross_entropy_loss(logits, gt)
        torch.manual_seed(seed)
        torch.testing.assert_close(ours.classification_loss(logits, gt), expected)

"""The LVIS pieces of the box predictor: sigmoid cross-entropy, the federated loss and its class weights."""

import math

import pytest
import torch

from detlib.config import get_cfg
from detlib.data import MetadataCatalog
from detlib.data.detection_utils import get_fed_loss_cls_weights
from detlib.layers import ShapeSpec
from detlib.modeling.box_regression import Box2BoxTransform
from detlib.modeling.roi_heads import FastRCNNOutputLayers
from detlib.structures import Boxes, Instances


def _predictor(num_classes=4, **kwargs):
    return FastRCNNOutputLayers(
        8, num_classes=num_classes, box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), **kwargs
    )


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_sigmoid_ce_by_hand():
    predictor = _predictor(use_sigmoid_ce=True)
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.0, 9.0], [-0.3, 0.7, 0.1, -2.0, -9.0]], dtype=torch.float64)
    gt = torch.tensor([2, 4])  # one RoI of class 2, one background RoI; the background logit is never used
    expected = sum(
        _bce(scores[r, k].item(), float(gt[r].item() == k)) for r in range(2) for k in range(4)
    ) / 2  # fmt: skip
    assert predictor.classification_loss(scores, gt).item() == pytest.approx(expected, rel=1e-12)
    proposals = Instances((20, 20), proposal_boxes=Boxes(torch.zeros(2, 4)))
    (probs,) = predictor.predict_probs((scores, None), [proposals])
    torch.testing.assert_close(probs, scores.sigmoid())


def test_federated_loss_counts_only_the_chosen_classes():
    weights = torch.tensor([1.0, 0.0, 3.0, 0.0, 2.0, 5.0])
    predictor = _predictor(
        num_classes=6, use_sigmoid_ce=True, use_fed_loss=True, get_fed_loss_cls_weights=lambda: weights,
        fed_loss_num_classes=4,
    )  # fmt: skip
    gt = torch.tensor([1, 6, 6, 1])  # class 1 and background: 2 labels, so 2 negatives are drawn
    draws = torch.zeros(7)
    for seed in range(200):
        torch.manual_seed(seed)
        mask = predictor.fed_loss_classes_mask(gt, 6)
        assert mask[1] == 1 and mask[3] == 0  # the gt class always; a class of weight 0 never
        assert mask.sum() == 3
        draws[:6] += mask
    # Negatives drawn in proportion to their weight: class 5 (weight 5) more often than class 0 (weight 1).
    assert draws[5] > draws[2] > draws[0] > 0

    scores = torch.randn(4, 7, dtype=torch.float64)
    torch.manual_seed(3)
    mask = predictor.fed_loss_classes_mask(gt, 6)
    torch.manual_seed(3)
    loss = predictor.classification_loss(scores, gt)
    expected = sum(
        _bce(scores[r, k].item(), float(gt[r].item() == k)) for r in range(4) for k in range(6) if mask[k]
    ) / 4  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # The weights are in the state dict, as in Detectron2's checkpoints of these models.
    assert torch.equal(predictor.state_dict()["fed_loss_cls_weights"], weights)


def test_federated_loss_needs_sigmoid_ce_and_a_weight_per_class():
    with pytest.raises(ValueError, match="needs use_sigmoid_ce"):
        _predictor(use_fed_loss=True, get_fed_loss_cls_weights=lambda: torch.ones(4))
    with pytest.raises(ValueError, match=r"one class weight per class \(4\)"):
        _predictor(use_sigmoid_ce=True, use_fed_loss=True, get_fed_loss_cls_weights=lambda: torch.ones(3))


def test_class_weights_are_image_counts_by_id_to_a_power_from_the_config():
    MetadataCatalog.get("fed_train").class_image_count = [
        {"id": 3, "image_count": 16}, {"id": 1, "image_count": 4}, {"id": 2, "image_count": 9},
    ]  # fmt: skip
    torch.testing.assert_close(get_fed_loss_cls_weights("fed_train", 0.5), torch.tensor([2.0, 3.0, 4.0]))
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", ("fed_train",), "MODEL.ROI_HEADS.NUM_CLASSES", 3])
    cfg.merge_from_list(["MODEL.ROI_BOX_HEAD.USE_FED_LOSS", True, "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", True])
    cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 1.0
    predictor = FastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    torch.testing.assert_close(predictor.fed_loss_cls_weights, torch.tensor([4.0, 9.0, 16.0]))
    assert predictor.use_sigmoid_ce and predictor.fed_loss_num_classes == 50


def test_missing_class_counts_name_the_dataset_and_the_key():
    MetadataCatalog.get("no_counts").thing_classes = ["a"]
    with pytest.raises(ValueError, match="'no_counts' has no 'class_image_count'.*USE_FED_LOSS"):
        get_fed_loss_cls_weights(["no_counts"])

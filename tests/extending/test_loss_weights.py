"""
MODEL.LOSS_WEIGHTS and MODEL.ROI_BOX_HEAD.CLS_LOSS_WEIGHTS change the losses exactly as documented:
the same model, inputs and sampling seed, with and without the weights.
"""

import math

import pytest
import torch

from detlib.layers import ShapeSpec
from detlib.modeling.meta_arch.build import build_model
from detlib.modeling.roi_heads import FastRCNNOutputLayers
from detlib.structures import Boxes, Instances
from detlib.utils.events import EventStorage


def _pair(tiny_cfg, *overrides):
    """A stock model and one built with `overrides` holding the same weights."""
    stock = build_model(tiny_cfg())
    weighted = build_model(tiny_cfg(*overrides))
    weighted.load_state_dict(stock.state_dict())
    return stock, weighted


def test_loss_weights_scale_each_term(tiny_cfg, batch, run_losses):
    stock, weighted = _pair(
        tiny_cfg,
        "MODEL.LOSS_WEIGHTS.loss_rpn_cls",
        2.0,
        "MODEL.LOSS_WEIGHTS.loss_rpn_loc",
        0.5,
        "MODEL.LOSS_WEIGHTS.loss_cls",
        3.0,
        "MODEL.LOSS_WEIGHTS.loss_box_reg",
        0.25,
        "MODEL.LOSS_WEIGHTS.loss_mask",
        1.5,
        # Detectron2's own weights multiply with them.
        "MODEL.RPN.LOSS_WEIGHT",
        4.0,
        "MODEL.RPN.BBOX_REG_LOSS_WEIGHT",
        3.0,
        "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT",
        2.0,
    )
    base, _ = run_losses(stock, batch)
    scaled, _ = run_losses(weighted, batch)
    factors = {
        "loss_rpn_cls": 2.0 * 4.0,
        "loss_rpn_loc": 0.5 * 4.0 * 3.0,
        "loss_cls": 3.0,
        "loss_box_reg": 0.25 * 2.0,
        "loss_mask": 1.5,
    }
    assert set(scaled) == set(factors)
    for name, factor in factors.items():
        assert base[name].item() > 0
        assert scaled[name].item() == pytest.approx(factor * base[name].item(), rel=1e-6), name


def _capture_classification(model):
    """Hooks recording the box predictor's class logits and the sampled proposals' labels."""
    seen = {}
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, out: seen.__setitem__("scores", out[0]))
    model.roi_heads.register_forward_hook(
        lambda m, i, out: seen.__setitem__("labels", torch.cat([p.gt_classes for p in out[0]]))
    )
    return seen


def test_class_weights_give_the_weighted_mean_cross_entropy(tiny_cfg, batch, run_losses):
    class_weights = [1.0, 2.0, 0.5, 3.0, 0.25]  # 4 shapes, background last
    stock, weighted = _pair(tiny_cfg, "MODEL.ROI_BOX_HEAD.CLS_LOSS_WEIGHTS", str(class_weights))
    seen_stock, seen = _capture_classification(stock), _capture_classification(weighted)
    base, _ = run_losses(stock, batch)
    losses, _ = run_losses(weighted, batch)

    labels = seen["labels"]
    assert (labels == 4).any() and (labels < 4).any()  # background and shapes
    per_roi = -torch.log_softmax(seen["scores"].detach().double(), dim=1)[torch.arange(len(labels)), labels]
    w = torch.tensor(class_weights, dtype=torch.float64)[labels]
    assert losses["loss_cls"].item() == pytest.approx(((w * per_roi).sum() / w.sum()).item(), rel=1e-5)
    assert base["loss_cls"].item() == pytest.approx(per_roi.mean().item(), rel=1e-5)
    assert torch.equal(seen_stock["labels"], labels)
    # Only the classification loss is weighted.
    for name in ("loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"):
        assert losses[name].item() == pytest.approx(base[name].item(), rel=1e-6)


def test_class_weights_on_the_predictor_by_hand(tiny_cfg):
    cfg = tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", 2, "MODEL.ROI_BOX_HEAD.CLS_LOSS_WEIGHTS", "[2.0, 0.5, 1.0]")
    predictor = FastRCNNOutputLayers(cfg, ShapeSpec(channels=4))
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [0.5, 0.5, 0.5]])
    labels = torch.tensor([0, 1, 2])
    proposals = Instances((32, 32), proposal_boxes=Boxes(torch.tensor([[0.0, 0, 8, 8]] * 3)), gt_classes=labels)
    proposals.gt_boxes = Boxes(torch.tensor([[0.0, 0, 8, 8]] * 3))
    with EventStorage(0):
        losses = predictor.losses((scores, torch.zeros(3, 8)), [proposals])

    def nll(row, y):
        return math.log(sum(math.exp(v) for v in row)) - row[y]

    per_roi = [nll(row, y) for row, y in zip(scores.tolist(), labels.tolist())]
    expected = (2.0 * per_roi[0] + 0.5 * per_roi[1] + 1.0 * per_roi[2]) / (2.0 + 0.5 + 1.0)
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-6)

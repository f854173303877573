"""
The loss registries as a user meets them: built-in classification losses against independent
formulas, a loss registered with one decorator and selected from the config, and every invalid
loss setting failing when the model is built, naming the valid choices.
"""

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from detlib.layers.losses import (
    BOX_LOSS_REGISTRY,
    CLS_LOSS_REGISTRY,
    BoxLoss,
    BoxLossKind,
    ClassificationLoss,
    build_classification_loss,
)
from detlib.modeling.meta_arch.build import build_model

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0], [-0.5, 0.3, 3.0], [1.0, 1.0, 1.0]])
LABELS = torch.tensor([0, 1, 2, 2])  # 2 is background (K = 2)


def _log_softmax_by_hand(row):
    return [x - math.log(sum(math.exp(y) for y in row)) for x in row]


def test_cross_entropy_softmax_and_binary_by_hand():
    ce = build_classification_loss("cross_entropy")
    expected = -sum(_log_softmax_by_hand(row.tolist())[y] for row, y in zip(LOGITS, LABELS.tolist()))
    assert ce.multiclass(LOGITS, LABELS, None).item() == pytest.approx(expected, rel=1e-6)
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5])
    expected_weighted = -sum(
        w * _log_softmax_by_hand(row.tolist())[y] for row, y, w in zip(LOGITS, LABELS.tolist(), weights.tolist())
    )
    assert ce.multiclass(LOGITS, LABELS, weights).item() == pytest.approx(expected_weighted, rel=1e-6)

    logits, labels = torch.tensor([1.5, -0.5, 0.0]), torch.tensor([1.0, 0.0, 1.0])
    sig = [1 / (1 + math.exp(-x)) for x in logits.tolist()]
    expected = -sum(y * math.log(s) + (1 - y) * math.log(1 - s) for s, y in zip(sig, labels.tolist()))
    assert ce.binary(logits, labels, None).item() == pytest.approx(expected, rel=1e-6)

    # Label smoothing e: binary targets 1 - e/2 and e/2; softmax targets (1 - e) one-hot + e / (K + 1).
    smoothed = build_classification_loss("cross_entropy", label_smoothing=0.2)
    targets = [0.9 if y else 0.1 for y in labels.tolist()]
    expected = -sum(t * math.log(s) + (1 - t) * math.log(1 - s) for s, t in zip(sig, targets))
    assert smoothed.binary(logits, labels, None).item() == pytest.approx(expected, rel=1e-6)
    expected = 0.0
    for row, y in zip(LOGITS.tolist(), LABELS.tolist()):
        logp = _log_softmax_by_hand(row)
        expected -= 0.8 * logp[y] + 0.2 / 3 * sum(logp)
    assert smoothed.multiclass(LOGITS, LABELS, None).item() == pytest.approx(expected, rel=1e-6)


def test_focal_matches_torchvision():
    focal = build_classification_loss("focal", alpha=0.3, gamma=1.5)
    logits, labels = torch.tensor([1.5, -0.5, 0.0, 4.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = tv_sigmoid_focal_loss(logits, labels, alpha=0.3, gamma=1.5, reduction="sum")
    torch.testing.assert_close(focal.binary(logits, labels, None), expected)
    # K + 1 logits: one sigmoid per foreground class, background is the all-zero target.
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    expected = tv_sigmoid_focal_loss(LOGITS[:, :2], one_hot, alpha=0.3, gamma=1.5, reduction="none").sum(dim=1)
    weights = torch.tensor([1.0, 2.0, 0.0, 1.0])
    torch.testing.assert_close(focal.multiclass(LOGITS, LABELS, weights), (expected * weights).sum())
    unweighted = build_classification_loss("focal", alpha=-1, gamma=0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    torch.testing.assert_close(unweighted.binary(logits, labels, None), bce)


def test_registered_classification_losses_and_parameters():
    assert {"cross_entropy", "focal"} <= {name for name, _ in CLS_LOSS_REGISTRY}
    assert build_classification_loss("cross_entropy").params == {"label_smoothing": 0.0}
    assert build_classification_loss("focal").params == {"alpha": 0.25, "gamma": 2.0}


@pytest.fixture(scope="module")
def user_loss_calls():
    """
    A user's losses, each registered with one decorator: a (scaled) Brier score for classification
    and a scaled squared error of the deltas for box regression. They record their inputs.
    """
    calls, box_calls = [], []

    @CLS_LOSS_REGISTRY.register()
    def test_brier(scale: float = 1.0) -> ClassificationLoss:
        def summed(logits, labels, weights, error):
            loss = scale * (error if weights is None else error * weights).sum()
            calls.append((logits.detach(), labels, weights, loss.detach()))
            return loss

        def binary(logits, labels, weights):
            return summed(logits, labels, weights, (logits.sigmoid() - labels.float()) ** 2)

        def multiclass(logits, labels, weights):
            one_hot = torch.nn.functional.one_hot(labels, logits.shape[1])
            return summed(logits, labels, weights, ((logits.softmax(dim=1) - one_hot) ** 2).sum(1))

        return ClassificationLoss("test_brier", binary, multiclass, {"scale": scale})

    @BOX_LOSS_REGISTRY.register()
    def test_squared_deltas(scale: float = 1.0) -> BoxLoss:
        def fn(pred, target):
            box_calls.append((pred.detach(), target))
            return scale * ((pred - target) ** 2).sum()

        return BoxLoss("test_squared_deltas", BoxLossKind.DELTAS, fn, {"scale": scale})

    return calls, box_calls  # unregistered after this module by tests/conftest.py


def test_user_registered_loss_selected_by_config_is_the_one_used(user_loss_calls, tiny_cfg, batch, run_losses):
    brier_calls, box_calls = user_loss_calls
    baseline = build_model(tiny_cfg())
    cfg = tiny_cfg(
        "MODEL.RPN.CLS_LOSS_TYPE",
        "test_brier",
        "MODEL.RPN.CLS_LOSS_PARAMS.scale",
        3.0,
        "MODEL.ROI_BOX_HEAD.CLS_LOSS_TYPE",
        "test_brier",
        "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
        "test_squared_deltas",
        "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_PARAMS.scale",
        0.5,
    )
    model = build_model(cfg)
    model.load_state_dict(baseline.state_dict())
    assert model.proposal_generator.cls_loss.params == {"scale": 3.0}

    losses, _ = run_losses(model, batch)
    assert len(brier_calls) == 2 and len(box_calls) == 1
    (rpn_logits, rpn_labels, rpn_sampled, _), (roi_logits, roi_labels, roi_weights, _) = brier_calls
    assert rpn_logits.dim() == 1 and roi_logits.dim() == 2 and roi_weights is None

    # The RPN normalizes its sum by the anchors sampled per image times the images.
    by_hand = 3.0 * (((rpn_logits.sigmoid() - rpn_labels) ** 2) * rpn_sampled).sum() / (64 * len(batch))
    assert losses["loss_rpn_cls"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    probs = roi_logits.softmax(dim=1)
    by_hand = ((probs - torch.nn.functional.one_hot(roi_labels, 5)) ** 2).sum() / len(roi_labels)
    assert losses["loss_cls"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    # The box predictor normalizes its sum over the foreground by all sampled RoIs.
    fg_deltas, fg_targets = (x.reshape(-1, 4) for x in box_calls[0])
    assert len(fg_deltas) == int((roi_labels < 4).sum()) > 0
    by_hand = 0.5 * ((fg_deltas - fg_targets) ** 2).sum() / len(roi_labels)
    assert losses["loss_box_reg"].item() == pytest.approx(by_hand.item(), rel=1e-5)

    # Those inputs are the model's: the built-in losses on them give the stock model's losses.
    stock, _ = run_losses(baseline, batch)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        rpn_logits, rpn_labels, weight=rpn_sampled, reduction="sum"
    )
    assert stock["loss_rpn_cls"].item() == pytest.approx(bce.item() / (64 * len(batch)), rel=1e-5)
    ce = torch.nn.functional.cross_entropy(roi_logits, roi_labels)
    assert stock["loss_cls"].item() == pytest.approx(ce.item(), rel=1e-5)
    # smooth_l1 with beta 0 is L1.
    by_hand = (fg_deltas - fg_targets).abs().sum() / len(roi_labels)
    assert stock["loss_box_reg"].item() == pytest.approx(by_hand.item(), rel=1e-5)


# Other tests may have registered more losses: the built-in ones are listed, in order, among them.
REGRESSION_CHOICES = r"\[.*'ciou', 'diou', 'giou', 'l1', 'smooth_l1'"
CLASSIFICATION_CHOICES = r"\[.*'cross_entropy', 'focal'"


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["MODEL.RPN.BBOX_REG_LOSS_TYPE", "smoth_l1"], KeyError, "'smoth_l1'.*" + REGRESSION_CHOICES),
        (["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "iou"], KeyError, "'iou'.*" + REGRESSION_CHOICES),
        (["MODEL.RPN.CLS_LOSS_TYPE", "bce"], KeyError, "'bce'.*" + CLASSIFICATION_CHOICES),
        (["MODEL.ROI_BOX_HEAD.CLS_LOSS_TYPE", "softmax"], KeyError, "'softmax'.*" + CLASSIFICATION_CHOICES),
        (["MODEL.RPN.SMOOTH_L1_BETA", -0.1], ValueError, "beta must be a finite number >= 0"),
        (["MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", -1.0], ValueError, "beta must be a finite number >= 0"),
        (["MODEL.RPN.CLS_LOSS_TYPE", "focal", "MODEL.RPN.CLS_LOSS_PARAMS.gamma", -1.0], ValueError, "gamma must be"),
        (
            ["MODEL.ROI_BOX_HEAD.CLS_LOSS_TYPE", "focal", "MODEL.ROI_BOX_HEAD.CLS_LOSS_PARAMS.alpha", 1.5],
            ValueError,
            r"alpha must be in \[0, 1\], or -1",
        ),
        (
            ["MODEL.ROI_BOX_HEAD.CLS_LOSS_PARAMS.label_smoothing", 1.0],
            ValueError,
            r"label_smoothing must be in \[0, 1\)",
        ),
        (
            ["MODEL.RPN.CLS_LOSS_PARAMS.gama", 2.0],
            TypeError,
            r"'cross_entropy' has no parameter\(s\) \['gama'\]; its parameters are \{'label_smoothing': 0.0\}",
        ),
        (
            ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_PARAMS.eps", 0.0],
            ValueError,
            "eps must be > 0",
        ),
        (
            ["MODEL.RPN.BBOX_REG_LOSS_PARAMS.scale", 2.0],
            TypeError,
            r"'smooth_l1' has no parameter\(s\) \['scale'\]; its parameters are \{'beta': 0.0\}",
        ),
        (["MODEL.RPN.BBOX_REG_LOSS_PARAMS.beta", 1.0], ValueError, "sets beta; set it with MODEL.RPN.SMOOTH_L1_BETA"),
        (["MODEL.RPN.LOSS_WEIGHT", -1.0], ValueError, "RPN: the weight of 'loss_rpn_cls' must be a finite number >= 0"),
        (["MODEL.LOSS_WEIGHTS.loss_rpn_loc", -0.5], ValueError, "RPN: the weight of 'loss_rpn_loc' must be"),
        (["MODEL.LOSS_WEIGHTS.loss_cls", -1.0], ValueError, "FastRCNNOutputLayers: the weight of 'loss_cls' must be"),
        (["MODEL.LOSS_WEIGHTS.loss_box_reg", float("nan")], ValueError, "the weight of 'loss_box_reg' must be"),
        (["MODEL.LOSS_WEIGHTS.loss_mask", -2.0], ValueError, "Mask head: the weight of 'loss_mask' must be"),
        (
            ["MODEL.LOSS_WEIGHTS.loss_msk", 2.0],
            KeyError,
            r"\['loss_msk'\].*\['loss_box_reg', 'loss_cls', 'loss_mask', 'loss_rpn_cls', 'loss_rpn_loc'\]",
        ),
        (["MODEL.MASK_ON", False, "MODEL.LOSS_WEIGHTS.loss_mask", 2.0], KeyError, r"\['loss_mask'\], which no part"),
        (["MODEL.ROI_BOX_HEAD.CLS_LOSS_WEIGHTS", [1.0, 1.0]], ValueError, "must be 5 numbers >= 0"),
        (["MODEL.ROI_BOX_HEAD.CLS_LOSS_WEIGHTS", [1.0, 1.0, 1.0, -1.0, 1.0]], ValueError, "must be 5 numbers >= 0"),
    ],
)
def test_invalid_loss_settings_fail_at_build_time(tiny_cfg, overrides, error, message):
    cfg = tiny_cfg()
    # Set directly: a float NaN or a list survives no command-line round trip.
    for key, value in zip(overrides[0::2], overrides[1::2]):
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node[name]
        node[leaf] = value
    with pytest.raises(error, match=message):
        build_model(cfg)

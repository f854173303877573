"""
The loss registries: box-regression losses and classification losses, by name.

Two kinds of loss live here. Losses on *deltas* (`smooth_l1`, `l1`) compare predicted
`Box2BoxTransform` offsets with the offsets that reach the target box. Losses on *boxes*
(`giou`, `diou`, `ciou`) compare decoded boxes, XYXY in absolute pixels, with the target boxes.
Every loss returns the sum over the R compared pairs; the caller normalizes.

Add a loss by registering a factory named like the loss. Its keyword parameters (with defaults) are
the loss's parameters; it validates them and returns a `BoxLoss`::

    @BOX_LOSS_REGISTRY.register()
    def scaled_l1(scale: float = 2.0) -> BoxLoss:
        require_non_negative("scaled_l1", "scale", scale)
        return BoxLoss("scaled_l1", "deltas", lambda pred, target: scale * (pred - target).abs().sum())

and select it with `MODEL.RPN.BBOX_REG_LOSS_TYPE: scaled_l1`, its parameters set in
`MODEL.RPN.BBOX_REG_LOSS_PARAMS: {"scale": 3.0}` (likewise under `MODEL.ROI_BOX_HEAD`).

Classification losses (`cross_entropy`, `focal`) score logits against class labels, for the RPN's
objectness (one logit per anchor) and the box predictor's classes (K + 1 logits per RoI). They are
registered the same way in `CLS_LOSS_REGISTRY`, return a `ClassificationLoss`, and are selected with
`MODEL.RPN.CLS_LOSS_TYPE` / `MODEL.ROI_BOX_HEAD.CLS_LOSS_TYPE`, their parameters set in
`CLS_LOSS_PARAMS` next to it (`{"gamma": 1.5}`).
"""
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F

from detlib.utils.registry import Registry

__all__ = [
    "BOX_LOSS_REGISTRY",
    "BoxLoss",
    "build_box_loss",
    "box_loss_parameters",
    "resolve_box_loss",
    "CLS_LOSS_REGISTRY",
    "ClassificationLoss",
    "build_classification_loss",
    "classification_loss_parameters",
    "resolve_classification_loss",
    "sigmoid_focal_loss",
    "require_non_negative",
    "smooth_l1_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
]

BOX_LOSS_REGISTRY = Registry("BOX_LOSS")
BOX_LOSS_REGISTRY.__doc__ = """
Box-regression losses by name. Each entry is a factory `f(**params) -> BoxLoss` whose keyword
parameters and defaults are the loss's parameters, checked when the model is built.
"""

CLS_LOSS_REGISTRY = Registry("CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """
Classification losses by name. Each entry is a factory `f(**params) -> ClassificationLoss` whose
keyword parameters and defaults are the loss's parameters, checked when the model is built.
"""

_SPACES = ("deltas", "boxes")


@dataclass(frozen=True)
class BoxLoss:
    """
    A box-regression loss bound to its parameters.

    `space` says what `fn(pred, target)` compares: "deltas" (R x 4 `Box2BoxTransform` offsets) or
    "boxes" (R x 4 XYXY absolute boxes). `fn` returns the summed loss, a scalar tensor.
    """

    name: str
    space: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.space not in _SPACES:
            raise ValueError(f"BoxLoss '{self.name}': space must be one of {_SPACES}, got '{self.space}'")

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(pred, target)


@dataclass(frozen=True)
class ClassificationLoss:
    """
    A classification loss bound to its parameters. `fn(logits, labels, weights)` returns the
    weighted sum of the per-prediction losses, a scalar tensor, for either layout:

    * binary, one logit per prediction (the RPN's objectness): logits (R,), labels (R,) in {0, 1};
    * multi-class, K + 1 logits per prediction (the box predictor): logits R x (K + 1), labels (R,)
      int64 in [0, K], where K is background.

    `weights` is (R,) or None (all 1); the caller normalizes the sum.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
    params: Dict[str, Any] = field(default_factory=dict)

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self.fn(logits, labels, weights)


def require_non_negative(loss_name: str, param: str, value: float) -> None:
    """Raise a ValueError naming the loss and parameter unless `value` is a finite number >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"Loss '{loss_name}': {param} must be a finite number >= 0, got {value!r}")


def _require_positive(loss_name: str, param: str, value: float) -> None:
    require_non_negative(loss_name, param, value)
    if value == 0:
        raise ValueError(f"Loss '{loss_name}': {param} must be > 0, got {value!r}")


# What each registry holds: (description in messages, the type its factories return).
_KINDS = {
    BOX_LOSS_REGISTRY: ("box regression loss", BoxLoss),
    CLS_LOSS_REGISTRY: ("classification loss", ClassificationLoss),
}


def _factory(registry: Registry, name: str) -> Callable[..., Any]:
    if not isinstance(name, str) or name not in registry:
        kind = _KINDS[registry][0]
        raise KeyError(f"Unknown {kind} {name!r}; registered {kind}es: {sorted(n for n, _ in registry)}")
    return registry.get(name)


def _parameters(registry: Registry, name: str) -> Dict[str, Any]:
    signature = inspect.signature(_factory(registry, name))
    return {p.name: p.default for p in signature.parameters.values()}


def _build(registry: Registry, name: str, params: Dict[str, Any]) -> Any:
    kind, result_type = _KINDS[registry]
    factory = _factory(registry, name)
    accepted = _parameters(registry, name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"The {kind} '{name}' has no parameter(s) {unknown}; its parameters are {accepted}")
    loss = factory(**params)
    if not isinstance(loss, result_type):
        raise TypeError(f"The factory of {kind} '{name}' returned {type(loss).__name__}, not a {result_type.__name__}")
    return loss


def box_loss_parameters(name: str) -> Dict[str, Any]:
    """The parameters of the registered box loss `name` with their defaults."""
    return _parameters(BOX_LOSS_REGISTRY, name)


def build_box_loss(name: str, **params: Any) -> BoxLoss:
    """
    The registered box loss `name` bound to `params`. An unknown name, an unknown parameter or an
    invalid value raises, naming the valid choices.
    """
    return _build(BOX_LOSS_REGISTRY, name, params)


def classification_loss_parameters(name: str) -> Dict[str, Any]:
    """The parameters of the registered classification loss `name` with their defaults."""
    return _parameters(CLS_LOSS_REGISTRY, name)


def build_classification_loss(name: str, **params: Any) -> ClassificationLoss:
    """
    The registered classification loss `name` bound to `params`. An unknown name, an unknown
    parameter or an invalid value raises, naming the valid choices.
    """
    return _build(CLS_LOSS_REGISTRY, name, params)


def resolve_classification_loss(loss: Union[str, ClassificationLoss]) -> ClassificationLoss:
    """A `ClassificationLoss` from a registered name (with its default parameters) or as given."""
    return loss if isinstance(loss, ClassificationLoss) else build_classification_loss(loss)


def resolve_box_loss(
    loss: Union[str, BoxLoss], smooth_l1_beta: float = 0.0, params: Optional[Dict[str, Any]] = None
) -> BoxLoss:
    """
    A `BoxLoss` from Detectron2's pair of arguments (`box_reg_loss_type`, `smooth_l1_beta`) and
    detlib's `params`: a loss given by name is built with `params`, and with `beta=smooth_l1_beta`
    when it has a `beta` parameter that `params` does not set. A `BoxLoss` is returned as is.
    """
    if isinstance(loss, BoxLoss):
        return loss
    params = dict(params or {})
    if "beta" in box_loss_parameters(loss):
        params.setdefault("beta", smooth_l1_beta)
    return build_box_loss(loss, **params)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # An empty selection has mean 0, not NaN: a batch without foreground must not poison training.
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, beta: float, reduction: str = "none") -> torch.Tensor:
    """
    Huber-like loss, elementwise: 0.5 * x**2 / beta where |x| < beta, else |x| - 0.5 * beta, with
    x = input - target. beta (near) 0 is the L1 loss.
    """
    diff = torch.abs(input - target)
    if beta < 1e-5:
        # The quadratic branch would divide by ~0; its limit is plain L1.
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction)


def _overlap_terms(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    """IoU of matched XYXY boxes (..., 4) and the corners of their smallest enclosing box."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    inter_w = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
    inter_h = (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    intersection = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    iou = intersection / (union + eps)
    enclosing = (torch.min(x1, x1g), torch.min(y1, y1g), torch.max(x2, x2g), torch.max(y2, y2g))
    return iou, union, enclosing


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """
    Generalized IoU loss (Rezatofighi et al., 2019) of matched XYXY boxes (..., 4):
    1 - IoU + (area of the enclosing box not covered by the union) / (enclosing area).
    """
    iou, union, (xc1, yc1, xc2, yc2) = _overlap_terms(boxes1, boxes2, eps)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    loss = 1 - iou + (area_c - union) / (area_c + eps)
    return _reduce(loss, reduction)


def _distance_penalty(boxes1: torch.Tensor, boxes2: torch.Tensor, enclosing, eps: float) -> torch.Tensor:
    """Squared center distance over the squared diagonal of the enclosing box (the DIoU term)."""
    xc1, yc1, xc2, yc2 = enclosing
    diagonal_sq = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps
    center1 = (boxes1[..., :2] + boxes1[..., 2:]) / 2
    center2 = (boxes2[..., :2] + boxes2[..., 2:]) / 2
    distance_sq = ((center1 - center2) ** 2).sum(dim=-1)
    return distance_sq / diagonal_sq


def diou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """Distance IoU loss (Zheng et al., 2020) of matched XYXY boxes (..., 4): 1 - IoU + center penalty."""
    iou, _, enclosing = _overlap_terms(boxes1, boxes2, eps)
    loss = 1 - iou + _distance_penalty(boxes1, boxes2, enclosing, eps)
    return _reduce(loss, reduction)


def ciou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7) -> torch.Tensor:
    """
    Complete IoU loss (Zheng et al., 2020) of matched XYXY boxes (..., 4): the DIoU loss plus
    alpha * v, where v measures the aspect-ratio mismatch and alpha = v / (1 - IoU + v) is a
    constant weight (no gradient flows through it). `boxes2` is the target.
    """
    iou, _, enclosing = _overlap_terms(boxes1, boxes2, eps)
    w_pred, h_pred = boxes1[..., 2] - boxes1[..., 0], boxes1[..., 3] - boxes1[..., 1]
    w_gt, h_gt = boxes2[..., 2] - boxes2[..., 0], boxes2[..., 3] - boxes2[..., 1]
    v = (4 / math.pi**2) * (torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    loss = 1 - iou + _distance_penalty(boxes1, boxes2, enclosing, eps) + alpha * v
    return _reduce(loss, reduction)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> torch.Tensor:
    """
    Focal loss (Lin et al., 2017), elementwise on independent sigmoid logits with float targets in
    [0, 1]: the binary cross-entropy scaled by (1 - p_t) ** gamma, which fades out the easy
    predictions, and weighted alpha for positives, 1 - alpha for negatives (alpha < 0: unweighted).
    """
    probs = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


@BOX_LOSS_REGISTRY.register()
def smooth_l1(beta: float = 0.0) -> BoxLoss:
    """Smooth-L1 on deltas, quadratic below `beta` (beta 0: plain L1)."""
    require_non_negative("smooth_l1", "beta", beta)
    return BoxLoss(
        "smooth_l1", "deltas", lambda pred, target: smooth_l1_loss(pred, target, beta, "sum"), {"beta": beta}
    )


@BOX_LOSS_REGISTRY.register()
def l1() -> BoxLoss:
    """L1 on deltas."""
    return BoxLoss("l1", "deltas", lambda pred, target: torch.abs(pred - target).sum())


@BOX_LOSS_REGISTRY.register()
def giou(eps: float = 1e-7) -> BoxLoss:
    """Generalized IoU loss on decoded boxes."""
    _require_positive("giou", "eps", eps)
    return BoxLoss("giou", "boxes", lambda pred, target: giou_loss(pred, target, "sum", eps), {"eps": eps})


@BOX_LOSS_REGISTRY.register()
def diou(eps: float = 1e-7) -> BoxLoss:
    """Distance IoU loss on decoded boxes."""
    _require_positive("diou", "eps", eps)
    return BoxLoss("diou", "boxes", lambda pred, target: diou_loss(pred, target, "sum", eps), {"eps": eps})


@BOX_LOSS_REGISTRY.register()
def ciou(eps: float = 1e-7) -> BoxLoss:
    """Complete IoU loss on decoded boxes."""
    _require_positive("ciou", "eps", eps)
    return BoxLoss("ciou", "boxes", lambda pred, target: ciou_loss(pred, target, "sum", eps), {"eps": eps})


def _weighted_sum(loss: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    return loss.sum() if weights is None else (loss * weights).sum()


@CLS_LOSS_REGISTRY.register()
def cross_entropy(label_smoothing: float = 0.0) -> ClassificationLoss:
    """
    Cross-entropy: binary (sigmoid) on one logit per prediction, softmax over K + 1 logits. With
    `label_smoothing` e, targets move e of the way towards uniform (1/2 binary, 1/(K + 1) softmax).
    """
    require_non_negative("cross_entropy", "label_smoothing", label_smoothing)
    if label_smoothing >= 1:
        raise ValueError(f"Loss 'cross_entropy': label_smoothing must be in [0, 1), got {label_smoothing!r}")

    def fn(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        if logits.dim() == 1:
            targets = labels.to(logits.dtype) * (1 - label_smoothing) + 0.5 * label_smoothing
            return F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")
        loss = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
        return _weighted_sum(loss, weights)

    return ClassificationLoss("cross_entropy", fn, {"label_smoothing": label_smoothing})


@CLS_LOSS_REGISTRY.register()
def focal(alpha: float = 0.25, gamma: float = 2.0) -> ClassificationLoss:
    """
    Sigmoid focal loss. With K + 1 logits, each foreground class is an independent sigmoid whose
    target is 1 for its own class; the background logit is not used (background is "no class").
    """
    require_non_negative("focal", "gamma", gamma)
    if not (alpha == -1 or (isinstance(alpha, (int, float)) and 0 <= alpha <= 1)):
        raise ValueError(f"Loss 'focal': alpha must be in [0, 1], or -1 for no class weighting, got {alpha!r}")

    def fn(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        if logits.dim() == 1:
            return _weighted_sum(sigmoid_focal_loss(logits, labels.to(logits.dtype), alpha, gamma), weights)
        num_classes = logits.shape[1] - 1
        targets = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
        loss = sigmoid_focal_loss(logits[:, :num_classes], targets, alpha, gamma).sum(dim=1)
        return _weighted_sum(loss, weights)

    return ClassificationLoss("focal", fn, {"alpha": alpha, "gamma": gamma})

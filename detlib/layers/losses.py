"""
Losses by name: box-regression losses and classification losses, each registered as a factory
whose keyword parameters (with defaults) are the loss's parameters.

A box loss compares either predicted `Box2BoxTransform` offsets with the offsets that reach the
target (`BoxLossKind.DELTAS`: `smooth_l1`, `l1`) or decoded boxes, XYXY in absolute pixels, with
the target boxes (`BoxLossKind.BOXES`: `giou`, `diou`, `ciou`). A classification loss (`cross_entropy`,
`focal`) has a binary form (one logit per prediction, the RPN's objectness) and a multi-class form
(K + 1 logits per RoI, the box predictor's); the head picks the form it needs. Every loss returns
the sum over what it compares; the head normalizes and weights it.

Add a loss by registering a factory named like the loss; it validates its parameters and returns
the built loss::

    @BOX_LOSS_REGISTRY.register()
    def scaled_l1(scale: float = 2.0) -> BoxLoss:
        require_non_negative("scaled_l1", "scale", scale)
        return BoxLoss("scaled_l1", BoxLossKind.DELTAS, lambda pred, target: scale * (pred - target).abs().sum())

and select it with `MODEL.RPN.BBOX_REG_LOSS_TYPE: scaled_l1`, its parameters in
`MODEL.RPN.BBOX_REG_LOSS_PARAMS: {"scale": 3.0}` (likewise under `MODEL.ROI_BOX_HEAD`, and
`CLS_LOSS_TYPE` / `CLS_LOSS_PARAMS` for classification losses).
"""

import inspect
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from detlib.utils.registry import Registry

__all__ = [
    "BOX_LOSS_REGISTRY",
    "BoxLoss",
    "BoxLossKind",
    "build_box_loss",
    "box_loss_from_config",
    "resolve_box_reg_loss",
    "CLS_LOSS_REGISTRY",
    "ClassificationLoss",
    "build_classification_loss",
    "check_loss_weights",
    "require_non_negative",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
]

BOX_LOSS_REGISTRY = Registry("BOX_LOSS")
BOX_LOSS_REGISTRY.__doc__ = "Box-regression losses by name: factories `f(**params) -> BoxLoss`."

CLS_LOSS_REGISTRY = Registry("CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = "Classification losses by name: factories `f(**params) -> ClassificationLoss`."

# (fn(logits, labels, weights) -> weighted sum): the signature of both forms of a classification loss.
ClassificationFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


class BoxLossKind(str, Enum):
    """What a box loss compares: box deltas, or decoded boxes."""

    DELTAS = "deltas"
    BOXES = "boxes"


@dataclass(frozen=True)
class BoxLoss:
    """A box-regression loss bound to its parameters: `loss(pred, target)` (both R x 4) is the summed loss."""

    name: str
    kind: BoxLossKind
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # BoxLossKind("deltas") also accepts the plain string, so factories may pass either.
        object.__setattr__(self, "kind", BoxLossKind(self.kind))

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(pred, target)


@dataclass(frozen=True)
class ClassificationLoss:
    """
    A classification loss bound to its parameters, in its two forms; each returns the weighted sum
    of the per-prediction losses (`weights` (R,) or None for all 1), which the caller normalizes:

    * `binary(logits (R,), labels (R,) in {0, 1}, weights)`: one logit per prediction;
    * `multiclass(logits R x (K + 1), labels (R,) int64 in [0, K], weights)`: K is background.
    """

    name: str
    binary: ClassificationFn
    multiclass: ClassificationFn
    params: Dict[str, Any] = field(default_factory=dict)


def require_non_negative(loss_name: str, param: str, value: float) -> None:
    """Raise a ValueError naming the loss and parameter unless `value` is a finite number >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"Loss '{loss_name}': {param} must be a finite number >= 0, got {value!r}")


def _require_positive(loss_name: str, param: str, value: float) -> None:
    require_non_negative(loss_name, param, value)
    if value == 0:
        raise ValueError(f"Loss '{loss_name}': {param} must be > 0, got {value!r}")


def check_loss_weights(
    owner: str, weights: Union[float, Mapping[str, float]], names: Sequence[str]
) -> Dict[str, float]:
    """
    The weight of each of `owner`'s loss terms `names`: `weights` is one number for all of them, or
    a mapping that gives some of them theirs (the others keep 1). Raises a ValueError naming the
    owner and the term for a weight that is not a finite number >= 0, or for a name it does not make.
    """
    if not isinstance(weights, Mapping):
        weights = {name: weights for name in names}
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"{owner}: no loss term {unknown} to weight; its terms are {list(names)}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{owner}: the weight of '{name}' must be a finite number >= 0, got {weight!r}")
    return {name: float(weights.get(name, 1.0)) for name in names}


def _build(registry: Registry, kind: str, result_type: type, name: str, params: Mapping[str, Any]) -> Any:
    """Look `name` up in `registry`, check `params` against its factory's signature, and build it."""
    if not isinstance(name, str) or name not in registry:
        raise KeyError(f"Unknown {kind} {name!r}; registered {kind}es: {sorted(n for n, _ in registry)}")
    factory = registry.get(name)
    accepted = {p.name: p.default for p in inspect.signature(factory).parameters.values()}
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"The {kind} '{name}' has no parameter(s) {unknown}; its parameters are {accepted}")
    loss = factory(**params)
    if not isinstance(loss, result_type):
        raise TypeError(f"The factory of {kind} '{name}' returned {type(loss).__name__}, not a {result_type.__name__}")
    return loss


def build_box_loss(name: str, **params: Any) -> BoxLoss:
    """The registered box loss `name` bound to `params`; a bad name, parameter or value raises, naming the choices."""
    return _build(BOX_LOSS_REGISTRY, "box regression loss", BoxLoss, name, params)


def build_classification_loss(name: str, **params: Any) -> ClassificationLoss:
    """The registered classification loss `name` bound to `params`; a bad name, parameter or value raises."""
    return _build(CLS_LOSS_REGISTRY, "classification loss", ClassificationLoss, name, params)


def box_loss_from_config(node, path: str, beta_key: str = "SMOOTH_L1_BETA") -> BoxLoss:
    """
    The box loss of a head's config node (`path`, e.g. "MODEL.RPN"): `BBOX_REG_LOSS_TYPE` built with
    `BBOX_REG_LOSS_PARAMS`. Detectron2's `SMOOTH_L1_BETA` (`beta_key`: RetinaNet names it
    `SMOOTH_L1_LOSS_BETA`) is the one place a loss's `beta` is set; `BBOX_REG_LOSS_PARAMS` may not set it too.
    """
    params = dict(node.BBOX_REG_LOSS_PARAMS)
    if "beta" in params:
        raise ValueError(f"{path}.BBOX_REG_LOSS_PARAMS sets beta; set it with {path}.{beta_key} instead")
    name = node.BBOX_REG_LOSS_TYPE
    if name in BOX_LOSS_REGISTRY and "beta" in inspect.signature(BOX_LOSS_REGISTRY.get(name)).parameters:
        params["beta"] = node[beta_key]
    return build_box_loss(name, **params)


def resolve_box_reg_loss(box_reg_loss_type: Union[str, BoxLoss], smooth_l1_beta: float = 0.0) -> BoxLoss:
    """
    A head's box loss from Detectron2's keywords: `box_reg_loss_type` names a registered loss (built
    with `beta=smooth_l1_beta` when it takes a beta) or is an already built `BoxLoss`. A non-zero
    `smooth_l1_beta` that the loss cannot use is an error rather than ignored.
    """
    if isinstance(box_reg_loss_type, BoxLoss):
        if smooth_l1_beta:
            raise ValueError("smooth_l1_beta applies to a loss given by name; set it on the BoxLoss instead")
        return box_reg_loss_type
    takes_beta = (
        box_reg_loss_type in BOX_LOSS_REGISTRY
        and "beta" in inspect.signature(BOX_LOSS_REGISTRY.get(box_reg_loss_type)).parameters
    )
    if takes_beta:
        return build_box_loss(box_reg_loss_type, beta=smooth_l1_beta)
    if smooth_l1_beta:
        raise ValueError(f"smooth_l1_beta={smooth_l1_beta} is set but box loss {box_reg_loss_type!r} has no beta")
    return build_box_loss(box_reg_loss_type)


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
        "smooth_l1", BoxLossKind.DELTAS, lambda pred, target: smooth_l1_loss(pred, target, beta, "sum"), {"beta": beta}
    )


@BOX_LOSS_REGISTRY.register()
def l1() -> BoxLoss:
    """L1 on deltas."""
    return BoxLoss("l1", BoxLossKind.DELTAS, lambda pred, target: torch.abs(pred - target).sum())


@BOX_LOSS_REGISTRY.register()
def giou(eps: float = 1e-7) -> BoxLoss:
    """Generalized IoU loss on decoded boxes."""
    _require_positive("giou", "eps", eps)
    return BoxLoss("giou", BoxLossKind.BOXES, lambda pred, target: giou_loss(pred, target, "sum", eps), {"eps": eps})


@BOX_LOSS_REGISTRY.register()
def diou(eps: float = 1e-7) -> BoxLoss:
    """Distance IoU loss on decoded boxes."""
    _require_positive("diou", "eps", eps)
    return BoxLoss("diou", BoxLossKind.BOXES, lambda pred, target: diou_loss(pred, target, "sum", eps), {"eps": eps})


@BOX_LOSS_REGISTRY.register()
def ciou(eps: float = 1e-7) -> BoxLoss:
    """Complete IoU loss on decoded boxes."""
    _require_positive("ciou", "eps", eps)
    return BoxLoss("ciou", BoxLossKind.BOXES, lambda pred, target: ciou_loss(pred, target, "sum", eps), {"eps": eps})


def _weighted_sum(loss: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    return loss.sum() if weights is None else (loss * weights).sum()


@CLS_LOSS_REGISTRY.register()
def cross_entropy(label_smoothing: float = 0.0) -> ClassificationLoss:
    """
    Cross-entropy: sigmoid on one logit per prediction, softmax over K + 1 logits. With
    `label_smoothing` e, targets move e of the way towards uniform (1/2 binary, 1/(K + 1) softmax).
    """
    require_non_negative("cross_entropy", "label_smoothing", label_smoothing)
    if label_smoothing >= 1:
        raise ValueError(f"Loss 'cross_entropy': label_smoothing must be in [0, 1), got {label_smoothing!r}")

    def binary(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        targets = labels.to(logits.dtype) * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")

    def multiclass(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
        return _weighted_sum(loss, weights)

    return ClassificationLoss("cross_entropy", binary, multiclass, {"label_smoothing": label_smoothing})


@CLS_LOSS_REGISTRY.register()
def focal(alpha: float = 0.25, gamma: float = 2.0) -> ClassificationLoss:
    """
    Sigmoid focal loss. With K + 1 logits, each foreground class is an independent sigmoid whose
    target is 1 for its own class; the background logit is not used (background is "no class").
    """
    require_non_negative("focal", "gamma", gamma)
    if not (alpha == -1 or (isinstance(alpha, (int, float)) and 0 <= alpha <= 1)):
        raise ValueError(f"Loss 'focal': alpha must be in [0, 1], or -1 for no class weighting, got {alpha!r}")

    def binary(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        return _weighted_sum(sigmoid_focal_loss(logits, labels.to(logits.dtype), alpha, gamma), weights)

    def multiclass(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        num_classes = logits.shape[1] - 1
        targets = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
        loss = sigmoid_focal_loss(logits[:, :num_classes], targets, alpha, gamma).sum(dim=1)
        return _weighted_sum(loss, weights)

    return ClassificationLoss("focal", binary, multiclass, {"alpha": alpha, "gamma": gamma})

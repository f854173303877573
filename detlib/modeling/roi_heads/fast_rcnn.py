"""
The Fast R-CNN box predictor: class scores and class-specific box deltas per RoI, the losses on
them, and inference (score threshold, per-class NMS, top-k per image).

Shapes used below: R proposals in a batch, K foreground classes, B = 4 box coordinates. Class
index K is background. Boxes are XYXY in input-image pixels.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from detlib.config import configurable
from detlib.layers import ShapeSpec, batched_nms
from detlib.layers.losses import (
    BoxLoss,
    ClassificationLoss,
    build_classification_loss,
    resolve_box_loss,
    resolve_classification_loss,
)
from detlib.modeling.box_regression import Box2BoxTransform, dense_box_regression_loss
from detlib.structures import Boxes, Instances
from detlib.utils.events import get_event_storage

__all__ = ["FastRCNNOutputLayers", "fast_rcnn_inference", "fast_rcnn_inference_single_image"]


def fast_rcnn_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """
    Per image: drop (proposal, class) pairs scoring at most `score_thresh`, run NMS within each
    class, keep the `topk_per_image` best.

    Args:
        boxes: per image, R_i x (K * 4) class-specific boxes or R_i x 4 class-agnostic ones.
        scores: per image, R_i x (K + 1) class probabilities, background last.
        image_shapes: per image, (height, width) to clip the boxes to.
        topk_per_image: detections kept per image; negative keeps all.
    Returns:
        per image, `Instances` with `pred_boxes`, `scores` and `pred_classes`, best first, and the
        index of the proposal each detection came from.
    """
    per_image = [
        fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r for r, _ in per_image], [k for _, k in per_image]


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, torch.Tensor]:
    """`fast_rcnn_inference` for one image."""
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not finite.all():
        boxes, scores = boxes[finite], scores[finite]

    scores = scores[:, :-1]
    num_box_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_box_classes, 4)

    keep_mask = scores > score_thresh
    # (proposal index, class) of each kept pair, in row-major order like boxes[keep_mask].
    kept_pairs = keep_mask.nonzero()
    if num_box_classes == 1:
        boxes = boxes[kept_pairs[:, 0], 0]
    else:
        boxes = boxes[keep_mask]
    scores = scores[keep_mask]

    keep = batched_nms(boxes, scores, kept_pairs[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, kept_pairs = boxes[keep], scores[keep], kept_pairs[keep]

    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = kept_pairs[:, 1]
    return result, kept_pairs[:, 0]


def _log_classification_stats(pred_logits: torch.Tensor, gt_classes: torch.Tensor, prefix: str = "fast_rcnn") -> None:
    """Write the accuracy of the RoI classifier (overall, on foreground, missed foreground) to the storage."""
    num_instances = gt_classes.numel()
    if num_instances == 0:
        return
    pred_classes = pred_logits.argmax(dim=1)
    bg_class = pred_logits.shape[1] - 1
    is_fg = (gt_classes >= 0) & (gt_classes < bg_class)
    num_fg = int(is_fg.sum())
    fg_pred = pred_classes[is_fg]

    storage = get_event_storage()
    storage.put_scalar(f"{prefix}/cls_accuracy", (pred_classes == gt_classes).sum().item() / num_instances)
    if num_fg > 0:
        storage.put_scalar(f"{prefix}/fg_cls_accuracy", (fg_pred == gt_classes[is_fg]).sum().item() / num_fg)
        storage.put_scalar(f"{prefix}/false_negative", (fg_pred == bg_class).sum().item() / num_fg)


class FastRCNNOutputLayers(nn.Module):
    """
    Two linear layers on the box head's features: `cls_score` (K + 1 logits) and `bbox_pred`
    (K * 4 class-specific deltas, or 4 class-agnostic ones), with their losses and inference.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: Union[str, BoxLoss] = "smooth_l1",
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        cls_loss_weights: Optional[Sequence[float]] = None,
        cls_loss_type: Union[str, ClassificationLoss] = "cross_entropy",
    ):
        """
        Args:
            input_shape: the box head's output (its channels x height x width are flattened).
            box2box_transform: the coding of the predicted deltas relative to the proposals.
            num_classes: K, foreground classes.
            test_score_thresh: detections must score above this.
            test_nms_thresh: IoU threshold of the per-class NMS.
            test_topk_per_image: detections kept per image (negative: all).
            cls_agnostic_bbox_reg: one box per proposal instead of one per class.
            smooth_l1_beta: `beta` of the box loss when it has one (0 is plain L1).
            box_reg_loss_type: a name in the box-loss registry (`smooth_l1`, `giou`, ...) or a `BoxLoss`.
            loss_weight: a multiplier of both losses, or per loss ({"loss_cls": .., "loss_box_reg": ..}).
            cls_loss_weights: K + 1 per-class weights of the classification loss (background last).
            cls_loss_type: a name in the classification-loss registry (`cross_entropy`, `focal`, ...)
                or a `ClassificationLoss`.
        """
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.num_classes = num_classes
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        num_bbox_reg_classes = 1 if cls_agnostic_bbox_reg else num_classes
        box_dim = len(box2box_transform.weights)
        self.bbox_pred = nn.Linear(input_size, num_bbox_reg_classes * box_dim)

        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

        self.box2box_transform = box2box_transform
        self.box_loss = resolve_box_loss(box_reg_loss_type, smooth_l1_beta)
        self.cls_loss = resolve_classification_loss(cls_loss_type)
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image

        if not isinstance(loss_weight, dict):
            loss_weight = {"loss_cls": loss_weight, "loss_box_reg": loss_weight}
        for name, weight in loss_weight.items():
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"FastRCNNOutputLayers: loss weight of '{name}' must be a number >= 0, got {weight!r}")
        self.loss_weight = loss_weight

        if cls_loss_weights is not None and len(cls_loss_weights) > 0:
            valid = all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in cls_loss_weights)
            if len(cls_loss_weights) != num_classes + 1 or not valid:
                raise ValueError(
                    f"FastRCNNOutputLayers: cls_loss_weights must be {num_classes + 1} numbers >= 0 "
                    f"(one per class, background last), got {list(cls_loss_weights)}"
                )
            self.register_buffer(
                "cls_loss_weights", torch.tensor(cls_loss_weights, dtype=torch.float32), persistent=False
            )
        else:
            self.cls_loss_weights = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        box_head = cfg.MODEL.ROI_BOX_HEAD
        for key in ("USE_FED_LOSS", "USE_SIGMOID_CE"):
            if box_head[key]:
                raise ValueError(f"MODEL.ROI_BOX_HEAD.{key} is not supported by detlib's FastRCNNOutputLayers")
        loss_weights = cfg.MODEL.LOSS_WEIGHTS
        return {
            "input_shape": input_shape,
            "box2box_transform": Box2BoxTransform(weights=box_head.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic_bbox_reg": box_head.CLS_AGNOSTIC_BBOX_REG,
            "smooth_l1_beta": box_head.SMOOTH_L1_BETA,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_reg_loss_type": resolve_box_loss(
                box_head.BBOX_REG_LOSS_TYPE, box_head.SMOOTH_L1_BETA, box_head.BBOX_REG_LOSS_PARAMS
            ),
            "loss_weight": {
                "loss_cls": loss_weights.get("loss_cls", 1.0),
                "loss_box_reg": box_head.BBOX_REG_LOSS_WEIGHT * loss_weights.get("loss_box_reg", 1.0),
            },
            "cls_loss_weights": list(box_head.CLS_LOSS_WEIGHTS) or None,
            "cls_loss_type": build_classification_loss(box_head.CLS_LOSS_TYPE, **box_head.CLS_LOSS_PARAMS),
        }

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: R x D box-head features (or R x C x H x W, flattened here).
        Returns:
            R x (K + 1) class logits and R x (K * 4) (or R x 4) box deltas.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: the output of `forward` for the sampled proposals of all images.
            proposals: per image, the sampled proposals with `proposal_boxes` and `gt_classes`, and
                `gt_boxes` where the image has gt.
        Returns:
            `loss_cls`: the classification loss (cross-entropy by default) averaged over all R
                proposals; with `cls_loss_weights` w, the weighted mean sum(w[gt] * l) / sum(w[gt]).
            `loss_box_reg`: box loss summed over the foreground proposals, divided by R.
        """
        scores, proposal_deltas = predictions
        gt_classes = torch.cat([p.gt_classes for p in proposals], dim=0)
        _log_classification_stats(scores, gt_classes)

        proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        # Images without gt have no gt_boxes; all their proposals are background, so any box works.
        gt_boxes = torch.cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])
        losses = {
            "loss_cls": self.classification_loss(scores, gt_classes),
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes),
        }
        return {name: loss * self.loss_weight.get(name, 1.0) for name, loss in losses.items()}

    def classification_loss(self, scores: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """The (class-weighted) mean classification loss of R x (K + 1) logits against R labels."""
        if self.cls_loss_weights is None:
            return self.cls_loss(scores, gt_classes) / max(gt_classes.numel(), 1)
        weights = self.cls_loss_weights[gt_classes]
        # Where every sampled class has weight 0 the sum is 0 too; the clamp keeps it 0, not NaN.
        normalizer = weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
        return self.cls_loss(scores, gt_classes, weights) / normalizer

    def box_reg_loss(
        self,
        proposal_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_classes: torch.Tensor,
    ) -> torch.Tensor:
        """
        The box loss of the foreground proposals, normalized by the number of all proposals (so
        that each proposal weighs the same whatever the foreground fraction).

        Args:
            proposal_boxes, gt_boxes: R x 4.
            pred_deltas: R x (K * 4) or R x 4.
            gt_classes: R, background = K.
        """
        box_dim = proposal_boxes.shape[1]
        fg = torch.nonzero((gt_classes >= 0) & (gt_classes < self.num_classes), as_tuple=True)[0]
        if pred_deltas.shape[1] == box_dim:
            fg_pred_deltas = pred_deltas[fg]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg, gt_classes[fg]]
        loss = dense_box_regression_loss(
            [proposal_boxes[fg]], self.box2box_transform, [fg_pred_deltas[None]], [gt_boxes[fg]], ..., self.box_loss
        )
        return loss / max(gt_classes.numel(), 1.0)

    def inference(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """Detections per image (see `fast_rcnn_inference`) and the proposal index of each."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [p.image_size for p in proposals]
        return fast_rcnn_inference(
            boxes, scores, image_shapes, self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image
        )

    def predict_boxes(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per image, R_i x (K * 4) (or R_i x 4) decoded boxes."""
        if not len(proposals):
            return []
        _, proposal_deltas = predictions
        proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        boxes = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)
        return boxes.split([len(p) for p in proposals])

    def predict_boxes_for_gt_classes(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per image, R_i x 4 boxes decoded for each proposal's gt class (background: class 0)."""
        if not len(proposals):
            return []
        boxes = torch.cat(self.predict_boxes(predictions, proposals), dim=0)
        num_box_classes = boxes.shape[1] // 4
        if num_box_classes > 1:
            gt_classes = torch.cat([p.gt_classes for p in proposals], dim=0).clamp(0, num_box_classes - 1)
            rows = torch.arange(len(boxes), device=boxes.device)
            boxes = boxes.view(len(boxes), num_box_classes, 4)[rows, gt_classes]
        return boxes.split([len(p) for p in proposals])

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per image, R_i x (K + 1) softmax class probabilities."""
        scores, _ = predictions
        probs = F.softmax(scores, dim=-1)
        return probs.split([len(p) for p in proposals], dim=0)


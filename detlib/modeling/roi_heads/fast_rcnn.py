"""
The Fast R-CNN box predictor: class scores and class-specific box deltas per RoI, the losses on
them, and inference (score threshold, per-class NMS, top-k per image).

Shapes used below: R proposals in a batch, K foreground classes, B = 4 box coordinates. Class
index K is background. Boxes are XYXY in input-image pixels.
"""

import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import ShapeSpec, batched_nms
from detlib.layers.losses import BoxLoss, ClassificationLoss, build_classification_loss, check_loss_weights
from detlib.modeling.box_regression import Box2BoxTransform, dense_box_regression_loss
from detlib.modeling.loss_config import box_loss_from_config, cls_loss_from_config, resolve_box_reg_loss
from detlib.structures import Boxes, Instances
from detlib.utils.events import get_event_storage

__all__ = ["FastRCNNOutputLayers", "fast_rcnn_inference", "fast_rcnn_inference_single_image"]


def fast_rcnn_inference(
    boxes: List[Tensor],
    scores: List[Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[List[Instances], List[Tensor]]:
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
    settings = (score_thresh, nms_thresh, topk_per_image)
    per_image = [fast_rcnn_inference_single_image(b, s, hw, *settings) for b, s, hw in zip(boxes, scores, image_shapes)]
    return [detections for detections, _ in per_image], [sources for _, sources in per_image]


def fast_rcnn_inference_single_image(
    boxes: Tensor,
    scores: Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, Tensor]:
    """`fast_rcnn_inference` for one image."""
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    # Filtered whether or not any is dropped: no branch on the values, so inference can be exported.
    boxes, scores = boxes[finite], scores[finite]

    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    per_class_boxes = clipped.tensor.view(-1, boxes.shape[1] // 4, 4)  # R x (K or 1) x 4
    fg_scores = scores[:, :-1]  # the background column scores no detection

    # The candidates are the (RoI, class) pairs above the threshold in row-major order; NMS breaks
    # ties by that order, so keeping it keeps the detections equal to Detectron2's.
    roi_idx, class_idx = torch.nonzero(fg_scores > score_thresh, as_tuple=True)
    class_agnostic = per_class_boxes.shape[1] == 1
    candidates = per_class_boxes[roi_idx, 0 if class_agnostic else class_idx]
    candidate_scores = fg_scores[roi_idx, class_idx]

    keep = batched_nms(candidates, candidate_scores, class_idx, nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    detections = Instances(image_shape)
    detections.pred_boxes = Boxes(candidates[keep])
    detections.scores = candidate_scores[keep]
    detections.pred_classes = class_idx[keep]
    return detections, roi_idx[keep]


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


def _class_frequency_weights(dataset_names: Sequence[str], power: float) -> torch.Tensor:
    # The class frequencies are dataset metadata, kept with the datasets (see get_fed_loss_cls_weights).
    from detlib.data.detection_utils import get_fed_loss_cls_weights

    return get_fed_loss_cls_weights(dataset_names, power)


class FastRCNNOutputLayers(nn.Module):
    """
    Two linear layers on the box head's features: `cls_score` (K + 1 logits) and `bbox_pred`
    (K * 4 class-specific deltas, or 4 class-agnostic ones), with their losses and inference.
    """

    LOSS_NAMES = ("loss_cls", "loss_box_reg")

    @configurable
    def __init__(
        self,
        input_shape: Union[ShapeSpec, int],
        *,
        num_classes: int,
        box2box_transform: Box2BoxTransform,
        cls_agnostic_bbox_reg: bool = False,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        box_reg_loss_type: Union[str, BoxLoss] = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        cls_loss: Optional[ClassificationLoss] = None,
        loss_weight: Union[float, Mapping[str, float]] = 1.0,
        cls_loss_weights: Optional[Sequence[float]] = None,
        use_fed_loss: bool = False,
        use_sigmoid_ce: bool = False,
        get_fed_loss_cls_weights: Optional[Callable[[], torch.Tensor]] = None,
        fed_loss_num_classes: int = 50,
    ):
        """
        Args:
            input_shape: the box head's output (its channels x height x width are flattened), or its width.
            num_classes: K, foreground classes.
            box2box_transform: the coding of the predicted deltas relative to the proposals.
            cls_agnostic_bbox_reg: one box per proposal instead of one per class.
            test_score_thresh: detections must score above this.
            test_nms_thresh: IoU threshold of the per-class NMS.
            test_topk_per_image: detections kept per image (negative: all).
            box_reg_loss_type: the box-regression loss: a registered box loss's name ("smooth_l1", "l1", "giou", ...) or a
                built `BoxLoss`.
            smooth_l1_beta: the beta of a loss named by `box_reg_loss_type` that takes one (0: L1).
            cls_loss: the classification loss, used in its multi-class form (default: cross-entropy).
            loss_weight: a multiplier of both losses, or per loss ({"loss_cls": .., "loss_box_reg": ..}).
            cls_loss_weights: K + 1 per-class weights of the classification loss (background last).
            use_sigmoid_ce: classify with K independent sigmoids (binary cross-entropy per foreground class,
                background = all targets 0) instead of `cls_loss`; scores are then sigmoids too.
            use_fed_loss: the federated loss of LVIS (Wang et al. 2021, Zhou et al. 2021; needs
                `use_sigmoid_ce`): per batch, only the classes present in the sampled proposals' gt plus
                negative classes drawn with probability proportional to their weight, up to
                `fed_loss_num_classes` classes in all, take part in the loss.
            get_fed_loss_cls_weights: returns the K sampling weights of the classes for `use_fed_loss`
                (e.g. `get_fed_loss_cls_weights` of `detlib.data.detection_utils`: image counts to a power).
            fed_loss_num_classes: classes in the federated loss per batch, at least.
        """
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        in_dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        box_dim = len(box2box_transform.weights)
        self.num_classes = num_classes
        # Detectron2's parameter names, so that its checkpoints load: K + 1 logits, then the deltas.
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, box_dim * (1 if cls_agnostic_bbox_reg else num_classes))
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.constant_(layer.bias, 0)

        self.box2box_transform = box2box_transform
        self.test_score_thresh, self.test_nms_thresh = test_score_thresh, test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.box_loss = resolve_box_reg_loss(box_reg_loss_type, smooth_l1_beta)
        self.cls_loss = cls_loss if cls_loss is not None else build_classification_loss("cross_entropy")
        self.loss_weight = check_loss_weights("FastRCNNOutputLayers", loss_weight, self.LOSS_NAMES)

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

        if use_fed_loss and not use_sigmoid_ce:
            raise ValueError(
                "FastRCNNOutputLayers: use_fed_loss (MODEL.ROI_BOX_HEAD.USE_FED_LOSS) needs use_sigmoid_ce"
            )
        if use_sigmoid_ce and self.cls_loss_weights is not None:
            raise ValueError("FastRCNNOutputLayers: cls_loss_weights do not apply with use_sigmoid_ce")
        self.use_fed_loss, self.use_sigmoid_ce = use_fed_loss, use_sigmoid_ce
        self.fed_loss_num_classes = fed_loss_num_classes
        if use_fed_loss:
            if get_fed_loss_cls_weights is None:
                raise ValueError("FastRCNNOutputLayers: use_fed_loss needs get_fed_loss_cls_weights")
            weights = torch.as_tensor(get_fed_loss_cls_weights(), dtype=torch.float32)
            if weights.shape != (num_classes,):
                raise ValueError(
                    f"FastRCNNOutputLayers: the federated loss needs one class weight per class ({num_classes}), "
                    f"got shape {tuple(weights.shape)}"
                )
            # Persistent, as in Detectron2, whose checkpoints of these models carry it.
            self.register_buffer("fed_loss_cls_weights", weights)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        weights = cfg.MODEL.LOSS_WEIGHTS
        # Detectron2's per-head weight multiplies with detlib's per-term MODEL.LOSS_WEIGHTS.
        loss_weight = {
            "loss_cls": weights.get("loss_cls", 1.0),
            "loss_box_reg": head.BBOX_REG_LOSS_WEIGHT * weights.get("loss_box_reg", 1.0),
        }
        heads = cfg.MODEL.ROI_HEADS
        return dict(
            input_shape=input_shape,
            num_classes=heads.NUM_CLASSES,
            box2box_transform=Box2BoxTransform(weights=head.BBOX_REG_WEIGHTS),
            cls_agnostic_bbox_reg=head.CLS_AGNOSTIC_BBOX_REG,
            test_score_thresh=heads.SCORE_THRESH_TEST,
            test_nms_thresh=heads.NMS_THRESH_TEST,
            test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            box_reg_loss_type=box_loss_from_config(head, "MODEL.ROI_BOX_HEAD"),
            cls_loss=cls_loss_from_config(head, "MODEL.ROI_BOX_HEAD"),
            loss_weight=loss_weight,
            cls_loss_weights=list(head.CLS_LOSS_WEIGHTS) or None,
            use_fed_loss=head.USE_FED_LOSS,
            use_sigmoid_ce=head.USE_SIGMOID_CE,
            get_fed_loss_cls_weights=lambda: _class_frequency_weights(
                cfg.DATASETS.TRAIN, head.FED_LOSS_FREQ_WEIGHT_POWER
            ),
            fed_loss_num_classes=head.FED_LOSS_NUM_CLASSES,
        )

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
        return {
            "loss_cls": self.classification_loss(scores, gt_classes) * self.loss_weight["loss_cls"],
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes)
            * self.loss_weight["loss_box_reg"],
        }

    def classification_loss(self, scores: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """The (class-weighted) mean classification loss of R x (K + 1) logits against R labels."""
        if self.use_sigmoid_ce:
            return self.sigmoid_cross_entropy_loss(scores, gt_classes)
        if self.cls_loss_weights is None:
            return self.cls_loss.multiclass(scores, gt_classes, None) / max(gt_classes.numel(), 1)
        weights = self.cls_loss_weights[gt_classes]
        # Where every sampled class has weight 0 the sum is 0 too; the clamp keeps it 0, not NaN.
        normalizer = weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
        return self.cls_loss.multiclass(scores, gt_classes, weights) / normalizer

    def sigmoid_cross_entropy_loss(self, scores: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """
        Binary cross-entropy of each foreground class's logit (target 1 for the RoI's own class), summed over the
        classes (with the federated loss, over its classes only) and averaged over the R RoIs.
        """
        num_rois, num_classes = scores.shape[0], scores.shape[1] - 1
        if num_rois == 0:
            return scores.sum() * 0.0
        # Background RoIs (label K) have no 1 among the foreground columns.
        targets = F.one_hot(gt_classes, num_classes + 1)[:, :num_classes].to(scores.dtype)
        per_class = F.binary_cross_entropy_with_logits(scores[:, :num_classes], targets, reduction="none")
        if self.use_fed_loss:
            per_class = per_class * self.fed_loss_classes_mask(gt_classes, num_classes)[None, :]
        return per_class.sum() / num_rois

    def fed_loss_classes_mask(self, gt_classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        """
        (K,) 0/1: the foreground classes among `gt_classes`, plus negative classes drawn without replacement with
        probability proportional to `fed_loss_cls_weights`, until `fed_loss_num_classes` labels are chosen. As in
        Detectron2, the background label counts towards that number when a RoI has it, and the draw is one
        `torch.multinomial` over K + 1 odds (background's 0), so that both draw the same classes from one seed.
        """
        present = torch.unique(gt_classes)
        chosen = torch.zeros(num_classes + 1, dtype=torch.bool, device=gt_classes.device)
        chosen[present] = True
        missing = self.fed_loss_num_classes - present.numel()
        if missing > 0:
            odds = torch.zeros(num_classes + 1, device=gt_classes.device)
            odds[:num_classes] = self.fed_loss_cls_weights.float()
            odds[present] = 0
            # Fewer classes than asked for left to draw (a small label set): all of them.
            missing = min(missing, int(torch.count_nonzero(odds)))
            if missing > 0:
                chosen[torch.multinomial(odds, missing, replacement=False)] = True
        return chosen[:num_classes].to(self.fed_loss_cls_weights.dtype)

    def box_reg_loss(self, proposal_boxes: Tensor, gt_boxes: Tensor, pred_deltas: Tensor, gt_classes: Tensor) -> Tensor:
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
        return boxes.split([p.num_instances() for p in proposals])

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
        return boxes.split([p.num_instances() for p in proposals])

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per image, R_i x (K + 1) class probabilities: softmax, or sigmoids with `use_sigmoid_ce`."""
        scores, _ = predictions
        probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        return probs.split([p.num_instances() for p in proposals], dim=0)

"""
FCOS's head (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", as in Detectron2's
`fcos.py`): one anchor *point* per location of every pyramid level (a square of the level's stride), K class
logits, 4 distances to the box's edges (`Box2BoxTransformLinear`, in strides) and a centerness logit, from
a conv head shared by the levels. A point is positive for the smallest gt box that contains it, whose center
is within `center_sampling_radius` strides of it and whose farthest edge is in the level's size range.
Inference ranks sqrt(sigmoid(class) * sigmoid(centerness)).

Parameter names follow Detectron2's FCOS (`head.cls_subnet.*`, `head.bbox_subnet.*`, `head.cls_score`,
`head.bbox_pred`, `head.ctrness`), so its checkpoints load unchanged.
"""

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import ShapeSpec, cat, select_features
from detlib.layers.losses import (
    BoxLoss,
    ClassificationLoss,
    build_box_loss,
    build_classification_loss,
    check_loss_weights,
)
from detlib.structures import Boxes, Instances
from detlib.utils.events import get_event_storage

from ..anchor_generator import DefaultAnchorGenerator
from ..box_regression import Box2BoxTransformLinear, dense_box_regression_loss
from ..loss_config import box_loss_from_config, cls_loss_from_config
from .base import DenseHead, anchor_major
from .build import DENSE_HEAD_REGISTRY
from .retinanet_head import _conv_tower

__all__ = ["FCOSHead", "point_anchor_generator"]

# A level's points take the boxes whose farthest edge is between these multiples of its stride
# (the first level has no lower bound, the last no upper one): 0-64-128-256-512-inf for strides 8-128.
_SIZE_RANGE_IN_STRIDES = (4.0, 8.0)
# Detectron2's: the loss normalizer starts at 300 positives.
_INITIAL_NORMALIZER = 300.0


def point_anchor_generator(strides: Sequence[int]) -> DefaultAnchorGenerator:
    """One anchor per location: a square of the level's stride centered in the location's stride cell."""
    return DefaultAnchorGenerator(sizes=[[s] for s in strides], aspect_ratios=[1.0], strides=list(strides), offset=0.5)


@DENSE_HEAD_REGISTRY.register()
class FCOSHead(DenseHead):
    """
    FCOS's dense head: a classification subnet and a box subnet (3x3 convs shared by the levels) ending in
    `cls_score` (K logits per location), `bbox_pred` (4 distances) and, on the box subnet, `ctrness`.

    The levels (`in_features`, `strides`) may be left to the detector: Detectron2's Python configs build the
    head from channels alone (`input_shape=[ShapeSpec(channels=256)] * 5`) and `FCOS` sets them from its
    backbone through `configure`.
    """

    LOSS_NAMES = ("loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr")
    SETTINGS = (*DenseHead.SETTINGS, "center_sampling_radius", "cls_loss", "box_loss")

    @configurable
    def __init__(
        self,
        *,
        input_shape: Sequence[ShapeSpec],
        num_classes: int,
        conv_dims: Sequence[int],
        norm: str = "",
        prior_prob: float = 0.01,
        in_features: Optional[Sequence[str]] = None,
        strides: Optional[Sequence[int]] = None,
        box2box_transform: Optional[Box2BoxTransformLinear] = None,
        center_sampling_radius: float = 1.5,
        cls_loss: Optional[ClassificationLoss] = None,
        box_loss: Optional[BoxLoss] = None,
        loss_weight: Union[float, Mapping[str, float]] = 1.0,
        score_thresh: float = 0.2,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
    ):
        """
        Args:
            input_shape: per level the head runs on, its shape (only the channels are read; all equal).
            num_classes: K, the number of foreground classes (one sigmoid each).
            conv_dims: output channels of the convs of each subnet.
            norm: norm after each subnet conv ("" or "GN"; a BatchNorm shared by the levels is refused).
            prior_prob: the foreground probability every class logit starts at (its bias).
            in_features, strides: the names and strides of the levels, in the order of `input_shape`; None
                until the detector sets them (`configure`).
            box2box_transform: the coding of the distances (default: `Box2BoxTransformLinear`, by stride).
            center_sampling_radius: a point is positive only within this many strides of the box's center
                (in x and in y).
            cls_loss: classification loss, in its binary form (default: focal, alpha 0.25, gamma 2).
            box_loss: box loss over the positives (default: GIoU on the decoded boxes).
            loss_weight: multiplier of the three losses, or per loss (`LOSS_NAMES`).
            score_thresh, topk_candidates, nms_thresh, max_detections_per_image: inference (see `DenseHead`),
                on sqrt(class probability * centerness).
        """
        if norm in ("BN", "SyncBN"):
            raise ValueError(f"FCOSHead: norm {norm!r} would share one BatchNorm across the pyramid levels; use 'GN'")
        if not 0 < prior_prob < 1:
            raise ValueError(f"FCOSHead: prior_prob must be in (0, 1), got {prior_prob}")
        channels = {shape.channels for shape in input_shape}
        if len(channels) != 1:
            raise ValueError(f"FCOSHead shares its convs across levels, which have channels {sorted(channels)}")
        super().__init__(
            in_features=[] if in_features is None else in_features,
            num_classes=num_classes,
            anchor_generator=None,
            box2box_transform=box2box_transform or Box2BoxTransformLinear(normalize_by_size=True),
            num_levels=len(input_shape),
            score_thresh=score_thresh,
            topk_candidates=topk_candidates,
            nms_thresh=nms_thresh,
            max_detections_per_image=max_detections_per_image,
            initial_normalizer=_INITIAL_NORMALIZER,
        )
        in_channels = channels.pop()
        conv_dims = list(conv_dims)
        last_dim = conv_dims[-1] if conv_dims else in_channels
        self.cls_subnet = _conv_tower(in_channels, conv_dims, norm)
        self.bbox_subnet = _conv_tower(in_channels, conv_dims, norm)
        self.cls_score = nn.Conv2d(last_dim, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(last_dim, 4, kernel_size=3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(last_dim, 1, kernel_size=3, stride=1, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

        self.center_sampling_radius = float(center_sampling_radius)
        self.cls_loss = cls_loss if cls_loss is not None else build_classification_loss("focal")
        self.box_loss = box_loss if box_loss is not None else build_box_loss("giou")
        self.loss_weight = check_loss_weights("FCOS", loss_weight, self.LOSS_NAMES)
        if in_features is not None or strides is not None:
            self.configure(in_features=in_features, strides=strides)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        node = cfg.MODEL.FCOS
        shapes = select_features(input_shape, node.HEAD_IN_FEATURES, "MODEL.FCOS.HEAD_IN_FEATURES")
        return {
            "input_shape": shapes,
            "num_classes": node.NUM_CLASSES,
            "conv_dims": node.CONV_DIMS,
            "norm": node.NORM,
            "prior_prob": node.PRIOR_PROB,
            "in_features": node.HEAD_IN_FEATURES,
            "strides": [shape.stride for shape in shapes],
            "center_sampling_radius": node.CENTER_SAMPLING_RADIUS,
            "cls_loss": cls_loss_from_config(node, "MODEL.FCOS"),
            "box_loss": box_loss_from_config(node, "MODEL.FCOS"),
            "loss_weight": {name: cfg.MODEL.LOSS_WEIGHTS.get(name, 1.0) for name in cls.LOSS_NAMES},
            "score_thresh": node.TEST_SCORE_THRESH,
            "topk_candidates": node.TEST_TOPK_CANDIDATES,
            "nms_thresh": node.TEST_NMS_THRESH,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    def set_levels(self, in_features: Sequence[str], strides: Optional[Sequence[int]] = None) -> None:
        """The levels (see `DenseHead.set_levels`) and their points, one per location, from the strides."""
        if strides is None:
            raise ValueError("FCOSHead: in_features and strides go together")
        super().set_levels(in_features, strides)
        self.anchor_generator = point_anchor_generator(strides)

    def predict(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Per level, class logits N x (Hi*Wi) x K, distances N x (Hi*Wi) x 4, centerness logits N x (Hi*Wi) x 1."""
        logits, deltas, ctrness = [], [], []
        for x in features:
            box_features = self.bbox_subnet(x)
            logits.append(anchor_major(self.cls_score(self.cls_subnet(x)), self.num_classes))
            deltas.append(anchor_major(self.bbox_pred(box_features), 4))
            ctrness.append(anchor_major(self.ctrness(box_features), 1))
        return logits, deltas, ctrness

    def scores(self, predictions: Tuple[List[Tensor], ...]) -> List[Tensor]:
        """Per level, sqrt(sigmoid(class logit) * sigmoid(centerness logit)): N x R_l x K (FCOS paper, eq. 4)."""
        logits, _, ctrness = predictions
        return [torch.sqrt(cls.sigmoid() * ctr.sigmoid()) for cls, ctr in zip(logits, ctrness)]

    @torch.no_grad()
    def match_points(self, anchors: List[Boxes], gt_boxes: Boxes) -> Tensor:
        """
        M x R match quality of M gt boxes and the R points of all levels: 0 where the point may not take
        the box, else 1e8 minus the box's area (so the smallest eligible box is the best). A point may take
        a box that contains it, whose center is within `center_sampling_radius` strides of it in x and y,
        and whose farthest edge from it lies in its level's size range.
        """
        counts = [len(a) for a in anchors]
        points = Boxes.cat(anchors)
        centers = points.get_centers()  # R x 2
        strides = points.tensor[:, 2] - points.tensor[:, 0]  # R
        low, high = (strides * factor for factor in _SIZE_RANGE_IN_STRIDES)
        low[: counts[0]] = 0
        high[-counts[-1] :] = float("inf")

        offsets = (centers[None] - gt_boxes.get_centers()[:, None]).abs()  # M x R x 2
        near_center = offsets.max(dim=2).values < self.center_sampling_radius * strides[None]
        box = gt_boxes.tensor[:, None]  # M x 1 x 4
        edges = torch.stack(
            (
                centers[None, :, 0] - box[..., 0],
                centers[None, :, 1] - box[..., 1],
                box[..., 2] - centers[None, :, 0],
                box[..., 3] - centers[None, :, 1],
            ),
            dim=2,
        )  # M x R x 4: distances to the left, top, right, bottom edges
        inside = edges.min(dim=2).values > 0
        reach = edges.max(dim=2).values
        in_range = (reach > low[None]) & (reach < high[None])
        eligible = (near_center & inside & in_range).to(torch.float32)
        return eligible * (1e8 - gt_boxes.area()[:, None])

    @torch.no_grad()
    def label_points(self, anchors: List[Boxes], gt_instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """
        Returns:
            N x R int64 labels over the points of all levels (the matched gt class, or K for background:
            FCOS ignores none), and N x R x 4 matched gt boxes (meaningful only on the positives).
        """
        num_points = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        labels, boxes = [], []
        for instances in gt_instances:
            if len(instances) == 0:
                labels.append(torch.full((num_points,), self.num_classes, dtype=torch.int64, device=device))
                boxes.append(torch.zeros((num_points, 4), device=device))
                continue
            quality, matched = self.match_points(anchors, instances.gt_boxes).max(dim=0)
            matched_labels = instances.gt_classes[matched].clone()
            matched_labels[quality < 1e-5] = self.num_classes
            labels.append(matched_labels)
            boxes.append(instances.gt_boxes.tensor[matched])
        return torch.stack(labels), torch.stack(boxes)

    def centerness_targets(self, anchors: List[Boxes], gt_boxes: Tensor) -> Tensor:
        """N x R: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of each point in its matched box."""
        points = Boxes.cat(anchors).tensor
        distances = torch.stack([self.box2box_transform.get_deltas(points, boxes) for boxes in gt_boxes])
        left_right, top_bottom = distances[..., [0, 2]], distances[..., [1, 3]]
        ratio = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * (
            top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values
        )
        return torch.sqrt(ratio)

    def losses(
        self, anchors: List[Boxes], predictions: Tuple[List[Tensor], ...], gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        """
        `loss_fcos_cls` (classification over every point and class), `loss_fcos_loc` (box loss over the
        positives) and `loss_fcos_ctr` (binary cross-entropy of the centerness over the positives), each
        summed, divided by the loss normalizer (moving average of the positives, from 300) and weighted.
        """
        pred_logits, pred_deltas, pred_ctrness = predictions
        gt_labels, gt_boxes = self.label_points(anchors, gt_instances)
        positive = gt_labels != self.num_classes
        num_positive = positive.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_positive / gt_labels.shape[0])
        normalizer = self.update_loss_normalizer(num_positive)

        logits = cat(pred_logits, dim=1)  # N x R x K
        targets = F.one_hot(gt_labels, self.num_classes + 1)[..., : self.num_classes].to(logits.dtype)
        loss_cls = self.cls_loss.binary(logits.flatten(), targets.flatten(), None)
        loss_loc = dense_box_regression_loss(
            anchors, self.box2box_transform, pred_deltas, list(gt_boxes), positive, self.box_loss
        )
        ctrness_targets = self.centerness_targets(anchors, gt_boxes)
        ctrness = cat(pred_ctrness, dim=1).squeeze(2)
        loss_ctr = F.binary_cross_entropy_with_logits(ctrness[positive], ctrness_targets[positive], reduction="sum")
        losses = {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
        return {name: value / normalizer * self.loss_weight[name] for name, value in losses.items()}

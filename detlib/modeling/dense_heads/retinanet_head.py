"""
RetinaNet's head (Lin et al. 2017, "Focal Loss for Dense Object Detection"): every anchor of every pyramid
level gets K independent class logits and 4 box deltas from a small conv head shared by the levels. The
head owns everything after the backbone: the anchors, their labels, the losses (`loss_cls`, `loss_box_reg`)
and, through `DenseHead`, the decoding of detections. The focal loss itself is
`detlib.layers.losses.sigmoid_focal_loss`, reached through the loss registry
(`MODEL.RETINANET.CLS_LOSS_TYPE: focal`, with Detectron2's `FOCAL_LOSS_ALPHA` / `FOCAL_LOSS_GAMMA`).

Parameter names follow Detectron2's RetinaNet (`head.cls_subnet.0.weight`, `head.cls_score.bias`,
`head.bbox_pred.weight`, ...), so its checkpoints load unchanged.
"""

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import ShapeSpec, cat, get_norm, select_features
from detlib.layers.losses import (
    BoxLoss,
    ClassificationLoss,
    build_box_loss,
    build_classification_loss,
    check_loss_weights,
)
from detlib.structures import Boxes, Instances, pairwise_iou
from detlib.utils.events import get_event_storage

from ..anchor_generator import build_anchor_generator
from ..box_regression import Box2BoxTransform, dense_box_regression_loss
from ..loss_config import box_loss_from_config, cls_loss_from_config
from ..matcher import Matcher
from .base import DenseHead, anchor_major
from .build import DENSE_HEAD_REGISTRY

__all__ = ["RetinaNetHead"]


def _anchors_per_location(anchor_generator: nn.Module) -> int:
    """A, the number of anchors per location, which must be the same on every level (the convs are shared)."""
    counts = set(anchor_generator.num_anchors)
    if len(counts) != 1:
        raise ValueError(
            f"RetinaNetHead needs the same number of anchors on every level, got {anchor_generator.num_anchors}"
        )
    return counts.pop()


def _conv_tower(in_channels: int, conv_dims: Sequence[int], norm: str) -> nn.Sequential:
    """3x3 convs with `norm` (if any) and ReLU; indices as in Detectron2 (conv at 0, then norm, ReLU)."""
    layers: List[nn.Module] = []
    for cin, cout in zip([in_channels, *conv_dims[:-1]], conv_dims):
        layers.append(nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1))
        norm_layer = get_norm(norm, cout)
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@DENSE_HEAD_REGISTRY.register()
class RetinaNetHead(DenseHead):
    """
    RetinaNet's dense head over the pyramid levels `in_features`: a classification subnet and a box
    subnet (each a stack of 3x3 convs, shared by the levels), ending in `cls_score` (A*K logits per
    location) and `bbox_pred` (A*4 deltas).

    Training: anchors are matched to the gt boxes by IoU (positives, negatives, and an ignore band
    between), and the head returns its losses, each summed and divided by a moving average of the
    number of positive anchors per batch (Detectron2's loss normalizer). Inference: per level, the
    `topk_candidates` best (anchor, class) scores above `score_thresh` are decoded, then per-class
    NMS over all levels keeps at most `max_detections_per_image`.

    The constructor takes Detectron2's keywords (`input_shape`, `num_classes`, `num_anchors`, `conv_dims`,
    `norm`, `prior_prob`); Detectron2's Python configs give the levels, the anchors and the rest to
    `RetinaNet`, which sets them on the head through `configure`.
    """

    LOSS_NAMES = ("loss_cls", "loss_box_reg")
    SETTINGS = (*DenseHead.SETTINGS, "anchor_generator", "anchor_matcher", "cls_loss", "box_loss")

    @configurable
    def __init__(
        self,
        *,
        input_shape: Sequence[ShapeSpec],
        num_classes: int,
        conv_dims: Sequence[int],
        num_anchors: Optional[int] = None,
        norm: str = "",
        prior_prob: float = 0.01,
        in_features: Sequence[str] = (),
        anchor_generator: Optional[nn.Module] = None,
        anchor_matcher: Optional[Matcher] = None,
        box2box_transform: Optional[Box2BoxTransform] = None,
        cls_loss: Optional[ClassificationLoss] = None,
        box_loss: Optional[BoxLoss] = None,
        loss_weight: Union[float, Mapping[str, float]] = 1.0,
        normalizer_momentum: float = 0.9,
        initial_normalizer: float = 100.0,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
    ):
        """
        Args:
            input_shape: per level the head runs on, its shape (only the channels are read; all equal).
            num_classes: K, the number of foreground classes (one sigmoid each; no background logit).
            conv_dims: output channels of the convs of each subnet.
            num_anchors: A, the anchors per location (default: the anchor generator's, which must agree).
            norm: norm after each subnet conv ("" for none, "GN", ...). It is shared by the levels, so
                a BatchNorm would mix their statistics: "BN" and "SyncBN" are refused.
            prior_prob: the foreground probability every class logit starts at (its bias), so that
                the many background anchors do not swamp the first iterations.
            in_features: names of the levels, in the order of `input_shape`, e.g. ["p3", ..., "p7"]; empty
                until the detector sets them (`configure`).
            anchor_generator: per-level anchors, A per location on every level; None until set.
            anchor_matcher: labels anchors by IoU (0 background, -1 ignored, 1 foreground); default
                Detectron2's RetinaNet matcher (background below 0.4, foreground from 0.5, low-quality
                matches allowed).
            box2box_transform: the coding of the predicted deltas (default: `Box2BoxTransform`, weights 1).
            cls_loss: classification loss, used in its binary form (default: focal, alpha 0.25, gamma 2).
            box_loss: box regression loss over the positives (default: smooth-L1 with beta 0, i.e. L1,
                the default of Detectron2's RetinaNet).
            loss_weight: multiplier of both losses, or per loss ({"loss_cls": w, "loss_box_reg": w}).
            normalizer_momentum, initial_normalizer: the loss normalizer starts at `initial_normalizer`
                and moves each step to `momentum * old + (1 - momentum) * max(#positive anchors, 1)`.
            score_thresh, topk_candidates, nms_thresh, max_detections_per_image: inference, see above.
        """
        if norm in ("BN", "SyncBN"):
            raise ValueError(
                f"RetinaNetHead: norm {norm!r} would share one BatchNorm across the pyramid levels and per-level "
                "BatchNorm is not implemented; use 'GN' or '' (MODEL.RETINANET.NORM)"
            )
        if not 0 < prior_prob < 1:
            raise ValueError(
                f"RetinaNetHead: prior_prob (MODEL.RETINANET.PRIOR_PROB) must be in (0, 1), got {prior_prob}"
            )
        channels = {shape.channels for shape in input_shape}
        if len(channels) != 1:
            raise ValueError(f"RetinaNetHead shares its convs across levels, which have channels {sorted(channels)}")
        if num_anchors is None:
            if anchor_generator is None:
                raise ValueError("RetinaNetHead needs num_anchors or an anchor_generator")
            num_anchors = _anchors_per_location(anchor_generator)
        super().__init__(
            in_features=in_features,
            num_classes=num_classes,
            anchor_generator=None,
            box2box_transform=box2box_transform if box2box_transform is not None else Box2BoxTransform((1.0,) * 4),
            num_levels=len(input_shape),
            score_thresh=score_thresh,
            topk_candidates=topk_candidates,
            nms_thresh=nms_thresh,
            max_detections_per_image=max_detections_per_image,
            normalizer_momentum=normalizer_momentum,
            initial_normalizer=initial_normalizer,
        )
        self.num_anchors = num_anchors
        box_dim = anchor_generator.box_dim if anchor_generator is not None else 4
        in_channels = channels.pop()
        conv_dims = list(conv_dims)
        last_dim = conv_dims[-1] if conv_dims else in_channels
        self.cls_subnet = _conv_tower(in_channels, conv_dims, norm)
        self.bbox_subnet = _conv_tower(in_channels, conv_dims, norm)
        self.cls_score = nn.Conv2d(last_dim, num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(last_dim, num_anchors * box_dim, kernel_size=3, stride=1, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        # sigmoid(bias) = prior_prob.
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

        if anchor_matcher is None:
            anchor_matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
        self.anchor_matcher = anchor_matcher
        self.cls_loss = cls_loss if cls_loss is not None else build_classification_loss("focal")
        self.box_loss = box_loss if box_loss is not None else build_box_loss("smooth_l1", beta=0.0)
        self.loss_weight = check_loss_weights("RetinaNet", loss_weight, self.LOSS_NAMES)
        if anchor_generator is not None:
            self.configure(anchor_generator=anchor_generator)

    def configure(self, **settings) -> None:
        """`DenseHead.configure`; an anchor generator must give the head's `num_anchors` per location on every
        level, with the box size its `bbox_pred` was built for."""
        generator = settings.get("anchor_generator")
        if generator is not None:
            num_anchors = _anchors_per_location(generator)
            box_dim = self.bbox_pred.out_channels // self.num_anchors
            if num_anchors != self.num_anchors or generator.box_dim != box_dim:
                raise ValueError(
                    f"RetinaNetHead was built for {self.num_anchors} anchors of {box_dim} values per location, "
                    f"got an anchor generator of {num_anchors} anchors of {generator.box_dim} values"
                )
        super().configure(**settings)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        node = cfg.MODEL.RETINANET
        shapes = select_features(input_shape, node.IN_FEATURES, "MODEL.RETINANET.IN_FEATURES")
        in_channels = shapes[0].channels
        weights = cfg.MODEL.LOSS_WEIGHTS
        return {
            "input_shape": shapes,
            "in_features": node.IN_FEATURES,
            "num_classes": node.NUM_CLASSES,
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(node.IOU_THRESHOLDS, node.IOU_LABELS, allow_low_quality_matches=True),
            "box2box_transform": Box2BoxTransform(weights=node.BBOX_REG_WEIGHTS),
            "conv_dims": [in_channels] * node.NUM_CONVS,
            "norm": node.NORM,
            "prior_prob": node.PRIOR_PROB,
            "cls_loss": cls_loss_from_config(node, "MODEL.RETINANET"),
            "box_loss": box_loss_from_config(node, "MODEL.RETINANET", beta_key="SMOOTH_L1_LOSS_BETA"),
            "loss_weight": {name: weights.get(name, 1.0) for name in cls.LOSS_NAMES},
            "score_thresh": node.SCORE_THRESH_TEST,
            "topk_candidates": node.TOPK_CANDIDATES_TEST,
            "nms_thresh": node.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    def predict(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: per level, N x C x Hi x Wi.
        Returns:
            per level, class logits N x (Hi*Wi*A) x K and box deltas N x (Hi*Wi*A) x 4, in anchor order.
        """
        box_dim = self.anchor_generator.box_dim
        logits = [anchor_major(self.cls_score(self.cls_subnet(x)), self.num_classes) for x in features]
        deltas = [anchor_major(self.bbox_pred(self.bbox_subnet(x)), box_dim) for x in features]
        return logits, deltas

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """
        Returns:
            N x R int64 labels over the R anchors of all levels: the matched gt class in [0, K) for a
            foreground anchor, K for background, -1 for ignored; and N x R x 4 matched gt boxes
            (meaningful only on foreground anchors).
        """
        anchors = Boxes.cat(anchors)
        labels, matched_boxes = [], []
        for instances in gt_instances:
            gt_boxes = instances.gt_boxes
            matched_idxs, match_labels = self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
            if len(instances) == 0:
                labels.append(torch.full_like(matched_idxs, self.num_classes))
                matched_boxes.append(torch.zeros_like(anchors.tensor))
                continue
            per_anchor = instances.gt_classes[matched_idxs].clone()
            per_anchor[match_labels == 0] = self.num_classes
            per_anchor[match_labels == -1] = -1
            labels.append(per_anchor)
            matched_boxes.append(gt_boxes.tensor[matched_idxs])
        return torch.stack(labels), torch.stack(matched_boxes)

    def losses(
        self, anchors: List[Boxes], predictions: Tuple[List[Tensor], List[Tensor]], gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        """
        The classification loss over the (anchor, class) pairs of every non-ignored anchor, with
        target 1 for an anchor's matched class and 0 otherwise (background anchors: 0 for all K),
        and the box loss over the foreground anchors; each summed, divided by the loss normalizer
        and weighted.

        Args:
            anchors: per level, the anchors shared by the images.
            predictions: output of `predict`.
            gt_instances: per image, `gt_boxes` and `gt_classes`.
        """
        pred_logits, pred_deltas = predictions
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        num_images = gt_labels.shape[0]
        valid = gt_labels >= 0
        positive = valid & (gt_labels != self.num_classes)
        num_positive = positive.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_positive / num_images)
        normalizer = self.update_loss_normalizer(num_positive)

        logits = cat(pred_logits, dim=1)  # N x R x K
        # Ignored anchors get a background target and weight 0: weighting rather than selecting
        # keeps the loss free of a data-dependent shape.
        targets = F.one_hot(gt_labels.clamp(min=0), self.num_classes + 1)[..., : self.num_classes]
        weights = valid[..., None].expand_as(logits).to(logits.dtype)
        loss_cls = self.cls_loss.binary(logits.flatten(), targets.flatten().to(logits.dtype), weights.flatten())
        loss_box = dense_box_regression_loss(
            anchors, self.box2box_transform, pred_deltas, list(gt_boxes), positive, self.box_loss
        )
        return {
            "loss_cls": loss_cls / normalizer * self.loss_weight["loss_cls"],
            "loss_box_reg": loss_box / normalizer * self.loss_weight["loss_box_reg"],
        }

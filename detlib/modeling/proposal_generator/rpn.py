"""
Region Proposal Network (Faster R-CNN, Ren et al. 2015): an objectness score and box deltas for every
anchor, its own losses in training, and per-image proposals in both modes.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from detlib.config import configurable
from detlib.layers import Conv2d, ShapeSpec, cat
from detlib.layers.losses import (
    BoxLoss,
    ClassificationLoss,
    build_classification_loss,
    resolve_box_loss,
    resolve_classification_loss,
)
from detlib.structures import Boxes, ImageList, Instances, pairwise_iou
from detlib.utils.events import get_event_storage
from detlib.utils.registry import Registry

from ..anchor_generator import build_anchor_generator
from ..box_regression import Box2BoxTransform, dense_box_regression_loss
from ..matcher import Matcher
from ..sampling import subsample_labels
from .build import PROPOSAL_GENERATOR_REGISTRY
from .proposal_utils import find_top_rpn_proposals

__all__ = ["RPN_HEAD_REGISTRY", "build_rpn_head", "StandardRPNHead", "RPN"]

RPN_HEAD_REGISTRY = Registry("RPN_HEAD")
RPN_HEAD_REGISTRY.__doc__ = """
RPN heads, built from `(cfg, input_shape: List[ShapeSpec])`. Called on the list of feature maps, a
head returns per level the objectness logits (N x A x Hi x Wi) and anchor deltas (N x A*4 x Hi x Wi).
"""


def build_rpn_head(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """The RPN head named by `cfg.MODEL.RPN.HEAD_NAME`."""
    return RPN_HEAD_REGISTRY.get(cfg.MODEL.RPN.HEAD_NAME)(cfg, input_shape)


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead(nn.Module):
    """
    The same small convolutional head on every level: 3x3 conv(s) with ReLU, then two 1x1 convs
    predicting, per anchor, one objectness logit and `box_dim` deltas.
    """

    @configurable
    def __init__(self, *, in_channels: int, num_anchors: int, box_dim: int = 4, conv_dims: Sequence[int] = (-1,)):
        """
        Args:
            in_channels: channels of every input feature map.
            num_anchors: anchors per location (the same on every level).
            box_dim: deltas per anchor.
            conv_dims: output channels of the 3x3 convs, -1 meaning those of the conv's input. One conv is
                named `conv` (Detectron2's checkpoint layout); several are `conv.conv0`, `conv.conv1`...
        """
        super().__init__()
        if len(conv_dims) == 0:
            raise ValueError("StandardRPNHead needs at least one conv in conv_dims")
        channels = []
        for dim in conv_dims:
            channels.append((channels[-1] if channels else in_channels) if dim == -1 else dim)
        if any(c <= 0 for c in channels):
            raise ValueError(f"StandardRPNHead conv_dims must be positive or -1, got {list(conv_dims)}")
        if len(channels) == 1:
            self.conv = self._rpn_conv(in_channels, channels[0])
        else:
            self.conv = nn.Sequential()
            for k, (cin, cout) in enumerate(zip([in_channels] + channels[:-1], channels)):
                self.conv.add_module(f"conv{k}", self._rpn_conv(cin, cout))
        self.objectness_logits = nn.Conv2d(channels[-1], num_anchors, kernel_size=1, stride=1)
        self.anchor_deltas = nn.Conv2d(channels[-1], num_anchors * box_dim, kernel_size=1, stride=1)

        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    @staticmethod
    def _rpn_conv(in_channels: int, out_channels: int) -> nn.Module:
        return Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, activation=nn.ReLU())

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        in_channels = {shape.channels for shape in input_shape}
        if len(in_channels) != 1:
            raise ValueError(
                f"StandardRPNHead shares its convs across levels, which have channels {sorted(in_channels)}"
            )
        anchor_generator = build_anchor_generator(cfg, input_shape)
        num_anchors = set(anchor_generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(
                f"StandardRPNHead needs the same number of anchors on every level, got {anchor_generator.num_anchors}"
            )
        return {
            "in_channels": in_channels.pop(),
            "num_anchors": num_anchors.pop(),
            "box_dim": anchor_generator.box_dim,
            "conv_dims": cfg.MODEL.RPN.CONV_DIMS,
        }

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            features: per level, N x C x Hi x Wi.
        Returns:
            per level, objectness logits N x A x Hi x Wi and anchor deltas N x A*box_dim x Hi x Wi.
        """
        pred_objectness_logits, pred_anchor_deltas = [], []
        for x in features:
            t = self.conv(x)
            pred_objectness_logits.append(self.objectness_logits(t))
            pred_anchor_deltas.append(self.anchor_deltas(t))
        return pred_objectness_logits, pred_anchor_deltas


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """
    Region Proposal Network. In training it labels and samples anchors against the gt boxes and
    returns its losses `loss_rpn_cls` and `loss_rpn_loc` along with the proposals; in inference it
    returns the proposals and no losses.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        head: nn.Module,
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: Tuple[int, int],
        post_nms_topk: Tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        box_reg_loss_type: Union[str, BoxLoss] = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        cls_loss_type: Union[str, ClassificationLoss] = "cross_entropy",
    ):
        """
        Args:
            in_features: names of the feature maps used, e.g. ["p2", ..., "p6"].
            head: maps the feature list to per-level objectness logits and anchor deltas.
            anchor_generator: maps the feature list to per-level anchors.
            anchor_matcher: labels anchors by their IoU with the gt boxes.
            box2box_transform: the coding of the predicted anchor deltas.
            batch_size_per_image: anchors sampled per image for the losses; also their normalizer.
            positive_fraction: largest share of positives among the sampled anchors.
            pre_nms_topk: (training, inference) candidates kept per level before NMS.
            post_nms_topk: (training, inference) proposals kept per image after NMS.
            nms_thresh: IoU threshold of the per-level NMS.
            min_box_size: proposals with a side of at most this (pixels, after clipping) are dropped.
            anchor_boundary_thresh: anchors sticking out of the image by more than this many pixels
                are ignored in the losses; negative to keep them all.
            loss_weight: multiplier of both losses, or a dict {"loss_rpn_cls": w, "loss_rpn_loc": w}.
            box_reg_loss_type: name of a loss in `BOX_LOSS_REGISTRY`, or a `BoxLoss`.
            smooth_l1_beta: `beta` of a box loss that has one (smooth_l1; 0 makes it L1).
            cls_loss_type: name of a loss in `CLS_LOSS_REGISTRY`, or a `ClassificationLoss`, scoring
                the objectness logits (one per anchor, a binary problem).
        """
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_rpn_cls": loss_weight, "loss_rpn_loc": loss_weight}
        bad = {k: w for k, w in loss_weight.items() if not w >= 0}
        if bad:
            raise ValueError(f"RPN loss weights must be >= 0, got {bad}")
        self.loss_weight = dict(loss_weight)
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        # Built here so that a bad loss name or parameter fails when the model is built.
        self.box_reg_loss = resolve_box_loss(box_reg_loss_type, smooth_l1_beta)
        self.objectness_loss = resolve_classification_loss(cls_loss_type)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = cfg.MODEL.RPN.IN_FEATURES
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.RPN.IN_FEATURES {missing} are not among the backbone outputs {sorted(input_shape)}"
            )
        shapes = [input_shape[f] for f in in_features]
        loss_weights = cfg.MODEL.LOSS_WEIGHTS
        return {
            "in_features": in_features,
            "head": build_rpn_head(cfg, shapes),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(
                cfg.MODEL.RPN.IOU_THRESHOLDS, cfg.MODEL.RPN.IOU_LABELS, allow_low_quality_matches=True
            ),
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.RPN.BBOX_REG_WEIGHTS),
            "batch_size_per_image": cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": cfg.MODEL.RPN.POSITIVE_FRACTION,
            "pre_nms_topk": (cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST),
            "post_nms_topk": (cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            "nms_thresh": cfg.MODEL.RPN.NMS_THRESH,
            "min_box_size": cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            "anchor_boundary_thresh": cfg.MODEL.RPN.BOUNDARY_THRESH,
            "loss_weight": {
                "loss_rpn_cls": cfg.MODEL.RPN.LOSS_WEIGHT * loss_weights.get("loss_rpn_cls", 1.0),
                "loss_rpn_loc": cfg.MODEL.RPN.BBOX_REG_LOSS_WEIGHT
                * cfg.MODEL.RPN.LOSS_WEIGHT
                * loss_weights.get("loss_rpn_loc", 1.0),
            },
            "box_reg_loss_type": resolve_box_loss(
                cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE, cfg.MODEL.RPN.SMOOTH_L1_BETA, cfg.MODEL.RPN.BBOX_REG_LOSS_PARAMS
            ),
            "smooth_l1_beta": cfg.MODEL.RPN.SMOOTH_L1_BETA,
            "cls_loss_type": build_classification_loss(cfg.MODEL.RPN.CLS_LOSS_TYPE, **cfg.MODEL.RPN.CLS_LOSS_PARAMS),
        }

    def _subsample_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Keep a random sample of the positive and negative labels; set the rest to -1 (ignore)."""
        pos_idx, neg_idx = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, 0)
        labels.fill_(-1)
        labels.scatter_(0, pos_idx, 1)
        labels.scatter_(0, neg_idx, 0)
        return labels

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            anchors: per level, the anchors of every image.
            gt_instances: per image, `Instances` with `gt_boxes`.
        Returns:
            per image, the label of each of the R anchors of all levels (int8: 1 positive, 0
            negative, -1 ignored or not sampled), and the R x 4 gt box matched to each anchor
            (meaningful only where the label is 1).
        """
        anchors = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for instances in gt_instances:
            gt_boxes = instances.gt_boxes
            matched_idxs, labels = self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
            labels = labels.to(device=gt_boxes.device)
            if self.anchor_boundary_thresh >= 0:
                inside = anchors.inside_box(instances.image_size, self.anchor_boundary_thresh)
                labels[~inside] = -1
            gt_labels.append(self._subsample_labels(labels))
            if len(gt_boxes) == 0:
                matched_gt_boxes.append(torch.zeros_like(anchors.tensor))
            else:
                matched_gt_boxes.append(gt_boxes.tensor[matched_idxs])
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """
        Objectness (the classification loss, by default binary cross-entropy, over the sampled
        anchors) and localization (the box loss over the sampled positives) losses, both summed and
        divided by
        `batch_size_per_image * num_images`, then weighted.

        Args:
            anchors: per level, the anchors (R_l of them).
            pred_objectness_logits: per level, N x R_l.
            gt_labels, gt_boxes: the output of `label_and_sample_anchors`.
            pred_anchor_deltas: per level, N x R_l x 4.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # N x R
        pos_mask = gt_labels == 1
        sampled = gt_labels >= 0

        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", pos_mask.sum() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (gt_labels == 0).sum() / num_images)

        localization_loss = dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask, self.box_reg_loss
        )
        # Weighting by the sample mask instead of selecting the sampled anchors keeps the sum on the device.
        objectness_loss = self.objectness_loss(
            cat(pred_objectness_logits, dim=1).flatten(),
            pos_mask.flatten().to(torch.float32),
            sampled.flatten().to(torch.float32),
        )
        normalizer = self.batch_size_per_image * num_images
        losses = {"loss_rpn_cls": objectness_loss / normalizer, "loss_rpn_loc": localization_loss / normalizer}
        return {name: loss * self.loss_weight.get(name, 1.0) for name, loss in losses.items()}

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        Args:
            images: the padded input batch (its `image_sizes` bound the proposals).
            features: feature maps by name, N x C x Hi x Wi.
            gt_instances: per image, `Instances` with `gt_boxes`; needed in training.
        Returns:
            per image, `Instances(proposal_boxes, objectness_logits)` sorted by decreasing logit,
            and the loss dict (empty in inference).
        """
        features = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(features)
        pred_objectness_logits, pred_anchor_deltas = self.rpn_head(features)
        box_dim = self.anchor_generator.box_dim
        # Anchor order is (row, column, cell anchor) per level: bring the predictions to it.
        pred_objectness_logits = [
            logits.permute(0, 2, 3, 1).flatten(1) for logits in pred_objectness_logits  # N x Hi*Wi*A
        ]
        pred_anchor_deltas = [
            deltas.view(deltas.shape[0], -1, box_dim, deltas.shape[-2], deltas.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)  # N x Hi*Wi*A x box_dim
            for deltas in pred_anchor_deltas
        ]

        if self.training:
            if gt_instances is None:
                raise ValueError("RPN needs gt_instances in training")
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        else:
            losses = {}
        proposals = self.predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, images.image_sizes)
        return proposals, losses

    @torch.no_grad()
    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """
        Decode the deltas and select the top proposals of each image. Proposals are constants for
        the second stage: no gradient flows back through their coordinates.
        """
        proposals = self._decode_proposals(anchors, pred_anchor_deltas)
        return find_top_rpn_proposals(
            proposals,
            pred_objectness_logits,
            image_sizes,
            self.nms_thresh,
            self.pre_nms_topk[self.training],
            self.post_nms_topk[self.training],
            self.min_box_size,
            self.training,
        )

    def _decode_proposals(self, anchors: List[Boxes], pred_anchor_deltas: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per level, N x R_l x 4 boxes: the anchors moved by the predicted deltas."""
        proposals = []
        for anchors_l, deltas_l in zip(anchors, pred_anchor_deltas):
            num_images, num_anchors, box_dim = deltas_l.shape
            anchors_l = anchors_l.tensor.expand(num_images, -1, -1).reshape(-1, box_dim)
            boxes = self.box2box_transform.apply_deltas(deltas_l.reshape(-1, box_dim), anchors_l)
            proposals.append(boxes.view(num_images, num_anchors, box_dim))
        return proposals

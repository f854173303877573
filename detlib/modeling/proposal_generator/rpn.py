"""
Region Proposal Network (Faster R-CNN, Ren et al. 2015): an objectness score and box deltas for every
anchor, its own losses in training, and per-image proposals in both modes.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import Conv2d, ShapeSpec, cat, select_features
from detlib.layers.losses import BoxLoss, ClassificationLoss, build_classification_loss, check_loss_weights
from detlib.modeling.loss_config import box_loss_from_config, cls_loss_from_config, resolve_box_reg_loss
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
        return Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, activation=nn.ReLU(inplace=True))

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

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: per level, N x C x Hi x Wi.
        Returns:
            per level, objectness logits N x A x Hi x Wi and anchor deltas N x A*box_dim x Hi x Wi.
        """
        hidden = [self.conv(level) for level in features]
        return [self.objectness_logits(h) for h in hidden], [self.anchor_deltas(h) for h in hidden]


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """
    Region Proposal Network. Training: anchors are labelled against the gt boxes and sampled, and
    the losses `loss_rpn_cls` and `loss_rpn_loc` come back with the proposals. Inference: the
    proposals and an empty loss dict.
    """

    LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc")

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        anchor_generator: nn.Module,
        head: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        pre_nms_topk: Tuple[int, int],
        post_nms_topk: Tuple[int, int],
        batch_size_per_image: int,
        positive_fraction: float,
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: Union[float, Mapping[str, float]] = 1.0,
        box_reg_loss_type: Union[str, BoxLoss] = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        cls_loss: Optional[ClassificationLoss] = None,
    ):
        """
        Args:
            in_features: names of the feature maps used, e.g. ["p2", ..., "p6"].
            anchor_generator: maps the feature list to per-level anchors.
            head: maps the feature list to per-level objectness logits and anchor deltas.
            anchor_matcher: labels anchors by their IoU with the gt boxes.
            box2box_transform: the coding of the predicted anchor deltas.
            pre_nms_topk: (training, inference) candidates kept per level before NMS.
            post_nms_topk: (training, inference) proposals kept per image after NMS.
            batch_size_per_image: anchors sampled per image for the losses; also their normalizer.
            positive_fraction: largest share of positives among the sampled anchors.
            nms_thresh: IoU threshold of the per-level NMS.
            min_box_size: proposals with a side of at most this (pixels, after clipping) are dropped.
            anchor_boundary_thresh: anchors sticking out of the image by more than this many pixels
                are ignored in the losses; negative to keep them all.
            loss_weight: multiplier of both losses, or per loss ({"loss_rpn_cls": w, "loss_rpn_loc": w}).
            box_reg_loss_type: the localization loss: a registered box loss's name ("smooth_l1", "l1", "giou", ...) or a
                built `BoxLoss`.
            smooth_l1_beta: the beta of a loss named by `box_reg_loss_type` that takes one (0: L1).
            cls_loss: the objectness loss, used in its binary form (default: cross-entropy).
        """
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head, self.anchor_generator, self.anchor_matcher = head, anchor_generator, anchor_matcher
        self.box2box_transform = box2box_transform
        # Keyed by `self.training`, so that one lookup serves both modes.
        self.pre_nms_topk = dict(zip((True, False), pre_nms_topk))
        self.post_nms_topk = dict(zip((True, False), post_nms_topk))
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.nms_thresh, self.min_box_size = nms_thresh, float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        self.loss_weight = check_loss_weights("RPN", loss_weight, self.LOSS_NAMES)
        self.box_loss = resolve_box_reg_loss(box_reg_loss_type, smooth_l1_beta)
        self.cls_loss = cls_loss if cls_loss is not None else build_classification_loss("cross_entropy")

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        rpn = cfg.MODEL.RPN
        shapes = select_features(input_shape, rpn.IN_FEATURES, "MODEL.RPN.IN_FEATURES")
        weights = cfg.MODEL.LOSS_WEIGHTS
        # Detectron2's per-head weights multiply with detlib's per-term MODEL.LOSS_WEIGHTS.
        loss_weight = {
            "loss_rpn_cls": rpn.LOSS_WEIGHT * weights.get("loss_rpn_cls", 1.0),
            "loss_rpn_loc": rpn.BBOX_REG_LOSS_WEIGHT * rpn.LOSS_WEIGHT * weights.get("loss_rpn_loc", 1.0),
        }
        matcher = Matcher(rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True)
        return dict(
            in_features=rpn.IN_FEATURES,
            head=build_rpn_head(cfg, shapes),
            anchor_generator=build_anchor_generator(cfg, shapes),
            anchor_matcher=matcher,
            box2box_transform=Box2BoxTransform(weights=rpn.BBOX_REG_WEIGHTS),
            pre_nms_topk=(rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
            post_nms_topk=(rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
            batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
            positive_fraction=rpn.POSITIVE_FRACTION,
            nms_thresh=rpn.NMS_THRESH,
            min_box_size=cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            anchor_boundary_thresh=rpn.BOUNDARY_THRESH,
            loss_weight=loss_weight,
            box_reg_loss_type=box_loss_from_config(rpn, "MODEL.RPN"),
            cls_loss=cls_loss_from_config(rpn, "MODEL.RPN"),
        )

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
    ) -> Tuple[List[Tensor], List[Tensor]]:
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
        pred_objectness_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        The objectness loss (`cls_loss`, binary, over the sampled anchors) and the localization
        loss (`box_loss` over the sampled positives), each summed, divided by
        `batch_size_per_image * num_images` and weighted.

        Args:
            anchors: per level, the anchors (R_l of them).
            pred_objectness_logits: per level, N x R_l.
            gt_labels, gt_boxes: the output of `label_and_sample_anchors`.
            pred_anchor_deltas: per level, N x R_l x 4.
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # N x R
        positive = labels == 1
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", positive.sum() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (labels == 0).sum() / num_images)

        transform = self.box2box_transform
        loc = dense_box_regression_loss(anchors, transform, pred_anchor_deltas, gt_boxes, positive, self.box_loss)
        # Weighting by the sample mask instead of selecting the sampled anchors keeps the sum on the device.
        sample_weights = (labels >= 0).flatten().to(torch.float32)
        logits = cat(pred_objectness_logits, dim=1).flatten()
        objectness = self.cls_loss.binary(logits, positive.flatten().to(torch.float32), sample_weights)
        normalizer = self.batch_size_per_image * num_images
        weight = self.loss_weight
        return {
            "loss_rpn_cls": objectness / normalizer * weight["loss_rpn_cls"],
            "loss_rpn_loc": loc / normalizer * weight["loss_rpn_loc"],
        }

    def forward(
        self, images: ImageList, features: Dict[str, Tensor], gt_instances: Optional[List[Instances]] = None
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """
        Args:
            images: the padded input batch (its `image_sizes` bound the proposals).
            features: feature maps by name, N x C x Hi x Wi.
            gt_instances: per image, `Instances` with `gt_boxes`; needed in training.
        Returns:
            per image, `Instances(proposal_boxes, objectness_logits)` sorted by decreasing logit,
            and the loss dict (empty in inference).
        """
        levels = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(levels)
        logits_maps, delta_maps = self.rpn_head(levels)
        box_dim = self.anchor_generator.box_dim
        # Anchors are ordered (row, column, cell anchor) within a level: bring the predictions to it.
        pred_objectness_logits = [m.permute(0, 2, 3, 1).flatten(1) for m in logits_maps]  # N x Hi*Wi*A
        pred_anchor_deltas = [
            m.view(m.shape[0], -1, box_dim, *m.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, -2)  # N x Hi*Wi*A x B
            for m in delta_maps
        ]

        losses = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("RPN needs gt_instances in training")
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        proposals = self.predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, images.image_sizes)
        return proposals, losses

    @torch.no_grad()
    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """
        Decode the deltas and select the top proposals of each image. Proposals are constants for
        the second stage: no gradient flows back through their coordinates.
        """
        boxes = self._decode_proposals(anchors, pred_anchor_deltas)
        mode = self.training
        pre_topk, post_topk = self.pre_nms_topk[mode], self.post_nms_topk[mode]
        return find_top_rpn_proposals(
            boxes, pred_objectness_logits, image_sizes, self.nms_thresh, pre_topk, post_topk, self.min_box_size, mode
        )

    def _decode_proposals(self, anchors: List[Boxes], pred_anchor_deltas: List[Tensor]) -> List[Tensor]:
        """Per level, N x R_l x 4 boxes: the anchors moved by the predicted deltas."""
        proposals = []
        for anchors_l, deltas_l in zip(anchors, pred_anchor_deltas):
            num_images, num_anchors, box_dim = deltas_l.shape
            anchors_l = anchors_l.tensor.expand(num_images, -1, -1).reshape(-1, box_dim)
            boxes = self.box2box_transform.apply_deltas(deltas_l.reshape(-1, box_dim), anchors_l)
            proposals.append(boxes.view(num_images, num_anchors, box_dim))
        return proposals

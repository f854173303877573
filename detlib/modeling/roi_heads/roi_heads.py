"""
The second stage of R-CNN: label and sample the proposals against the gt, pool their features,
and run the box (and mask, keypoint) heads, which compute their own losses in training.
"""

import inspect
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import ShapeSpec, select_features
from detlib.modeling.matcher import Matcher
from detlib.modeling.poolers import ROIPooler
from detlib.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detlib.modeling.sampling import subsample_labels
from detlib.structures import Boxes, ImageList, Instances, pairwise_iou
from detlib.utils.events import get_event_storage
from detlib.utils.registry import Registry

from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers
from .keypoint_head import build_keypoint_head, select_proposals_with_visible_keypoints
from .mask_head import build_mask_head

__all__ = [
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "StandardROIHeads",
    "build_roi_heads",
    "random_subset",
    "select_foreground_proposals",
]

# Per image, the gt instances: given in training only.
TargetList = Optional[List[Instances]]

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
RoI heads, built from `(cfg, input_shape: Dict[str, ShapeSpec])`. Called as
`(images, features, proposals, targets=None)`, they return `(instances, losses)`: in training the
sampled proposals and the loss dict, in inference the detections and `{}`.
"""


def build_roi_heads(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The RoI heads named by `cfg.MODEL.ROI_HEADS.NAME`."""
    return ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg, input_shape)


def select_foreground_proposals(
    proposals: List[Instances], bg_label: int
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """
    Per image, the proposals whose `gt_classes` is a foreground class (neither ignored (-1) nor
    `bg_label`), and the bool mask that selected them.
    """
    if not isinstance(proposals, (list, tuple)) or not all(isinstance(p, Instances) for p in proposals):
        raise TypeError("select_foreground_proposals takes a list of Instances")
    if not all(p.has("gt_classes") for p in proposals):
        raise ValueError("select_foreground_proposals: every proposal Instances needs gt_classes")
    fg_proposals, fg_masks = [], []
    for per_image in proposals:
        gt_classes = per_image.gt_classes
        is_fg = (gt_classes != -1) & (gt_classes != bg_label)
        fg_proposals.append(per_image[torch.nonzero(is_fg, as_tuple=True)[0]])
        fg_masks.append(is_fg)
    return fg_proposals, fg_masks


def random_subset(proposals: Instances, max_count: int) -> Instances:
    """`proposals` itself when it has at most `max_count` entries, else `max_count` of them drawn at random
    (without replacement, in random order)."""
    if len(proposals) <= max_count:
        return proposals
    return proposals[torch.randperm(len(proposals), device=proposals.proposal_boxes.device)[:max_count]]


class ROIHeads(nn.Module):
    """
    What every RoI head shares: matching the proposals to the gt and sampling a fixed number of
    them with a fixed foreground fraction for training. Subclasses implement `forward`.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
    ):
        """
        Args:
            num_classes: foreground classes; label `num_classes` is background.
            batch_size_per_image: proposals sampled per image for training.
            positive_fraction: the largest share of foreground among them.
            proposal_matcher: labels proposals foreground (1) / background (0) / ignored (-1) by IoU.
            proposal_append_gt: add the gt boxes to the proposals before sampling.
        """
        super().__init__()
        self.num_classes, self.proposal_matcher = num_classes, proposal_matcher
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.proposal_append_gt = proposal_append_gt

    @classmethod
    def from_config(cls, cfg):
        heads = cfg.MODEL.ROI_HEADS
        return {
            "num_classes": heads.NUM_CLASSES,
            "batch_size_per_image": heads.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": heads.POSITIVE_FRACTION,
            "proposal_append_gt": heads.PROPOSAL_APPEND_GT,
            "proposal_matcher": Matcher(heads.IOU_THRESHOLDS, heads.IOU_LABELS, allow_low_quality_matches=False),
        }

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Class labels of one image's proposals from their matches, then a sample of them.

        Args:
            matched_idxs: (P,) the gt index matched to each proposal.
            matched_labels: (P,) the matcher's label of each proposal (1, 0 or -1).
            gt_classes: (G,) the image's gt classes.
        Returns:
            the sampled proposal indices (foreground first) and their class labels.
        """
        if gt_classes.numel() > 0:
            labels = gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            labels = torch.full_like(matched_idxs, self.num_classes)
        fg_idxs, bg_idxs = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, self.num_classes)
        sampled = torch.cat([fg_idxs, bg_idxs], dim=0)
        return sampled, labels[sampled]

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """
        Match each image's proposals (plus its gt boxes when `proposal_append_gt`) to its gt, and
        sample them for training.

        Args:
            proposals: per image, `proposal_boxes` and `objectness_logits`.
            targets: per image, the gt: `gt_boxes`, `gt_classes` and any other `gt_*` field.
        Returns:
            per image, the sampled proposals with `gt_classes` (background = `num_classes`) and, where
            the image has gt, every `gt_*` field of the matched gt instance.
        """
        if targets is None:
            raise ValueError(f"{type(self).__name__} needs the gt instances of every image in training")
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)

        sampled_proposals, fg_bg_counts = [], []
        for per_image, target in zip(proposals, targets):
            iou = pairwise_iou(target.gt_boxes, per_image.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            sampled_idxs, gt_classes = self._sample_proposals(matched_idxs, matched_labels, target.gt_classes)
            sampled = per_image[sampled_idxs]
            sampled.gt_classes = gt_classes
            # The matched gt's other fields (boxes, masks, keypoints) ride along. Without gt there is
            # nothing to fill them with; such proposals are all background, which the heads handle.
            if len(target) > 0:
                gt_of_sample = matched_idxs[sampled_idxs]
                carried = {k: v for k, v in target.get_fields().items() if k.startswith("gt_") and not sampled.has(k)}
                for name, value in carried.items():
                    sampled.set(name, value[gt_of_sample])
            sampled_proposals.append(sampled)
            background = int((gt_classes == self.num_classes).sum())
            fg_bg_counts.append((gt_classes.numel() - background, background))

        # Per-batch means of the foreground and background samples per image.
        fg_mean, bg_mean = np.mean(fg_bg_counts, axis=0) if fg_bg_counts else (np.nan, np.nan)
        storage = get_event_storage()
        storage.put_scalar("roi_head/num_fg_samples", fg_mean)
        storage.put_scalar("roi_head/num_bg_samples", bg_mean)
        return sampled_proposals

    def forward(
        self, images: ImageList, features: Dict[str, Tensor], proposals: List[Instances], targets: TargetList = None
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} must define forward")


@ROI_HEADS_REGISTRY.register()
class StandardROIHeads(ROIHeads):
    """
    The RoI heads of Faster / Mask R-CNN with FPN: a box branch (`box_pooler` -> `box_head` ->
    `box_predictor`) and an optional mask branch (`mask_pooler` -> `mask_head`), each pooling
    from its own feature maps. Every branch computes its own losses.
    """

    @configurable
    def __init__(
        self,
        *,
        box_head: nn.Module,
        box_predictor: nn.Module,
        box_in_features: List[str],
        box_pooler: ROIPooler,
        mask_in_features: Optional[List[str]] = None,
        mask_pooler: Optional[ROIPooler] = None,
        mask_head: Optional[nn.Module] = None,
        mask_train_rois_per_image: int = 0,
        train_on_pred_boxes: bool = False,
        keypoint_in_features: Optional[List[str]] = None,
        keypoint_pooler: Optional[ROIPooler] = None,
        keypoint_head: Optional[nn.Module] = None,
        **kwargs,
    ):
        """
        Args:
            box_head: transforms the pooled box features (e.g. `FastRCNNConvFCHead`).
            box_predictor: predicts scores and deltas, with `losses` and `inference`
                (e.g. `FastRCNNOutputLayers`).
            box_in_features: feature maps the box branch pools from, finest first.
            box_pooler: pools the box features of each proposal.
            mask_in_features, mask_pooler, mask_head: the mask branch; absent when masks are off.
                Without a pooler, the mask head gets the feature dict itself.
            mask_train_rois_per_image: in training, the mask head sees at most this many foreground
                proposals per image, a random subset; 0: all of them.
            train_on_pred_boxes: train the mask branch on the box branch's refined boxes instead of
                the proposals.
            keypoint_in_features, keypoint_pooler, keypoint_head: the keypoint branch, likewise.
            kwargs: the arguments of `ROIHeads`.
        """
        super().__init__(**kwargs)
        self.in_features = self.box_in_features = box_in_features
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.train_on_pred_boxes = train_on_pred_boxes

        self.mask_on = mask_in_features is not None
        if self.mask_on and mask_head is None:
            raise ValueError("StandardROIHeads: mask_in_features given without a mask_head")
        if self.mask_on:
            self.mask_in_features, self.mask_pooler, self.mask_head = mask_in_features, mask_pooler, mask_head
            self.mask_train_rois_per_image = mask_train_rois_per_image
        self.keypoint_on = keypoint_in_features is not None
        if self.keypoint_on and keypoint_head is None:
            raise ValueError("StandardROIHeads: keypoint_in_features given without a keypoint_head")
        if self.keypoint_on:
            self.keypoint_in_features, self.keypoint_pooler = keypoint_in_features, keypoint_pooler
            self.keypoint_head = keypoint_head

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = {**super().from_config(cfg), "train_on_pred_boxes": cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES}
        # A subclass may turn a branch's builder into a staticmethod to build it differently.
        for branch in (cls._init_box_head, cls._init_mask_head, cls._init_keypoint_head):
            if inspect.ismethod(branch):
                ret.update(branch(cfg, input_shape))
        return ret

    @staticmethod
    def _pooled_shape(
        input_shape: Dict[str, ShapeSpec], in_features: List[str], resolution: int, branch: str
    ) -> Tuple[Tuple[float, ...], ShapeSpec]:
        shapes = select_features(input_shape, in_features, f"MODEL.{branch}.IN_FEATURES")
        channels = {shape.channels for shape in shapes}
        if len(channels) != 1:
            raise ValueError(f"{branch}: the features {in_features} must have the same channels, got {channels}")
        scales = tuple(1.0 / shape.stride for shape in shapes)
        return scales, ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)

    @classmethod
    def _branch_input(
        cls, input_shape: Dict[str, ShapeSpec], in_features: List[str], head, branch: str
    ) -> Tuple[Optional[ROIPooler], Union[ShapeSpec, Dict[str, ShapeSpec]]]:
        """
        The pooler of a mask or keypoint branch, and what its head is built from: the pooled shape, or,
        without a POOLER_TYPE, the feature dict itself (the head then pools for itself).
        """
        scales, pooled_shape = cls._pooled_shape(input_shape, in_features, head.POOLER_RESOLUTION, branch)
        if not head.POOLER_TYPE:
            return None, {f: input_shape[f] for f in in_features}
        return ROIPooler(head.POOLER_RESOLUTION, scales, head.POOLER_SAMPLING_RATIO, head.POOLER_TYPE), pooled_shape

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        head = cfg.MODEL.ROI_BOX_HEAD
        scales, pooled_shape = cls._pooled_shape(input_shape, in_features, head.POOLER_RESOLUTION, "ROI_HEADS")
        box_head = build_box_head(cfg, pooled_shape)
        return {
            "box_in_features": in_features,
            "box_pooler": ROIPooler(head.POOLER_RESOLUTION, scales, head.POOLER_SAMPLING_RATIO, head.POOLER_TYPE),
            "box_head": box_head,
            "box_predictor": FastRCNNOutputLayers(cfg, box_head.output_shape),
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        pooler, head_input = cls._branch_input(input_shape, in_features, cfg.MODEL.ROI_MASK_HEAD, "ROI_MASK_HEAD")
        return {
            "mask_in_features": in_features,
            "mask_pooler": pooler,
            "mask_head": build_mask_head(cfg, head_input),
            "mask_train_rois_per_image": cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE,
        }

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        if not cfg.MODEL.KEYPOINT_ON:
            return {}
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        head = cfg.MODEL.ROI_KEYPOINT_HEAD
        pooler, head_input = cls._branch_input(input_shape, in_features, head, "ROI_KEYPOINT_HEAD")
        return {
            "keypoint_in_features": in_features,
            "keypoint_pooler": pooler,
            "keypoint_head": build_keypoint_head(cfg, head_input),
        }

    def forward(
        self, images: ImageList, features: Dict[str, Tensor], proposals: List[Instances], targets: TargetList = None
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """
        Args:
            images: the batch (unused by these heads; kept for heads that need the pixels).
            features: the backbone's feature maps by name.
            proposals: per image, `proposal_boxes` and `objectness_logits`.
            targets: per image, the gt instances (training only).
        Returns:
            training: the sampled proposals and the losses (`loss_cls`, `loss_box_reg`, `loss_mask`,
            `loss_keypoint`); inference: per image `Instances(pred_boxes, scores, pred_classes[,
            pred_masks][, pred_keypoints])` at the input size, and `{}`.
        """
        del images
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals, targets)
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """
        Run the non-box branches (masks, keypoints) on given detections, e.g. boxes from elsewhere.

        Args:
            instances: per image, `pred_boxes` and `pred_classes`.
        Returns:
            the same instances with the branches' outputs (`pred_masks`, `pred_keypoints`) added.
        """
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference; call eval() first")
        if not all(i.has("pred_boxes") and i.has("pred_classes") for i in instances):
            raise ValueError("forward_with_given_boxes: every Instances needs pred_boxes and pred_classes")
        return self._forward_keypoint(features, self._forward_mask(features, instances))

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances], targets: TargetList = None):
        """
        Training: the box losses. Inference: the detections.

        `targets` (training only) are not needed here, where `proposals` carry their matched gt; a
        subclass that labels boxes of its own (e.g. `CascadeROIHeads`'s later stages) matches them.
        """
        del targets
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        del box_features

        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    refined = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                    for per_image, boxes in zip(proposals, refined):
                        per_image.proposal_boxes = Boxes(boxes)
            return losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return pred_instances

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances]):
        """Training: `{"loss_mask": ...}` on the foreground proposals. Inference: `instances` with `pred_masks`."""
        if not self.mask_on:
            return {} if self.training else instances

        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            if self.mask_train_rois_per_image > 0:
                instances = [random_subset(i, self.mask_train_rois_per_image) for i in instances]
        if self.mask_pooler is not None:
            boxes = [i.proposal_boxes if self.training else i.pred_boxes for i in instances]
            mask_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        else:
            mask_features = {f: features[f] for f in self.mask_in_features}
        return self._run_mask_head(mask_features, instances)

    def _run_mask_head(self, mask_features, instances: List[Instances]):
        """
        The mask head on the RoIs' features: its losses in training, `instances` with its outputs in
        inference. The one step a RoI head that adds to the mask branch (e.g. scoring the masks) replaces.
        """
        return self.mask_head(mask_features, instances)

    def _forward_keypoint(self, features: Dict[str, Tensor], instances: List[Instances]):
        """
        Training: `{"loss_keypoint": ...}` on the foreground proposals with a labeled keypoint in
        their box. Inference: `instances` with `pred_keypoints`.
        """
        if not self.keypoint_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            instances = select_proposals_with_visible_keypoints(instances)
        if self.keypoint_pooler is None:
            return self.keypoint_head({f: features[f] for f in self.keypoint_in_features}, instances)
        boxes = [i.proposal_boxes if self.training else i.pred_boxes for i in instances]
        pooled = self.keypoint_pooler([features[f] for f in self.keypoint_in_features], boxes)
        return self.keypoint_head(pooled, instances)

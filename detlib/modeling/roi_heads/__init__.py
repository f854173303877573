"""Second-stage heads: box head and predictor, mask and keypoint heads, and the RoI heads that run them."""

from .box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead, build_box_head
from .cascade_rcnn import CascadeROIHeads
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .keypoint_head import (
    ROI_KEYPOINT_HEAD_REGISTRY,
    BaseKeypointRCNNHead,
    KRCNNConvDeconvUpsampleHead,
    build_keypoint_head,
    keypoint_rcnn_inference,
    keypoint_rcnn_loss,
    select_proposals_with_visible_keypoints,
)
from .mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    MaskRCNNConvUpsampleHead,
    build_mask_head,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from .res5_roi_heads import Res5ROIHeads
from .roi_heads import (
    ROI_HEADS_REGISTRY,
    ROIHeads,
    StandardROIHeads,
    build_roi_heads,
    random_subset,
    select_foreground_proposals,
)

__all__ = [
    "ROI_BOX_HEAD_REGISTRY",
    "FastRCNNConvFCHead",
    "build_box_head",
    "FastRCNNOutputLayers",
    "fast_rcnn_inference",
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "BaseKeypointRCNNHead",
    "KRCNNConvDeconvUpsampleHead",
    "build_keypoint_head",
    "keypoint_rcnn_inference",
    "keypoint_rcnn_loss",
    "select_proposals_with_visible_keypoints",
    "ROI_MASK_HEAD_REGISTRY",
    "BaseMaskRCNNHead",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "StandardROIHeads",
    "Res5ROIHeads",
    "CascadeROIHeads",
    "build_roi_heads",
    "random_subset",
    "select_foreground_proposals",
]

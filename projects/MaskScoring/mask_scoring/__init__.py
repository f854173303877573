"""Mask Scoring R-CNN on detlib. Importing the package registers `MaskScoringROIHeads`."""

from .maskiou_head import MaskIoUHead, mask_iou_targets
from .roi_heads import MaskScoringROIHeads

__all__ = ["MaskIoUHead", "MaskScoringROIHeads", "mask_iou_targets"]

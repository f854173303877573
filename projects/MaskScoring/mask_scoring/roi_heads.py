"""`MaskScoringROIHeads`: Mask R-CNN's RoI heads plus a MaskIoU head that rescores the masks."""
from typing import Dict, List

import torch
from torch import nn

from detlib.config import configurable
from detlib.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    BaseMaskRCNNHead,
    StandardROIHeads,
    mask_rcnn_inference,
    mask_rcnn_loss,
    select_foreground_proposals,
)
from detlib.structures import Instances

from .maskiou_head import MaskIoUHead

__all__ = ["MaskScoringROIHeads"]


@ROI_HEADS_REGISTRY.register()
class MaskScoringROIHeads(StandardROIHeads):
    """
    `StandardROIHeads` whose mask branch also runs a `MaskIoUHead` on the mask head's own output.
    Select it with `MODEL.ROI_HEADS.NAME: MaskScoringROIHeads` (and `MODEL.MASK_ON: True`).

    Losses: those of `StandardROIHeads` plus `loss_maskiou` (weighted by
    `MODEL.LOSS_WEIGHTS.loss_maskiou`). Inference: detections scored by box score x mask IoU.
    """

    @configurable
    def __init__(self, *, maskiou_head: nn.Module, **kwargs):
        """
        Args:
            maskiou_head: `(features, mask_logits, instances)` -> losses (training) or rescored
                instances (inference), e.g. `MaskIoUHead`.
            kwargs: the arguments of `StandardROIHeads`; the mask branch must be on and pool its
                features, and the mask head must be a `BaseMaskRCNNHead` (its logits are scored).
        """
        super().__init__(**kwargs)
        if not self.mask_on or self.mask_pooler is None:
            raise ValueError("MaskScoringROIHeads needs a mask branch with a pooler (MODEL.MASK_ON, POOLER_TYPE)")
        if not isinstance(self.mask_head, BaseMaskRCNNHead):
            raise TypeError(f"MaskScoringROIHeads needs a BaseMaskRCNNHead, got {type(self.mask_head).__name__}")
        self.maskiou_head = maskiou_head

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        if not cfg.MODEL.MASK_ON:
            raise ValueError("MaskScoringROIHeads scores masks: set MODEL.MASK_ON True")
        _, pooled_shape = cls._pooled_shape(
            input_shape, ret["mask_in_features"], cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, "ROI_MASK_HEAD"
        )
        ret["maskiou_head"] = MaskIoUHead(cfg, pooled_shape)
        return ret

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """
        Training: `loss_mask` and `loss_maskiou` on the foreground proposals. Inference: `instances`
        with `pred_masks`, rescored.
        """
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        boxes = [i.proposal_boxes if self.training else i.pred_boxes for i in instances]
        mask_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        # The mask head's logits are needed twice (its own loss, and as the MaskIoU head's input),
        # so its layers run here and its loss is taken the way its forward would.
        mask_logits = self.mask_head.layers(mask_features)

        if self.training:
            loss_mask = mask_rcnn_loss(mask_logits, instances, self.mask_head.vis_period) * self.mask_head.loss_weight
            return {"loss_mask": loss_mask, **self.maskiou_head(mask_features, mask_logits, instances)}
        mask_rcnn_inference(mask_logits, instances)
        return self.maskiou_head(mask_features, mask_logits, instances)

"""`MaskScoringROIHeads`: Mask R-CNN's RoI heads plus a MaskIoU head that rescores the masks."""

from typing import List

import torch
from torch import nn

from detlib.config import configurable
from detlib.modeling.roi_heads import ROI_HEADS_REGISTRY, BaseMaskRCNNHead, StandardROIHeads
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

    def _run_mask_head(self, mask_features: torch.Tensor, instances: List[Instances]):
        """
        Training: `loss_mask` and `loss_maskiou` on the foreground proposals. Inference: `instances`
        with `pred_masks`, rescored. The mask head's logits feed its own loss and the MaskIoU head.
        """
        mask_logits = self.mask_head.layers(mask_features)
        if self.training:
            return {
                **self.mask_head.loss(mask_logits, instances),
                **self.maskiou_head(mask_features, mask_logits, instances),
            }
        instances = self.mask_head.inference(mask_logits, instances)
        return self.maskiou_head(mask_features, mask_logits, instances)

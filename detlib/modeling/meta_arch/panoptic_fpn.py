"""Panoptic FPN: Mask R-CNN and a semantic segmentation head on one FPN, combined into a panoptic segmentation."""

from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from detlib.config import configurable
from detlib.modeling.panoptic import combine_semantic_and_instance_outputs
from detlib.modeling.sem_seg_heads import build_sem_seg_head
from detlib.structures import Instances

from .build import META_ARCH_REGISTRY
from .rcnn import GeneralizedRCNN

__all__ = ["PanopticFPN"]


@META_ARCH_REGISTRY.register()
class PanopticFPN(GeneralizedRCNN):
    """
    Panoptic FPN (Kirillov et al., 2019): a `GeneralizedRCNN` with masks, and a semantic segmentation head on
    the same features whose class 0 stands for all "things". Training returns the losses of all three parts
    (the RoI heads' weighted by `instance_loss_weight`); inference returns per image "instances", "sem_seg"
    (C x H x W logits) and, with `combine_enabled`, "panoptic_seg" (`combine_semantic_and_instance_outputs`),
    all at the input's "height" x "width".
    """

    OUTPUT_KEYS = ("instances", "sem_seg", "panoptic_seg")

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        combine_enabled: bool = True,
        combine_overlap_thresh: float = 0.5,
        combine_stuff_area_thresh: float = 4096,
        combine_instances_score_thresh: float = 0.5,
        instance_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head: `(features, targets) -> (N x C x H x W logits, losses)`, with `ignore_value`.
            combine_enabled: add "panoptic_seg" to the outputs (without, only "instances" and "sem_seg").
            combine_overlap_thresh, combine_stuff_area_thresh, combine_instances_score_thresh: the
                `overlap_threshold`, `stuff_area_thresh`, `instances_score_thresh` of the combine step.
            instance_loss_weight: multiplier of the RoI heads' losses.
            kwargs: those of `GeneralizedRCNN`; its RoI heads must predict masks.
        """
        super().__init__(**kwargs)
        if not getattr(self.roi_heads, "mask_on", False):
            raise ValueError("PanopticFPN needs RoI heads that predict masks (MODEL.MASK_ON: True)")
        self.sem_seg_head = sem_seg_head
        if not combine_enabled:
            self.OUTPUT_KEYS = ("instances", "sem_seg")
        self.combine_overlap_thresh = combine_overlap_thresh
        self.combine_stuff_area_thresh = combine_stuff_area_thresh
        self.combine_instances_score_thresh = combine_instances_score_thresh
        self.instance_loss_weight = instance_loss_weight

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        panoptic = cfg.MODEL.PANOPTIC_FPN
        return {
            **args,
            "sem_seg_head": build_sem_seg_head(cfg, args["backbone"].output_shape()),
            "combine_enabled": panoptic.COMBINE.ENABLED,
            "combine_overlap_thresh": panoptic.COMBINE.OVERLAP_THRESH,
            "combine_stuff_area_thresh": panoptic.COMBINE.STUFF_AREA_LIMIT,
            "combine_instances_score_thresh": panoptic.COMBINE.INSTANCES_CONFIDENCE_THRESH,
            "instance_loss_weight": panoptic.INSTANCE_LOSS_WEIGHT,
        }

    def training_losses(self, batched_inputs: List[Dict[str, Any]]) -> Dict[str, Tensor]:
        """The semantic head's, the proposal generator's and the (weighted) RoI heads' losses."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        targets = self.sem_seg_ground_truth(batched_inputs, self.sem_seg_head.ignore_value)
        _, sem_seg_losses = self.sem_seg_head(features, targets)
        gt_instances = self.ground_truth(batched_inputs, required=True)
        proposals, proposal_losses = self._proposals(images, features, batched_inputs, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        detector_losses = {name: loss * self.instance_loss_weight for name, loss in detector_losses.items()}
        return {**sem_seg_losses, **proposal_losses, **detector_losses}

    def inference(self, batched_inputs: List[Dict[str, Any]], do_postprocess: bool = True):
        """
        Returns:
            with postprocessing, per image {"instances", "sem_seg", "panoptic_seg": (H x W int32 segment ids,
            list of segment dicts)} at the requested size ("panoptic_seg" is left out while the model is
            traced for export: combine the exported outputs with `combine_semantic_and_instance_outputs`);
            without, (per-image `Instances`, N x C x H x W semantic logits of the padded batch).
        """
        if self.training:
            raise RuntimeError("PanopticFPN.inference needs eval mode")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg, _ = self.sem_seg_head(features)
        proposals, _ = self._proposals(images, features, batched_inputs, None)
        instances, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return instances, sem_seg
        outputs = [{"instances": i, "sem_seg": s} for i, s in zip(instances, sem_seg)]
        outputs = self.postprocess(outputs, batched_inputs, images.image_sizes)
        if "panoptic_seg" in self.OUTPUT_KEYS and not torch.compiler.is_compiling():
            for output in outputs:
                output["panoptic_seg"] = self.combine(output["instances"], output["sem_seg"])
        return outputs

    def combine(self, instances: Instances, sem_seg: Tensor) -> Tuple[Tensor, List[Dict[str, Any]]]:
        """The panoptic segmentation of one image's postprocessed instances and semantic logits."""
        return combine_semantic_and_instance_outputs(
            instances.pred_masks,
            instances.scores,
            instances.pred_classes,
            sem_seg.argmax(dim=0),
            self.combine_overlap_thresh,
            self.combine_stuff_area_thresh,
            self.combine_instances_score_thresh,
        )

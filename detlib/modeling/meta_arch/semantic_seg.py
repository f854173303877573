"""
Semantic segmentation: a backbone and a semantic segmentation head, per-pixel class scores out. The heads live in
`detlib/modeling/sem_seg_heads/`; their registry and `SemSegFPNHead` are importable from here too, where
Detectron2 defines them, so its Python configs (`configs/common/models/panoptic_fpn.py`) load.
"""

from typing import Any, Dict, List, Optional, Sequence

from torch import Tensor, nn

from detlib.config import configurable
from detlib.modeling.backbone import Backbone, build_backbone
from detlib.modeling.sem_seg_heads import SEM_SEG_HEADS_REGISTRY, SemSegFPNHead, build_sem_seg_head

from .base import MetaArchitecture
from .build import META_ARCH_REGISTRY

__all__ = ["SemanticSegmentor", "SEM_SEG_HEADS_REGISTRY", "SemSegFPNHead", "build_sem_seg_head"]


@META_ARCH_REGISTRY.register()
class SemanticSegmentor(MetaArchitecture):
    """
    backbone -> semantic segmentation head. Training returns the head's losses against each input's "sem_seg"
    (H x W class ids); inference returns per image {"sem_seg": C x H x W per-class logits} at the input's
    "height" x "width".
    """

    OUTPUT_KEYS = ("sem_seg",)

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Optional[str] = None,
    ):
        """
        Args:
            backbone: features from the normalized, padded image batch.
            sem_seg_head: `(features, targets) -> (N x C x H x W logits at the padded input size, losses)`,
                with an `ignore_value` attribute (the label padding gets).
            pixel_mean, pixel_std: per-channel input normalization, in the input's channel order.
            input_format: channel order of the input images ("BGR", "RGB", "L").
        """
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std, input_format=input_format)
        self.sem_seg_head = sem_seg_head

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def training_losses(self, batched_inputs: List[Dict[str, Any]]) -> Dict[str, Tensor]:
        images = self.preprocess_image(batched_inputs)
        targets = self.sem_seg_ground_truth(batched_inputs, self.sem_seg_head.ignore_value)
        _, losses = self.sem_seg_head(self.backbone(images.tensor), targets)
        return losses

    def inference(self, batched_inputs: List[Dict[str, Any]], do_postprocess: bool = True):
        """
        Returns:
            with postprocessing, `[{"sem_seg": C x height x width logits}]`; without, the N x C x H x W logits of
            the padded batch.
        """
        if self.training:
            raise RuntimeError("SemanticSegmentor.inference needs eval mode")
        images = self.preprocess_image(batched_inputs)
        logits, _ = self.sem_seg_head(self.backbone(images.tensor))
        if do_postprocess:
            return self.postprocess([{"sem_seg": x} for x in logits], batched_inputs, images.image_sizes)
        return logits

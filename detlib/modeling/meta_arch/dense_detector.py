"""One-stage detectors: a backbone and a dense head from `DENSE_HEAD_REGISTRY`, nothing in between."""

from typing import Any, Dict, List, Optional, Sequence

from torch import Tensor, nn

from detlib.config import configurable

from ..backbone import Backbone, build_backbone
from ..dense_heads import build_dense_head
from .base import MetaArchitecture
from .build import META_ARCH_REGISTRY

__all__ = ["DenseDetector"]


@META_ARCH_REGISTRY.register()
class DenseDetector(MetaArchitecture):
    """
    backbone -> dense head. The head (a `DenseHead`) computes its own losses in training and decodes its
    detections in inference; this class only normalizes, runs the backbone and rescales the detections.
    The head is `MODEL.DENSE_HEAD.NAME`, or the subclass's `default_head` when that is empty (RetinaNet:
    "RetinaNetHead", FCOS: "FCOSHead"), so a new one-stage head is a registered class and one config line.
    """

    default_head: str = ""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Optional[str] = None,
    ):
        """
        Args:
            backbone: features from the normalized, padded image batch.
            head: `(images, features, gt) -> (detections, losses)`, e.g. a `DenseHead`.
            pixel_mean, pixel_std: per-channel input normalization, in the input's channel order.
            input_format: channel order of the input images ("BGR", "RGB", "L").
        """
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std, input_format=input_format)
        self.head = head

    @classmethod
    def from_config(cls, cfg):
        if not (cfg.MODEL.DENSE_HEAD.NAME or cls.default_head):
            raise ValueError(f"{cls.__name__} needs MODEL.DENSE_HEAD.NAME: the name of a registered dense head")
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "head": build_dense_head(cfg, backbone.output_shape(), cls.default_head),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def training_losses(self, batched_inputs: List[Dict[str, Any]]) -> Dict[str, Tensor]:
        images = self.preprocess_image(batched_inputs)
        gt_instances = self.ground_truth(batched_inputs, required=True)
        _, losses = self.head(images, self.backbone(images.tensor), gt_instances)
        return losses

    def inference(self, batched_inputs: List[Dict[str, Any]], do_postprocess: bool = True):
        """Per image, `Instances(pred_boxes, scores, pred_classes)`, best first (see `MetaArchitecture`)."""
        if self.training:
            raise RuntimeError(f"{type(self).__name__}.inference needs eval mode")
        images = self.preprocess_image(batched_inputs)
        results, _ = self.head(images, self.backbone(images.tensor))
        if do_postprocess:
            return self.postprocess([{"instances": r} for r in results], batched_inputs, images.image_sizes)
        return results

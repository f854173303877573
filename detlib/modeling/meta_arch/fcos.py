"""
FCOS (Tian et al. 2019): a one-stage detector, `DenseDetector` with `FCOSHead`
(`detlib/modeling/dense_heads/fcos_head.py`: points, assignment, losses, decoding). The constructor also
takes Detectron2's FCOS keywords, so Detectron2's Python config (`configs/common/models/fcos.py`) builds it.
"""

from typing import Optional, Sequence

from torch import nn

from detlib.config import configurable

from ..backbone import Backbone
from ..box_regression import Box2BoxTransformLinear
from ..dense_heads.fcos_head import FCOSHead
from .build import META_ARCH_REGISTRY
from .dense_detector import DenseDetector

__all__ = ["FCOS", "FCOSHead"]


@META_ARCH_REGISTRY.register()
class FCOS(DenseDetector):
    """
    FCOS: backbone (ResNet + FPN, P6/P7 from P5) -> `FCOSHead` (or the head `MODEL.DENSE_HEAD.NAME` names).
    Training returns `loss_fcos_cls`, `loss_fcos_loc`, `loss_fcos_ctr`; inference
    `[{"instances": Instances(pred_boxes, scores, pred_classes)}]` at each input's "height" x "width".
    """

    default_head = "FCOSHead"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Optional[str] = None,
        head_in_features: Optional[Sequence[str]] = None,
        box2box_transform: Optional[Box2BoxTransformLinear] = None,
        num_classes: Optional[int] = None,
        center_sampling_radius: Optional[float] = None,
        focal_loss_alpha: Optional[float] = None,
        focal_loss_gamma: Optional[float] = None,
        test_score_thresh: Optional[float] = None,
        test_topk_candidates: Optional[int] = None,
        test_nms_thresh: Optional[float] = None,
        max_detections_per_image: Optional[int] = None,
    ):
        """
        Args:
            backbone ... max_detections_per_image: as in `DenseDetector`.
            center_sampling_radius: Detectron2's FCOS keyword, the head's when given; None keeps the head's.
        """
        super().__init__(
            backbone=backbone,
            head=head,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            input_format=input_format,
            head_in_features=head_in_features,
            num_classes=num_classes,
            box2box_transform=box2box_transform,
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
        )
        self.configure_head(center_sampling_radius=center_sampling_radius)

"""
FCOS (Tian et al. 2019): a one-stage detector, `DenseDetector` with `FCOSHead`
(`detlib/modeling/dense_heads/fcos_head.py`: points, assignment, losses, decoding). The constructor also
takes Detectron2's FCOS keywords, so Detectron2's Python config (`configs/common/models/fcos.py`) builds it.
"""

from typing import Any, Dict, List, Optional, Sequence

from torch import nn

from detlib.config import configurable
from detlib.layers.losses import build_classification_loss

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
        head_in_features: Optional[List[str]] = None,
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
            backbone, head, pixel_mean, pixel_std, input_format: as in `DenseDetector`.
            head_in_features ... max_detections_per_image: Detectron2's FCOS keywords, each set on the head
                (`FCOSHead.configure`) when given; None keeps the head's own. The head's levels come from
                `head_in_features` (default: the head's, else every backbone output by stride) and the
                backbone's strides.
        """
        super().__init__(
            backbone=backbone, head=head, pixel_mean=pixel_mean, pixel_std=pixel_std, input_format=input_format
        )
        if num_classes is not None and num_classes != head.num_classes:
            raise ValueError(f"FCOS: num_classes={num_classes} but the head predicts {head.num_classes} classes")
        settings = _head_settings(
            head,
            box2box_transform=box2box_transform,
            center_sampling_radius=center_sampling_radius,
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
            score_thresh=test_score_thresh,
            topk_candidates=test_topk_candidates,
            nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
        )
        if head_in_features is not None or not head.in_features:
            shapes = backbone.output_shape()
            names = head_in_features or sorted(shapes, key=lambda name: shapes[name].stride)
            settings.update(in_features=names, strides=[shapes[name].stride for name in names])
        if settings and not hasattr(head, "configure"):
            raise TypeError(
                f"FCOS: {sorted(settings)} are set through FCOSHead.configure; {type(head).__name__} has none"
            )
        if settings:
            head.configure(**settings)


def _head_settings(
    head: FCOSHead, focal_loss_alpha: Optional[float], focal_loss_gamma: Optional[float], **settings: Any
) -> Dict[str, Any]:
    """Detectron2's FCOS keywords as `FCOSHead.configure` settings: those given, the focal loss's alpha and
    gamma as its `cls_loss` (the one not given kept from the head's focal loss, else Detectron2's default)."""
    given = {name: value for name, value in settings.items() if value is not None}
    if focal_loss_alpha is not None or focal_loss_gamma is not None:
        current = head.cls_loss.params if head.cls_loss.name == "focal" else {}
        alpha = focal_loss_alpha if focal_loss_alpha is not None else current.get("alpha", 0.25)
        gamma = focal_loss_gamma if focal_loss_gamma is not None else current.get("gamma", 2.0)
        given["cls_loss"] = build_classification_loss("focal", alpha=alpha, gamma=gamma)
    return given

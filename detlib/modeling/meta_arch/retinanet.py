"""
RetinaNet (Lin et al. 2017): a one-stage detector, `DenseDetector` with `RetinaNetHead`
(`detlib/modeling/dense_heads/retinanet_head.py`: anchors, focal loss, decoding). The constructor also takes
Detectron2's RetinaNet keywords, so Detectron2's Python config (`configs/common/models/retinanet.py`) builds it.
"""

from typing import Optional, Sequence, Union

from torch import nn

from detlib.config import configurable
from detlib.layers.losses import BoxLoss

from ..backbone import Backbone
from ..box_regression import Box2BoxTransform
from ..dense_heads.retinanet_head import RetinaNetHead
from ..loss_config import resolve_box_reg_loss
from ..matcher import Matcher
from .build import META_ARCH_REGISTRY
from .dense_detector import DenseDetector

__all__ = ["RetinaNet", "RetinaNetHead"]


@META_ARCH_REGISTRY.register()
class RetinaNet(DenseDetector):
    """
    RetinaNet: backbone (ResNet + FPN with p6/p7) -> `RetinaNetHead` (or the head `MODEL.DENSE_HEAD.NAME`
    names). Training returns the head's loss dict (`loss_cls`, `loss_box_reg`); inference
    `[{"instances": Instances(pred_boxes, scores, pred_classes)}]` at each input's "height" x "width".
    """

    default_head = "RetinaNetHead"

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
        anchor_generator: Optional[nn.Module] = None,
        box2box_transform: Optional[Box2BoxTransform] = None,
        anchor_matcher: Optional[Matcher] = None,
        num_classes: Optional[int] = None,
        focal_loss_alpha: Optional[float] = None,
        focal_loss_gamma: Optional[float] = None,
        smooth_l1_beta: Optional[float] = None,
        box_reg_loss_type: Optional[Union[str, BoxLoss]] = None,
        test_score_thresh: Optional[float] = None,
        test_topk_candidates: Optional[int] = None,
        test_nms_thresh: Optional[float] = None,
        max_detections_per_image: Optional[int] = None,
        vis_period: int = 0,
    ):
        """
        Args:
            backbone ... max_detections_per_image: as in `DenseDetector`.
            anchor_generator, anchor_matcher: Detectron2's RetinaNet keywords, the head's when given.
            box_reg_loss_type, smooth_l1_beta: the head's `box_loss` becomes the named loss (with
                `beta=smooth_l1_beta` when it takes one) when either is given: the type not given is the head's
                loss's, the beta not given the head's loss's when the type is kept, else 0.
            vis_period: Detectron2's training visualization, not implemented for dense detectors: must be 0.
        """
        if vis_period:
            raise ValueError(f"RetinaNet: vis_period={vis_period}, but dense detectors draw no training images yet")
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
        self.configure_head(
            anchor_generator=anchor_generator,
            anchor_matcher=anchor_matcher,
            box_loss=_box_loss(head, box_reg_loss_type, smooth_l1_beta),
        )


def _box_loss(
    head: nn.Module, box_reg_loss_type: Optional[Union[str, BoxLoss]], smooth_l1_beta: Optional[float]
) -> Optional[BoxLoss]:
    """The box loss of Detectron2's `box_reg_loss_type` / `smooth_l1_beta`, the one not given kept from the
    head's loss (its beta only with its type), else Detectron2's default (smooth-L1, beta 0); None when neither
    is given."""
    if box_reg_loss_type is None and smooth_l1_beta is None:
        return None
    current = getattr(head, "box_loss", None) or resolve_box_reg_loss("smooth_l1")
    if box_reg_loss_type is None:
        box_reg_loss_type = current.name
    if smooth_l1_beta is None:
        smooth_l1_beta = current.params.get("beta", 0.0) if box_reg_loss_type == current.name else 0.0
    return resolve_box_reg_loss(box_reg_loss_type, smooth_l1_beta)

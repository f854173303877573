"""
RetinaNet (Lin et al. 2017): a one-stage detector, `DenseDetector` with `RetinaNetHead`
(`detlib/modeling/dense_heads/retinanet_head.py`: anchors, focal loss, decoding).
"""

from ..dense_heads.retinanet_head import RetinaNetHead
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

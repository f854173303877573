"""One-stage detectors: a backbone and a dense head from `DENSE_HEAD_REGISTRY`, nothing in between."""

from typing import Any, Dict, List, Optional, Sequence

from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers.losses import ClassificationLoss, build_classification_loss

from ..backbone import Backbone, build_backbone
from ..dense_heads import DenseHead, build_dense_head
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

    The constructor also takes the keywords that Detectron2's dense detectors share (`head_in_features`,
    `num_classes`, `box2box_transform`, the focal loss's, the test-time ones), so that its Python configs
    build the model: each one given is set on the head (`DenseHead.configure`); None keeps the head's own.
    Subclasses add their detector's keywords the same way (`configure_head`).
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
        head_in_features: Optional[Sequence[str]] = None,
        num_classes: Optional[int] = None,
        box2box_transform: Optional[Any] = None,
        focal_loss_alpha: Optional[float] = None,
        focal_loss_gamma: Optional[float] = None,
        test_score_thresh: Optional[float] = None,
        test_topk_candidates: Optional[int] = None,
        test_nms_thresh: Optional[float] = None,
        max_detections_per_image: Optional[int] = None,
    ):
        """
        Args:
            backbone: features from the normalized, padded image batch.
            head: `(images, features, gt) -> (detections, losses)`, e.g. a `DenseHead`.
            pixel_mean, pixel_std: per-channel input normalization, in the input's channel order.
            input_format: channel order of the input images ("BGR", "RGB", "L").
            head_in_features: the backbone outputs the head runs on (default: the head's own, or, for a
                `DenseHead` built without levels, every backbone output by increasing stride); set on the
                head with their strides.
            num_classes: checked against the head's.
            box2box_transform, test_score_thresh, test_topk_candidates, test_nms_thresh,
                max_detections_per_image: the head's `box2box_transform`, `score_thresh`, `topk_candidates`,
                `nms_thresh`, `max_detections_per_image`.
            focal_loss_alpha, focal_loss_gamma: the head's `cls_loss` becomes the focal loss with these (the one
                not given kept from the head's focal loss, else Detectron2's default: 0.25, 2).
        """
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std, input_format=input_format)
        self.head = head
        if num_classes is not None and num_classes != getattr(head, "num_classes", num_classes):
            raise ValueError(
                f"{type(self).__name__}: num_classes={num_classes} but the head predicts {head.num_classes} classes"
            )
        levels: Dict[str, Any] = {}
        if head_in_features is not None or (isinstance(head, DenseHead) and not head.in_features):
            shapes = backbone.output_shape()
            names = list(head_in_features or sorted(shapes, key=lambda name: shapes[name].stride))
            levels = {"in_features": names, "strides": [shapes[name].stride for name in names]}
        self.configure_head(
            **levels,
            box2box_transform=box2box_transform,
            cls_loss=_focal_loss(head, focal_loss_alpha, focal_loss_gamma),
            score_thresh=test_score_thresh,
            topk_candidates=test_topk_candidates,
            nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
        )

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

    def configure_head(self, **settings: Any) -> None:
        """Set on the head (`DenseHead.configure`) each of `settings` that is not None."""
        given = {name: value for name, value in settings.items() if value is not None}
        if not given:
            return
        if not hasattr(self.head, "configure"):
            raise TypeError(
                f"{type(self).__name__}: {sorted(given)} are set through DenseHead.configure; "
                f"{type(self.head).__name__} has none"
            )
        self.head.configure(**given)

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


def _focal_loss(head: nn.Module, alpha: Optional[float], gamma: Optional[float]) -> Optional[ClassificationLoss]:
    """The focal loss of Detectron2's `focal_loss_alpha` / `focal_loss_gamma`, the one not given kept from the
    head's focal loss, else Detectron2's default; None when neither is given."""
    if alpha is None and gamma is None:
        return None
    current = getattr(head, "cls_loss", None)
    params = current.params if current is not None and current.name == "focal" else {}
    alpha = alpha if alpha is not None else params.get("alpha", 0.25)
    gamma = gamma if gamma is not None else params.get("gamma", 2.0)
    return build_classification_loss("focal", alpha=alpha, gamma=gamma)

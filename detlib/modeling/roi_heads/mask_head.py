"""
Mask heads: per-RoI mask logits, their loss against the gt masks cropped to the RoI, and the
predicted class's mask probabilities at inference.

Shapes: R RoIs, C mask classes (1 when class-agnostic), M x M mask resolution (28 by default).
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detlib.config import configurable
from detlib.layers import Conv2d, ShapeSpec, get_norm
from detlib.layers.losses import check_loss_weights
from detlib.layers.weight_init import c2_msra_fill
from detlib.structures import Instances
from detlib.utils.events import get_event_storage
from detlib.utils.registry import Registry

__all__ = [
    "ROI_MASK_HEAD_REGISTRY",
    "BaseMaskRCNNHead",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
]

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """
Mask heads, built from `(cfg, input_shape: ShapeSpec)`. Called as `head(features, instances)`: in
training they return `{"loss_mask": ...}`, in inference they set `pred_masks` on the instances.
"""


def mask_rcnn_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0) -> torch.Tensor:
    """
    Mean per-pixel binary cross-entropy between the mask logits of each RoI's gt class and its gt
    mask cropped to the RoI box and resampled to M x M.

    Args:
        pred_mask_logits: R x C x M x M, R the foreground RoIs of all images in order.
        instances: per image, the foreground RoIs with `proposal_boxes`, `gt_classes` and
            `gt_masks` (`PolygonMasks` or `BitMasks`, anything with `crop_and_resize`).
        vis_period: every this many iterations put predicted / gt mask pairs in the event storage.
    """
    num_masks, mask_side = pred_mask_logits.size(0), pred_mask_logits.size(2)
    if pred_mask_logits.size(2) != pred_mask_logits.size(3):
        raise ValueError(f"mask_rcnn_loss: mask logits must be square, got {tuple(pred_mask_logits.shape)}")
    class_agnostic = pred_mask_logits.size(1) == 1

    gt_classes, gt_masks = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        gt_classes.append(per_image.gt_classes.to(torch.int64))
        crops = per_image.gt_masks.crop_and_resize(per_image.proposal_boxes.tensor, mask_side)
        gt_masks.append(crops.to(device=pred_mask_logits.device))
    if len(gt_masks) == 0:
        return pred_mask_logits.sum() * 0

    gt_masks = torch.cat(gt_masks, dim=0)
    if class_agnostic:
        pred_mask_logits = pred_mask_logits[:, 0]
    else:
        rows = torch.arange(num_masks, device=pred_mask_logits.device)
        pred_mask_logits = pred_mask_logits[rows, torch.cat(gt_classes, dim=0)]
    gt_masks_bool = gt_masks if gt_masks.dtype == torch.bool else gt_masks > 0.5
    gt_masks = gt_masks.to(torch.float32)

    _log_mask_stats(pred_mask_logits, gt_masks_bool)
    if vis_period > 0:
        storage = get_event_storage()
        if storage.iter % vis_period == 0:
            # Prediction left, target right, one image per mask pair.
            pairs = torch.cat([pred_mask_logits.sigmoid(), gt_masks], dim=2)
            for i, pair in enumerate(pairs.detach()):
                storage.put_image(f"Left: mask prediction;   Right: mask GT ({i})", pair[None].expand(3, -1, -1))
    return F.binary_cross_entropy_with_logits(pred_mask_logits, gt_masks, reduction="mean")


def _log_mask_stats(pred_mask_logits: torch.Tensor, gt_masks: torch.Tensor) -> None:
    """Pixel accuracy and false positive / negative rates of the thresholded masks."""
    wrong = (pred_mask_logits > 0.0) != gt_masks
    num_pixels = max(wrong.numel(), 1)
    num_positive = gt_masks.sum().item()
    storage = get_event_storage()
    storage.put_scalar("mask_rcnn/accuracy", 1 - wrong.sum().item() / num_pixels)
    storage.put_scalar(
        "mask_rcnn/false_positive", (wrong & ~gt_masks).sum().item() / max(gt_masks.numel() - num_positive, 1.0)
    )
    storage.put_scalar("mask_rcnn/false_negative", (wrong & gt_masks).sum().item() / max(num_positive, 1.0))


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: List[Instances]) -> None:
    """
    Set `pred_masks` (R_i x 1 x M x M probabilities of each detection's predicted class) on each
    image's `pred_instances`, which must have `pred_classes` unless the masks are class-agnostic.
    """
    if pred_mask_logits.size(1) == 1:
        mask_probs = pred_mask_logits.sigmoid()
    else:
        classes = torch.cat([i.pred_classes for i in pred_instances])
        rows = torch.arange(classes.shape[0], device=classes.device)
        mask_probs = pred_mask_logits[rows, classes][:, None].sigmoid()
    for probs, instances in zip(mask_probs.split([i.num_instances() for i in pred_instances]), pred_instances):
        instances.pred_masks = probs


class BaseMaskRCNNHead(nn.Module):
    """
    A mask head whose subclasses define `layers(x) -> R x C x M x M logits`. This class turns the
    logits into the loss (`loss`) in training and into mask probabilities (`inference`) otherwise;
    a RoI head that needs the logits themselves calls the three steps on its own.
    """

    @configurable
    def __init__(self, *, loss_weight: float = 1.0, vis_period: int = 0):
        """
        Args:
            loss_weight: multiplier of `loss_mask`.
            vis_period: see `mask_rcnn_loss` (0: never).
        """
        super().__init__()
        self.loss_weight = check_loss_weights("Mask head", loss_weight, ["loss_mask"])["loss_mask"]
        self.vis_period = vis_period

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {"loss_weight": cfg.MODEL.LOSS_WEIGHTS.get("loss_mask", 1.0), "vis_period": cfg.VIS_PERIOD}

    def forward(self, x: torch.Tensor, instances: List[Instances]):
        """
        Args:
            x: R x C x H x W pooled features of the RoIs of all images.
            instances: per image, the RoIs (training: foreground proposals with gt; inference:
                detections with `pred_classes`).
        Returns:
            training: `{"loss_mask": ...}`; inference: `instances` with `pred_masks` set.
        """
        mask_logits = self.layers(x)
        return self.loss(mask_logits, instances) if self.training else self.inference(mask_logits, instances)

    def loss(self, mask_logits: torch.Tensor, instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """`{"loss_mask": ...}`, weighted, of the logits of the foreground RoIs `instances` (with gt)."""
        return {"loss_mask": mask_rcnn_loss(mask_logits, instances, self.vis_period) * self.loss_weight}

    def inference(self, mask_logits: torch.Tensor, instances: List[Instances]) -> List[Instances]:
        """`instances` (detections with `pred_classes`) with `pred_masks` set from the logits."""
        mask_rcnn_inference(mask_logits, instances)
        return instances

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """R x C x M x M mask logits of the pooled features."""
        raise NotImplementedError(f"{type(self).__name__} must define layers(x)")


# RoIs per chunk of the mask head's upsampling at inference (see MaskRCNNConvUpsampleHead.layers).
_INFERENCE_CHUNK = 16


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(BaseMaskRCNNHead, nn.Sequential):
    """
    The Mask R-CNN FPN mask head: 3x3 convs `mask_fcn1..n` (ReLU, optional norm), a 2x upsampling
    transposed conv `deconv` (ReLU), and a 1x1 conv `predictor` to one logit map per class.
    """

    @configurable
    def __init__(
        self, input_shape: ShapeSpec, *, num_classes: int, conv_dims: List[int], conv_norm: str = "", **kwargs
    ):
        """
        Args:
            input_shape: the pooled features' shape (channels used).
            num_classes: mask classes (1 for class-agnostic masks).
            conv_dims: channels of the convs, the last entry being the deconv's.
            conv_norm: norm after each conv ("" for none).
            kwargs: `loss_weight`, `vis_period` of `BaseMaskRCNNHead`.
        """
        super().__init__(**kwargs)
        if len(conv_dims) < 1:
            raise ValueError("MaskRCNNConvUpsampleHead: conv_dims needs at least the deconv's channels")

        self.conv_norm_relus = []
        channels = input_shape.channels
        for index, width in enumerate(conv_dims[:-1], start=1):
            # Same-size 3x3 conv, ReLU, and the norm if any (then without a bias).
            norm = get_norm(conv_norm, width)
            conv = Conv2d(channels, width, 3, 1, 1, bias=not conv_norm, norm=norm, activation=nn.ReLU(inplace=True))
            self.add_module(f"mask_fcn{index}", conv)
            self.conv_norm_relus.append(conv)
            channels = width

        self.deconv = nn.ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2, padding=0)
        self.add_module("deconv_relu", nn.ReLU(inplace=True))
        self.predictor = Conv2d(conv_dims[-1], num_classes, kernel_size=1, stride=1, padding=0)

        for layer in self.conv_norm_relus + [self.deconv]:
            c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_MASK_HEAD
        ret.update(
            input_shape=input_shape,
            conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
            conv_norm=head.NORM,
            num_classes=1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            for layer in self:
                x = layer(x)
            return x
        for layer in self.conv_norm_relus:
            x = layer(x)
        # Inference: the deconv's output, 4x the pooled maps (80 MB for 100 RoIs), is the head's largest tensor and
        # sits at the model's peak memory. It goes through the deconv and the predictor a chunk of RoIs at a time,
        # so one chunk's is alive at once; each RoI's logits are computed as in one batch.
        logits = None
        for start in range(0, x.shape[0], _INFERENCE_CHUNK):
            chunk = self.predictor(self.deconv_relu(self.deconv(x[start : start + _INFERENCE_CHUNK])))
            if logits is None:
                logits = chunk.new_empty((x.shape[0],) + chunk.shape[1:])
            logits[start : start + _INFERENCE_CHUNK] = chunk
        return logits if logits is not None else self.predictor(self.deconv_relu(self.deconv(x)))


def build_mask_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The mask head named by `cfg.MODEL.ROI_MASK_HEAD.NAME`."""
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(cfg, input_shape)

"""
The MaskIoU head of Mask Scoring R-CNN (Huang et al., "Mask Scoring R-CNN", CVPR 2019).

Mask R-CNN ranks its masks by the box classifier's score, which says nothing about how good the
mask is. The MaskIoU head looks at a RoI's features together with its predicted mask and regresses
the IoU of that mask with the ground truth; at inference a detection's score becomes
`box score * predicted mask IoU`, so that well-segmented detections rank first.

Shapes: R RoIs, C x S x S pooled RoI features, K classes, M x M mask logits (M = 2S in Mask R-CNN).
Boxes are XYXY in input-image pixels.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlib.config import configurable
from detlib.layers import Conv2d, ShapeSpec, cat, get_norm
from detlib.layers.losses import check_loss_weights
from detlib.layers.weight_init import c2_msra_fill, c2_xavier_fill
from detlib.structures import Instances
from detlib.utils.events import get_event_storage

__all__ = ["MaskIoUHead", "mask_iou_targets"]


@torch.no_grad()
def mask_iou_targets(mask_probs: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
    """
    The IoU of each RoI's binarized predicted mask with its ground-truth mask.

    The prediction only covers the RoI box, so the intersection and the predicted area are counted
    on the M x M grid. The gt mask may reach outside the box: its area is the whole mask's area,
    brought to grid units with the fraction of it that falls inside the box (as in the paper).

    Args:
        mask_probs: R x M x M probabilities of each RoI's gt class.
        instances: per image, the foreground RoIs with `proposal_boxes` and `gt_masks` (R in all).
    Returns:
        (R,) IoUs in [0, 1].
    """
    mask_side = mask_probs.shape[-1]
    boxes = cat([i.proposal_boxes.tensor for i in instances], dim=0)
    gt_crops = cat([i.gt_masks.crop_and_resize(i.proposal_boxes.tensor, mask_side) for i in instances], dim=0)
    gt_crops = gt_crops.to(device=mask_probs.device, dtype=torch.float32)
    gt_areas = cat([i.gt_masks.area().to(device=mask_probs.device, dtype=torch.float32) for i in instances], dim=0)

    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside_grid = gt_crops.sum(dim=(1, 2))
    # Pixels of the gt mask inside the box over all its pixels; a mask wholly inside gives 1.
    inside_fraction = (inside_grid / mask_side**2 * box_areas / gt_areas.clamp(min=1.0)).clamp(min=1e-6, max=1.0)
    gt_area_grid = inside_grid / inside_fraction

    pred = (mask_probs > 0.5).to(torch.float32)
    intersection = (pred * gt_crops).sum(dim=(1, 2))
    union = pred.sum(dim=(1, 2)) + gt_area_grid - intersection
    return intersection / union.clamp(min=1.0)


class MaskIoUHead(nn.Module):
    """
    3x3 convs over the RoI features concatenated with the max-pooled predicted mask (the last conv
    with stride 2), then fully connected layers, then one IoU per class.

    Training: the squared error of the gt class's prediction against `mask_iou_targets`, as
    `{"loss_maskiou": ...}`, and two diagnostics in the event storage. Inference: multiplies each
    detection's `scores` by its predicted mask IoU and stores the IoU as `pred_mask_ious`.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: Sequence[int] = (256, 256, 256, 256),
        fc_dims: Sequence[int] = (1024, 1024),
        conv_norm: str = "",
        loss_weight: float = 1.0,
    ):
        """
        Args:
            input_shape: the pooled RoI features (channels, height, width).
            num_classes: K; one IoU is predicted per class.
            conv_dims: channels of the 3x3 convs; the last one halves the resolution.
            fc_dims: widths of the fully connected layers.
            conv_norm: norm after each conv ("" for none, "BN", "GN", ...).
            loss_weight: multiplier of `loss_maskiou`.
        """
        super().__init__()
        if len(conv_dims) < 1:
            raise ValueError("MaskIoUHead needs at least one conv")
        self.loss_weight = check_loss_weights("MaskIoUHead", loss_weight, ["loss_maskiou"])["loss_maskiou"]

        channels = input_shape.channels + 1  # the features and the mask
        self.convs = nn.Sequential()
        for k, dim in enumerate(conv_dims):
            stride = 2 if k == len(conv_dims) - 1 else 1
            conv = Conv2d(
                channels,
                dim,
                kernel_size=3,
                stride=stride,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, dim),
                activation=nn.ReLU(),
            )
            c2_msra_fill(conv)
            self.convs.add_module(f"conv{k + 1}", conv)
            channels = dim

        side = (input_shape.height + 1) // 2
        width = channels * side * side
        self.fcs = nn.Sequential()
        for k, dim in enumerate(fc_dims):
            fc = nn.Linear(width, dim)
            c2_xavier_fill(fc)
            self.fcs.add_module(f"fc{k + 1}", nn.Sequential(fc, nn.ReLU()))
            width = dim
        self.predictor = nn.Linear(width, num_classes)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        # Sized and normalized like the mask and box heads next to it, so the project needs no new config keys.
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dims": [cfg.MODEL.ROI_MASK_HEAD.CONV_DIM] * 4,
            "fc_dims": [cfg.MODEL.ROI_BOX_HEAD.FC_DIM] * 2,
            "conv_norm": cfg.MODEL.ROI_MASK_HEAD.NORM,
            "loss_weight": cfg.MODEL.LOSS_WEIGHTS.get("loss_maskiou", 1.0),
        }

    def predict(self, features: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: R x C x S x S pooled RoI features.
            mask_probs: R x M x M probabilities of the mask being scored, M a multiple of S.
        Returns:
            R x K predicted IoUs, one per class.
        """
        mask = F.max_pool2d(mask_probs[:, None], kernel_size=mask_probs.shape[-1] // features.shape[-1])
        x = self.convs(torch.cat([features, mask], dim=1))
        return self.predictor(self.fcs(x.flatten(start_dim=1)))

    def forward(self, features: torch.Tensor, mask_logits: torch.Tensor, instances: List[Instances]):
        """
        Args:
            features: R x C x S x S pooled features of the RoIs of all images.
            mask_logits: R x K x M x M (or R x 1 x M x M class-agnostic) logits of the mask head.
            instances: per image, the RoIs: in training the foreground proposals with `gt_classes`
                and `gt_masks`; in inference the detections with `pred_classes` and `scores`.
        Returns:
            training: `{"loss_maskiou": ...}`; inference: `instances` rescored.
        """
        classes = cat([i.gt_classes if self.training else i.pred_classes for i in instances], dim=0)
        rows = torch.arange(len(classes), device=mask_logits.device)
        # The scored mask is an input, not something this head may change: no gradient into the mask head.
        mask_probs = mask_logits[rows, 0 if mask_logits.shape[1] == 1 else classes].sigmoid().detach()
        pred_ious = self.predict(features, mask_probs)[rows, classes]

        if self.training:
            return {"loss_maskiou": self.loss(pred_ious, mask_probs, instances) * self.loss_weight}
        for per_image, ious in zip(instances, pred_ious.clamp(0, 1).split([len(i) for i in instances])):
            per_image.pred_mask_ious = ious
            per_image.scores = per_image.scores * ious
        return instances

    def loss(self, pred_ious: torch.Tensor, mask_probs: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
        """Mean squared error of the predicted IoUs (R,) against the true ones; 0 without RoIs."""
        if pred_ious.numel() == 0:
            return pred_ious.sum() * 0
        targets = mask_iou_targets(mask_probs, instances)
        storage = get_event_storage()
        # How good the masks are on the training RoIs, and how well this head knows it.
        storage.put_scalar("mask_scoring/mask_iou", targets.mean().item())
        storage.put_scalar("mask_scoring/iou_abs_error", (pred_ious.detach() - targets).abs().mean().item())
        return F.mse_loss(pred_ious, targets)

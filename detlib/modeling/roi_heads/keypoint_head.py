"""
Keypoint heads (Mask R-CNN, Sec. 5): per-RoI heatmap logits of K keypoints, their loss (a softmax
over each keypoint's heatmap cells) and, at inference, keypoints in image coordinates.

Shapes: R RoIs, K keypoints, S x S heatmap (56 x 56 for the default 14 x 14 pooled features).
"""

from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detlib.config import configurable
from detlib.layers import Conv2d, ShapeSpec
from detlib.layers.losses import check_loss_weights
from detlib.structures import Instances, heatmaps_to_keypoints
from detlib.utils.events import get_event_storage
from detlib.utils.registry import Registry

__all__ = [
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "BaseKeypointRCNNHead",
    "KRCNNConvDeconvUpsampleHead",
    "build_keypoint_head",
    "keypoint_rcnn_inference",
    "keypoint_rcnn_loss",
    "select_proposals_with_visible_keypoints",
]

ROI_KEYPOINT_HEAD_REGISTRY = Registry("ROI_KEYPOINT_HEAD")
ROI_KEYPOINT_HEAD_REGISTRY.__doc__ = """
Keypoint heads, built from `(cfg, input_shape: ShapeSpec)`. Called as `head(features, instances)`:
in training they return `{"loss_keypoint": ...}`, in inference they set `pred_keypoints` (R_i x K x 3:
x, y, score) and `pred_keypoint_heatmaps` on the instances.
"""


def select_proposals_with_visible_keypoints(proposals: List[Instances]) -> List[Instances]:
    """
    Per image, the (foreground) proposals whose box holds at least one labeled keypoint of their
    matched gt (edges included): the others would give the keypoint loss nothing to learn from.
    Images without proposals are kept as they are.
    """
    kept, counts = [], []
    for per_image in proposals:
        if len(per_image) == 0:
            kept.append(per_image)
            continue
        keypoints = per_image.gt_keypoints.tensor
        boxes = per_image.proposal_boxes.tensor[:, None, :]
        x, y = keypoints[..., 0], keypoints[..., 1]
        in_box = (x >= boxes[..., 0]) & (x <= boxes[..., 2]) & (y >= boxes[..., 1]) & (y <= boxes[..., 3])
        has_visible = (in_box & (keypoints[..., 2] >= 1)).any(dim=1)
        selected = per_image[torch.nonzero(has_visible, as_tuple=True)[0]]
        counts.append(len(selected))
        kept.append(selected)
    get_event_storage().put_scalar("keypoint_head/num_fg_samples", float(np.mean(counts)) if counts else 0.0)
    return kept


def keypoint_rcnn_loss(
    pred_keypoint_logits: torch.Tensor, instances: List[Instances], normalizer: Optional[float]
) -> Optional[torch.Tensor]:
    """
    Summed cross-entropy of each valid keypoint's S x S heatmap logits against the cell that holds
    its gt keypoint, divided by `normalizer` (None: by the number of valid keypoints). A keypoint
    is valid when labeled and inside its RoI (see `Keypoints.to_heatmap`).

    Args:
        pred_keypoint_logits: R x K x S x S, R the RoIs of all images in order.
        instances: per image, the RoIs with `proposal_boxes` and `gt_keypoints`.
    Returns:
        the loss, or None when the batch has no valid keypoint.
    """
    side = pred_keypoint_logits.shape[2]
    targets, valid = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        t, v = per_image.gt_keypoints.to_heatmap(per_image.proposal_boxes.tensor, side)
        targets.append(t.flatten())
        valid.append(v.flatten())
    if not targets:
        return None
    valid_idx = torch.nonzero(torch.cat(valid), as_tuple=True)[0]
    if valid_idx.numel() == 0:
        return None
    logits = pred_keypoint_logits.flatten(2).flatten(0, 1)  # one row of S * S cells per keypoint
    loss = F.cross_entropy(logits[valid_idx], torch.cat(targets)[valid_idx], reduction="sum")
    return loss / (valid_idx.numel() if normalizer is None else normalizer)


def keypoint_rcnn_inference(pred_keypoint_logits: torch.Tensor, pred_instances: List[Instances]) -> None:
    """
    Set `pred_keypoints` (R_i x K x 3: x, y in image pixels and the keypoint's score) and
    `pred_keypoint_heatmaps` (R_i x K x S x S logits) on each image's detections (`pred_boxes`).
    """
    logits = pred_keypoint_logits.detach()
    boxes = torch.cat([i.pred_boxes.tensor for i in pred_instances], dim=0).detach()
    keypoints = heatmaps_to_keypoints(logits, boxes)[..., [0, 1, 3]]
    counts = [i.num_instances() for i in pred_instances]
    for per_image, kpts, maps in zip(pred_instances, keypoints.split(counts), logits.split(counts)):
        per_image.pred_keypoints = kpts
        per_image.pred_keypoint_heatmaps = maps


class BaseKeypointRCNNHead(nn.Module):
    """
    A keypoint head whose subclasses define `layers(x) -> R x K x S x S logits`; this class turns the
    logits into the loss in training and into keypoints at inference.
    """

    @configurable
    def __init__(self, *, num_keypoints: int, loss_weight: float = 1.0, loss_normalizer: Union[float, str] = 1.0):
        """
        Args:
            num_keypoints: K.
            loss_weight: multiplier of `loss_keypoint`.
            loss_normalizer: "visible" to divide the summed loss by the batch's valid keypoints, or a
                number n to divide it by n * the number of images (a fixed normalizer).
        """
        super().__init__()
        if loss_normalizer != "visible" and not (isinstance(loss_normalizer, (int, float)) and loss_normalizer > 0):
            raise ValueError(
                f"Keypoint head: loss_normalizer must be 'visible' or a number > 0, got {loss_normalizer!r}"
            )
        self.num_keypoints = num_keypoints
        self.loss_weight = check_loss_weights("Keypoint head", loss_weight, ["loss_keypoint"])["loss_keypoint"]
        self.loss_normalizer = loss_normalizer
        self._skipped_batches = 0

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_KEYPOINT_HEAD
        if head.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS:
            normalizer = "visible"
        else:
            # The expected number of keypoints per image when every sampled foreground RoI has all K.
            heads = cfg.MODEL.ROI_HEADS
            normalizer = head.NUM_KEYPOINTS * heads.BATCH_SIZE_PER_IMAGE * heads.POSITIVE_FRACTION
        # Detectron2's per-head weight multiplies with detlib's per-term MODEL.LOSS_WEIGHTS.
        weight = cfg.MODEL.LOSS_WEIGHTS.get("loss_keypoint", 1.0) * head.LOSS_WEIGHT
        return {"num_keypoints": head.NUM_KEYPOINTS, "loss_weight": weight, "loss_normalizer": normalizer}

    def forward(self, x: torch.Tensor, instances: List[Instances]):
        """
        Args:
            x: R x C x H x W pooled features of the RoIs of all images.
            instances: per image, the RoIs (training: foreground proposals with `gt_keypoints`;
                inference: detections with `pred_boxes`).
        Returns:
            training: `{"loss_keypoint": ...}`; inference: `instances` with `pred_keypoints` set.
        """
        logits = self.layers(x)
        if not self.training:
            keypoint_rcnn_inference(logits, instances)
            return instances
        normalizer = None if self.loss_normalizer == "visible" else len(instances) * self.loss_normalizer
        loss = keypoint_rcnn_loss(logits, instances, normalizer)
        if loss is None:
            # A batch whose RoIs hold no labeled keypoint: a zero loss that keeps the graph connected.
            self._skipped_batches += 1
            get_event_storage().put_scalar("kpts_num_skipped_batches", self._skipped_batches, smoothing_hint=False)
            loss = logits.sum() * 0
        return {"loss_keypoint": loss * self.loss_weight}

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """R x K x S x S heatmap logits of the pooled features."""
        raise NotImplementedError(f"{type(self).__name__} must define layers(x)")


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleHead(BaseKeypointRCNNHead, nn.Sequential):
    """
    The Keypoint R-CNN head: 3x3 convs `conv_fcn1..n` each with a ReLU, a stride-2 transposed conv
    `score_lowres` to K maps (2x), then 2x bilinear upsampling: S = 4 x the pooled resolution.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_keypoints: int, conv_dims: Sequence[int], **kwargs):
        """
        Args:
            input_shape: the pooled features' shape (channels used).
            num_keypoints: K.
            conv_dims: output channels of each 3x3 conv.
            kwargs: `loss_weight`, `loss_normalizer` of `BaseKeypointRCNNHead`.
        """
        super().__init__(num_keypoints=num_keypoints, **kwargs)
        channels = input_shape.channels
        for index, width in enumerate(conv_dims, start=1):
            self.add_module(f"conv_fcn{index}", Conv2d(channels, width, 3, stride=1, padding=1))
            self.add_module(f"conv_fcn_relu{index}", nn.ReLU(inplace=True))
            channels = width
        # Kernel 4, stride 2, padding 1: exactly twice the input size.
        self.score_lowres = nn.ConvTranspose2d(channels, num_keypoints, kernel_size=4, stride=2, padding=1)

        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            else:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(input_shape=input_shape, conv_dims=list(cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS))
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def build_keypoint_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The keypoint head named by `cfg.MODEL.ROI_KEYPOINT_HEAD.NAME`."""
    return ROI_KEYPOINT_HEAD_REGISTRY.get(cfg.MODEL.ROI_KEYPOINT_HEAD.NAME)(cfg, input_shape)

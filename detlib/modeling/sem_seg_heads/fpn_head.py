"""Panoptic FPN's semantic segmentation head: every FPN level brought to one stride, summed, classified per pixel."""

import math
from typing import Callable, Dict, Optional, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from detlib.config import configurable
from detlib.layers import Conv2d, ShapeSpec, get_norm, select_features
from detlib.layers.losses import check_loss_weights
from detlib.layers.weight_init import c2_msra_fill

from .build import SEM_SEG_HEADS_REGISTRY

__all__ = ["SemSegFPNHead", "sem_seg_loss"]


def sem_seg_loss(logits: Tensor, targets: Tensor, ignore_value: int) -> Tensor:
    """
    Per-pixel cross-entropy of N x C x H x W `logits` against N x H x W class ids, averaged over the pixels
    whose id is not `ignore_value` (0, not NaN, when every pixel is ignored).
    """
    total = F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=ignore_value)
    return total / (targets != ignore_value).sum().clamp(min=1)


@SEM_SEG_HEADS_REGISTRY.register()
class SemSegFPNHead(nn.Module):
    """
    The semantic head of Panoptic FPN (Kirillov et al., 2019). Each input feature of stride s goes through
    max(1, log2(s / common_stride)) 3x3 convolutions (norm, ReLU), each but the last of a stride-4 feature
    followed by a 2x bilinear upsampling, so that all reach `common_stride`; their sum is classified by a 1x1
    convolution and upsampled `common_stride` times, to the padded input's resolution.

    Parameters are named as Detectron2's (`<feature>.<i>.weight`, `<feature>.<i>.norm.*`, `predictor.*`).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        norm: Optional[Union[str, Callable[[int], nn.Module]]] = None,
        ignore_value: int = -1,
        loss_weight: float = 1.0,
    ):
        """
        Args:
            input_shape: the features it reads, by name, with their channels and strides.
            num_classes: number of semantic classes predicted.
            conv_dims: channels of the intermediate convolutions.
            common_stride: stride every feature is brought to before summing (at most the smallest stride).
            norm: norm of the intermediate convolutions ("" or None: none, with biases).
            ignore_value: ground-truth class id left out of the loss.
            loss_weight: multiplier of `loss_sem_seg`.
        """
        super().__init__()
        if not input_shape:
            raise ValueError("SemSegFPNHead needs at least one input feature")
        ordered = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in ordered]
        self.ignore_value = ignore_value
        self.common_stride = common_stride
        self.loss_weight = check_loss_weights("SemSegFPNHead", loss_weight, ["loss_sem_seg"])["loss_sem_seg"]
        for name, shape in ordered:
            if shape.stride < common_stride:
                raise ValueError(
                    f"SemSegFPNHead: feature '{name}' has stride {shape.stride}, below COMMON_STRIDE {common_stride}"
                )
            layers = []
            num_convs = max(1, int(math.log2(shape.stride) - math.log2(common_stride)))
            for k in range(num_convs):
                conv = Conv2d(
                    shape.channels if k == 0 else conv_dims,
                    conv_dims,
                    kernel_size=3,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, conv_dims),
                    activation=F.relu,
                )
                c2_msra_fill(conv)
                layers.append(conv)
                if shape.stride != common_stride:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            # Registered under the feature's name (Detectron2's checkpoint layout).
            self.add_module(name, nn.Sequential(*layers))
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1)
        c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        shapes = select_features(input_shape, head.IN_FEATURES, "MODEL.SEM_SEG_HEAD.IN_FEATURES")
        return {
            "input_shape": dict(zip(head.IN_FEATURES, shapes)),
            "num_classes": head.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "common_stride": head.COMMON_STRIDE,
            # Detectron2's per-head weight multiplies with detlib's per-term MODEL.LOSS_WEIGHTS.
            "loss_weight": head.LOSS_WEIGHT * cfg.MODEL.LOSS_WEIGHTS.get("loss_sem_seg", 1.0),
            "norm": head.NORM,
            "ignore_value": head.IGNORE_VALUE,
        }

    def layers(self, features: Dict[str, Tensor]) -> Tensor:
        """Per-class logits at `common_stride`."""
        x = None
        for name in self.in_features:
            y = getattr(self, name)(features[name])
            x = y if x is None else x + y
        return self.predictor(x)

    def forward(
        self, features: Dict[str, Tensor], targets: Optional[Tensor] = None
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """
        Args:
            features: the backbone's features by name.
            targets: N x H x W int64 class ids of the padded batch (padding: `ignore_value`), to compute the
                loss (in training); None for none.
        Returns:
            N x C x H x W per-class logits at the padded input's resolution, and {"loss_sem_seg": ...} with
            `targets`, else {}.
        """
        logits = self.layers(features)
        if targets is None:
            return self._upsample(logits), {}
        logits = self._upsample(logits.float())  # the loss in float32, also under autocast
        return logits, {"loss_sem_seg": sem_seg_loss(logits, targets, self.ignore_value) * self.loss_weight}

    def _upsample(self, logits: Tensor) -> Tensor:
        return F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False)

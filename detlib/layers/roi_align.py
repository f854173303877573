"""ROIAlign: bilinear crop-and-resize of regions of a feature map: torch.ops.detlib.roi_align (or torchvision's)."""

from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from ._extension import KERNELS

__all__ = ["roi_align", "ROIAlign"]

# Tensor[K, 5] of (batch index, x1, y1, x2, y2), or one Tensor[Ki, 4] / Boxes per image.
RoisType = Union[torch.Tensor, Sequence]


def _pair(output_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    height, width = output_size
    return int(height), int(width)


def _rois_tensor(rois: RoisType, input: torch.Tensor) -> torch.Tensor:
    """Bring `rois` to Tensor[K, 5] (batch index, x1, y1, x2, y2) in `input`'s dtype, checking it."""
    if isinstance(rois, torch.Tensor):
        if rois.dim() != 2 or rois.size(1) != 5:
            hint = " (for boxes without a batch index pass a list with one Tensor[Ki, 4] per image)"
            raise ValueError(
                "roi_align: rois must be Tensor[K, 5] of (batch index, x1, y1, x2, y2), got shape "
                f"{list(rois.shape)}" + (hint if rois.dim() == 2 and rois.size(1) == 4 else "")
            )
    elif isinstance(rois, (list, tuple)):
        per_image = [getattr(boxes, "tensor", boxes) for boxes in rois]
        for i, boxes in enumerate(per_image):
            if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.size(1) != 4:
                shape = list(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
                raise ValueError(f"roi_align: boxes of image {i} must be Tensor[Ki, 4] or Boxes, got {shape}")
            if boxes.device != input.device:
                raise ValueError(f"roi_align: boxes of image {i} are on {boxes.device} but input is on {input.device}")
        if not per_image:
            return input.new_zeros((0, 5))
        rois = torch.cat(
            [torch.cat([boxes.new_full((len(boxes), 1), i), boxes], dim=1) for i, boxes in enumerate(per_image)]
        )
    else:
        raise TypeError(f"roi_align: rois must be a Tensor[K, 5] or a list of per-image boxes, got {type(rois)}")
    if rois.device != input.device:
        raise ValueError(f"roi_align: rois are on {rois.device} but input is on {input.device}")
    return rois.to(dtype=input.dtype)


def roi_align(
    input: torch.Tensor,
    rois: RoisType,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """
    ROIAlign with `torchvision.ops.roi_align` semantics, differentiable w.r.t. `input`.

    Args:
        input: Tensor[N, C, H, W] feature map.
        rois: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list with one Tensor[Ki, 4] (or
            `Boxes`) per image. Coordinates are in input-image pixels; `spatial_scale` maps them onto
            the feature map.
        output_size: (height, width) of each pooled region, or one int for both.
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(roi size / output size).
        aligned: shift the sampling grid by -0.5 pixel so that pixel centres are at half-integers
            (ROIAlignV2, what Detectron2 uses); False reproduces the original ROIAlign.

    Returns:
        Tensor[K, C, output_height, output_width].
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        shape = list(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(f"roi_align: input must be a Tensor[N, C, H, W] feature map, got {shape}")
    args = (float(spatial_scale), *_pair(output_size), int(sampling_ratio), bool(aligned))
    if input.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(input.device.type):
        # As torchvision under autocast: pool in float32 (half-precision rois lose whole pixels at
        # image scale), return the input's dtype.
        return KERNELS.ops.roi_align(input.float(), _rois_tensor(rois, input.float()), *args).to(input.dtype)
    return KERNELS.ops.roi_align(input, _rois_tensor(rois, input), *args)


class ROIAlign(nn.Module):
    """`roi_align` as a module with fixed parameters; Detectron2's `ROIAlign`."""

    def __init__(
        self, output_size: Union[int, Tuple[int, int]], spatial_scale: float, sampling_ratio: int, aligned: bool = True
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: Union[torch.Tensor, List]) -> torch.Tensor:
        """
        Args:
            input: Tensor[N, C, H, W].
            rois: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of per-image Tensor[Ki, 4] / Boxes.
        """
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )

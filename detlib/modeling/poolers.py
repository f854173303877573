"""Pooling fixed-size features for boxes from a feature pyramid (the "RoI feature extractor")."""

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from detlib.layers import ROIAlign
from detlib.structures import Boxes

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]

_POOLER_TYPES = ("ROIAlign", "ROIAlignV2")


def assign_boxes_to_levels(
    box_lists: List[Boxes], min_level: int, max_level: int, canonical_box_size: int, canonical_level: int
) -> torch.Tensor:
    """
    The pyramid level each box is pooled from, by the FPN paper's rule (eq. 1):
    level = floor(canonical_level + log2(sqrt(area) / canonical_box_size)), clamped to
    [min_level, max_level]. A box of side `canonical_box_size` goes to `canonical_level`.

    Args:
        box_lists: per image, the boxes (XYXY, input-image pixels).
    Returns:
        int64 (M,) for all M boxes of all images in order: the level index relative to `min_level`,
        i.e. an index into the pooler's list of levels.
    """
    box_sizes = torch.sqrt(torch.cat([boxes.area() for boxes in box_lists]))
    # The small constant keeps log2 finite for degenerate (zero-area) boxes; they go to min_level.
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: List[Boxes]) -> torch.Tensor:
    """
    Stack per-image boxes into the M x 5 "rois" of ROIAlign: rows (image index, x0, y0, x1, y1).
    """
    # Built from each image's own tensor shape, not len(): while exporting the box counts are symbolic.
    return torch.cat(
        [torch.cat([b.tensor.new_full((b.tensor.shape[0], 1), i), b.tensor], dim=1) for i, b in enumerate(box_lists)]
    )


def _level_of_scale(scale: float) -> int:
    level = -math.log2(scale)
    if not math.isclose(level, round(level), abs_tol=1e-6):
        raise ValueError(f"ROIPooler: feature scale {scale} is not a power of 1/2")
    return int(round(level))


class ROIPooler(nn.Module):
    """
    Pools an `output_size` feature for each box from one level of a feature pyramid, the level
    chosen by the box's size (`assign_boxes_to_levels`).
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        """
        Args:
            output_size: side (or (height, width)) of the pooled features.
            scales: per pyramid level, finest first, feature size / image size (1/4, 1/8, ...); each a
                power of 1/2, consecutive levels a factor 2 apart.
            sampling_ratio: ROIAlign samples per output bin and axis; 0 adapts it to the box size.
            pooler_type: "ROIAlign" (the original, box corners on pixel corners) or "ROIAlignV2"
                (box corners shifted by half a pixel, `aligned=True`, as Detectron2 trains with).
            canonical_box_size, canonical_level: a box of this side goes to this level.
        """
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or not all(isinstance(s, int) for s in output_size):
            raise ValueError(f"ROIPooler: output_size must be an int or two ints, got {output_size!r}")
        self.output_size = tuple(output_size)
        if pooler_type not in _POOLER_TYPES:
            raise ValueError(f"ROIPooler: unknown pooler_type '{pooler_type}'; choose one of {_POOLER_TYPES}")
        if len(scales) == 0:
            raise ValueError("ROIPooler needs at least one feature scale")

        aligned = pooler_type == "ROIAlignV2"
        self.level_poolers = nn.ModuleList(
            ROIAlign(self.output_size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
            for scale in scales
        )
        self.min_level = _level_of_scale(scales[0])
        self.max_level = _level_of_scale(scales[-1])
        if self.max_level - self.min_level + 1 != len(scales):
            raise ValueError(f"ROIPooler: scales {list(scales)} are not consecutive pyramid levels")
        if canonical_box_size <= 0:
            raise ValueError(f"ROIPooler: canonical_box_size must be > 0, got {canonical_box_size}")
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x: per level (same order as `scales`), N x C x H_l x W_l features.
            box_lists: per image (N of them), the boxes to pool, XYXY in input-image pixels.
        Returns:
            M x C x output_size features, M the number of boxes of all images, in order.
        """
        if len(x) != len(self.level_poolers):
            raise ValueError(f"ROIPooler built for {len(self.level_poolers)} levels got {len(x)} feature maps")
        if len(box_lists) != x[0].size(0):
            raise ValueError(f"ROIPooler got boxes for {len(box_lists)} images but features for {x[0].size(0)}")
        num_channels = x[0].shape[1]
        if len(box_lists) == 0:
            return x[0].new_zeros((0, num_channels) + self.output_size)

        rois = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            return self.level_poolers[0](x[0], rois)

        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        output = x[0].new_zeros((rois.shape[0], num_channels) + self.output_size)
        for level, pooler in enumerate(self.level_poolers):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            output.index_put_((inds,), pooler(x[level], rois[inds]))
        return output

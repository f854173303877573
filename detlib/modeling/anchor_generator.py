"""Anchors: a few cell anchors per feature level, repeated over that level's grid of locations."""

import math
from typing import List, Sequence

import torch
from torch import nn

from detlib.config import configurable
from detlib.structures import Boxes
from detlib.utils.registry import Registry

__all__ = ["ANCHOR_GENERATOR_REGISTRY", "BufferList", "DefaultAnchorGenerator", "build_anchor_generator"]

ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
ANCHOR_GENERATOR_REGISTRY.__doc__ = """
Anchor generators, built from `(cfg, input_shape: List[ShapeSpec])` and called on the list of
feature maps they were built for.
"""


class BufferList(nn.Module):
    """
    A list of tensors that move with the module (`.to`, `.cuda`) but are not saved in its state dict:
    they are derived from the config, not learned.
    """

    def __init__(self, buffers: Sequence[torch.Tensor]):
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


def _per_level(params, num_levels: int, name: str) -> List[list]:
    """
    `params` is one list for every level (``[32, 64]`` or ``[[32, 64]]``) or one list per level
    (``[[32], [64]]``); return one list per level.
    """
    if not isinstance(params, Sequence) or len(params) == 0:
        raise ValueError(f"Anchor {name} must be a non-empty list, got {params!r}")
    if not isinstance(params[0], Sequence):
        return [list(params)] * num_levels
    if len(params) == 1:
        return [list(params[0])] * num_levels
    if len(params) != num_levels:
        raise ValueError(f"Anchor {name} has {len(params)} lists for {num_levels} feature levels: {params!r}")
    return [list(p) for p in params]


@ANCHOR_GENERATOR_REGISTRY.register()
class DefaultAnchorGenerator(nn.Module):
    """
    Axis-aligned anchors for each feature level: `len(sizes) * len(aspect_ratios)` cell anchors
    centered at 0, placed at every feature-map location (x, y) = ((j + offset) * stride,
    (i + offset) * stride). Anchors are XYXY in input-image pixels.
    """

    box_dim: int = 4
    """Numbers per anchor."""

    @configurable
    def __init__(self, *, sizes, aspect_ratios, strides: List[int], offset: float = 0.0):
        """
        Args:
            sizes: anchor sizes (sqrt of the area, in pixels), one list per level or one for all.
            aspect_ratios: height / width ratios, one list per level or one for all.
            strides: the stride of each feature level, in pixels.
            offset: where in its stride cell an anchor is centered, in [0, 1): 0 at the cell's
                top-left corner, 0.5 at its center.
        """
        super().__init__()
        self.strides = list(strides)
        self.num_features = len(self.strides)
        sizes = _per_level(sizes, self.num_features, "sizes")
        aspect_ratios = _per_level(aspect_ratios, self.num_features, "aspect_ratios")
        self.cell_anchors = BufferList([self.generate_cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios)])
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"Anchor offset must be in [0, 1), got {offset}")
        self.offset = offset

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [shape.stride for shape in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    @property
    def num_anchors(self) -> List[int]:
        """Cell anchors per location, for each feature level."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    @property
    def num_cell_anchors(self) -> List[int]:
        """Same as `num_anchors` (Detectron2's older name)."""
        return self.num_anchors

    @staticmethod
    def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
        """
        XYXY anchors centered at (0, 0), size-major: for each size s and ratio r, the box of area s**2
        with height / width = r. Returns a (len(sizes) * len(aspect_ratios)) x 4 float32 tensor.
        """
        for name, values in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
            if len(values) == 0 or any(not (isinstance(v, (int, float)) and v > 0) for v in values):
                raise ValueError(f"Anchor {name} must be positive numbers, got {list(values)}")
        anchors = []
        for size in sizes:
            for ratio in aspect_ratios:
                w = math.sqrt(size**2.0 / ratio)
                h = ratio * w
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors, dtype=torch.float32)

    def _grid_anchors(self, grid_sizes: List[torch.Size]) -> List[torch.Tensor]:
        anchors = []
        for (height, width), stride, cell_anchors in zip(grid_sizes, self.strides, self.cell_anchors):
            device = cell_anchors.device
            shifts_x = (torch.arange(width, dtype=torch.float32, device=device) + self.offset) * stride
            shifts_y = (torch.arange(height, dtype=torch.float32, device=device) + self.offset) * stride
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            # Location-major: the cell anchors of location 0, then those of location 1, ...
            anchors.append((shifts[:, None, :] + cell_anchors[None, :, :]).reshape(-1, 4))
        return anchors

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """
        Args:
            features: the feature maps (N x C x H_l x W_l) of the levels this generator was built for.
        Returns:
            per level, `Boxes` of H_l * W_l * A_l anchors, ordered (row, column, cell anchor).
        """
        if len(features) != self.num_features:
            raise ValueError(f"Anchor generator built for {self.num_features} feature levels got {len(features)}")
        grid_sizes = [feature.shape[-2:] for feature in features]
        return [Boxes(anchors) for anchors in self._grid_anchors(grid_sizes)]


def build_anchor_generator(cfg, input_shape) -> nn.Module:
    """The anchor generator named by `cfg.MODEL.ANCHOR_GENERATOR.NAME`, built for the levels `input_shape`."""
    return ANCHOR_GENERATOR_REGISTRY.get(cfg.MODEL.ANCHOR_GENERATOR.NAME)(cfg, input_shape)

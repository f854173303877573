"""Box heads: per-RoI feature transforms between the pooler and the box predictor."""
from typing import List

import torch
from torch import nn

from detlib.config import configurable
from detlib.layers import Conv2d, ShapeSpec, get_norm
from detlib.layers.weight_init import c2_msra_fill, c2_xavier_fill
from detlib.utils.registry import Registry

__all__ = ["ROI_BOX_HEAD_REGISTRY", "FastRCNNConvFCHead", "build_box_head"]

ROI_BOX_HEAD_REGISTRY = Registry("ROI_BOX_HEAD")
ROI_BOX_HEAD_REGISTRY.__doc__ = """
Box heads, built from `(cfg, input_shape: ShapeSpec)` (the pooled feature's shape). Called on
R x C x H x W pooled features, they return R x D features (or R x C' x H' x W') and report their
output with `output_shape`.
"""


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConvFCHead(nn.Sequential):
    """
    3x3 convs (`conv1`, `conv2`, ...; ReLU, optional norm) followed by fully connected layers
    (`fc1`, `fc2`, ...; ReLU) on the flattened features.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, conv_dims: List[int], fc_dims: List[int], conv_norm: str = ""):
        """
        Args:
            input_shape: channels, height and width of the pooled features.
            conv_dims: output channels of each conv.
            fc_dims: output size of each fully connected layer.
            conv_norm: norm after each conv ("" for none, or a name `get_norm` knows, e.g. "GN").
        """
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("FastRCNNConvFCHead needs at least one conv or fc layer")
        self._output_size = (input_shape.channels, input_shape.height, input_shape.width)

        self.conv_norm_relus = []
        for k, conv_dim in enumerate(conv_dims):
            conv = Conv2d(
                self._output_size[0],
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, conv_dim),
                activation=nn.ReLU(),
            )
            self.add_module(f"conv{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            self._output_size = (conv_dim, self._output_size[1], self._output_size[2])

        self.fcs = []
        for k, fc_dim in enumerate(fc_dims):
            if k == 0:
                self.add_module("flatten", nn.Flatten())
            fc = nn.Linear(int(torch.tensor(self._output_size).prod()), fc_dim)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            self.fcs.append(fc)
            self._output_size = fc_dim

        for layer in self.conv_norm_relus:
            c2_msra_fill(layer)
        for layer in self.fcs:
            c2_xavier_fill(layer)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        return {
            "input_shape": input_shape,
            "conv_dims": [head.CONV_DIM] * head.NUM_CONV,
            "fc_dims": [head.FC_DIM] * head.NUM_FC,
            "conv_norm": head.NORM,
        }

    @property
    def output_shape(self) -> ShapeSpec:
        """R x D when the head ends with an fc (channels=D), else R x C x H x W."""
        if isinstance(self._output_size, int):
            return ShapeSpec(channels=self._output_size)
        return ShapeSpec(channels=self._output_size[0], height=self._output_size[1], width=self._output_size[2])


def build_box_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The box head named by `cfg.MODEL.ROI_BOX_HEAD.NAME`."""
    return ROI_BOX_HEAD_REGISTRY.get(cfg.MODEL.ROI_BOX_HEAD.NAME)(cfg, input_shape)

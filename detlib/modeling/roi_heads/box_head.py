"""Box heads: per-RoI feature transforms between the pooler and the box predictor."""

from typing import List

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
        channels, height, width = input_shape.channels, input_shape.height, input_shape.width
        # Registered in this order (conv1.., flatten, fc1, fc_relu1, ..) since Sequential runs them so.
        self.conv_norm_relus = []
        for i, dim in enumerate(conv_dims, start=1):
            self.conv_norm_relus.append(self._conv(f"conv{i}", channels, dim, conv_norm))
            channels = dim
        self.fcs = []
        in_features = channels * height * width
        if fc_dims:
            self.add_module("flatten", nn.Flatten())
        for i, dim in enumerate(fc_dims, start=1):
            self.fcs.append(nn.Linear(in_features, dim))
            self.add_module(f"fc{i}", self.fcs[-1])
            self.add_module(f"fc_relu{i}", nn.ReLU(inplace=True))
            in_features = dim
        # R x D after an fc layer, else R x C x H x W.
        self._output_size = in_features if fc_dims else (channels, height, width)

        for conv in self.conv_norm_relus:
            c2_msra_fill(conv)
        for fc in self.fcs:
            c2_xavier_fill(fc)

    def _conv(self, name: str, in_channels: int, out_channels: int, norm: str) -> Conv2d:
        """A 3x3 same-size conv with norm and ReLU, registered as `name`; bias only without a norm."""
        norm_layer = get_norm(norm, out_channels)
        layer = Conv2d(
            in_channels, out_channels, 3, padding=1, bias=not norm, norm=norm_layer, activation=nn.ReLU(inplace=True)
        )
        self.add_module(name, layer)
        return layer

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

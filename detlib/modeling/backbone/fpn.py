"""Feature Pyramid Network (Lin et al. 2017) on top of a bottom-up backbone, in Detectron2's layout."""

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from detlib.layers import Conv2d, ShapeSpec, get_norm
from detlib.layers.weight_init import c2_xavier_fill

from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .resnet import build_resnet_backbone

__all__ = [
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]


class LastLevelMaxPool(nn.Module):
    """Top block that adds p6 by subsampling p5 (1x1 max pool, stride 2), as used for the RPN in Faster R-CNN;
    or, for a pyramid whose coarsest level is another, the next level after `in_feature`."""

    num_levels = 1

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """Top block of RetinaNet: p6 is a stride-2 3x3 conv of `in_feature` (res5 by default), p7 of ReLU(p6)."""

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            c2_xavier_fill(conv)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class FPN(Backbone):
    """
    Top-down pathway with lateral connections over the `in_features` of `bottom_up`.

    Outputs "p{k}" for each input of stride 2**k (e.g. res2..res5 -> p2..p5), all with `out_channels`
    channels, then the levels of the optional top block (p6, ...). Convolutions are named
    `fpn_lateral{k}` (1x1, on the bottom-up feature) and `fpn_output{k}` (3x3, on the merged map).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        norm="",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ):
        """
        Args:
            bottom_up: backbone whose outputs include `in_features`.
            in_features: bottom-up features, from high to low resolution, with strides doubling, e.g. res2..res5.
            out_channels: channels of every pyramid level.
            norm: norm after every FPN conv (see `get_norm`); "" for none, in which case the convs have a bias.
            top_block: module with attributes `num_levels` and `in_feature` (a bottom-up or a pyramid feature
                name), called on that feature and returning `num_levels` further maps, each of half the
                resolution of the previous level.
            fuse_type: how a lateral map and the upsampled coarser map merge: "sum" or "avg".
            square_pad: if > 0, inputs are padded to a square of this size (reported in `padding_constraints`).
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"FPN needs a Backbone as bottom_up, got {type(bottom_up).__name__}.")
        if not in_features:
            raise ValueError("FPN needs at least one input feature (MODEL.FPN.IN_FEATURES is empty).")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN fuse_type (MODEL.FPN.FUSE_TYPE) must be 'sum' or 'avg', got {fuse_type!r}.")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN input features {missing} are not outputs of the bottom-up backbone (it has {list(input_shapes)})."
            )
        strides = [input_shapes[f].stride for f in in_features]
        for finer, coarser in zip(strides[:-1], strides[1:]):
            if coarser != 2 * finer:
                raise ValueError(
                    f"FPN input strides must double from one feature to the next; got {strides} "
                    f"for {list(in_features)}."
                )

        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for feature, stride in zip(in_features, strides):
            level = int(math.log2(stride))
            # 1x1 lateral conv to the pyramid's width, then a same-size 3x3 conv; a bias only without norm.
            lateral = Conv2d(
                input_shapes[feature].channels, out_channels, 1, bias=use_bias, norm=get_norm(norm, out_channels)
            )
            output = Conv2d(out_channels, out_channels, 3, padding=1, bias=use_bias, norm=get_norm(norm, out_channels))
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Plain lists (the modules are registered above under their level names), coarsest level first,
        # the order in which the top-down pass visits them.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up

        self._out_feature_strides: Dict[str, int] = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            source = top_block.in_feature
            if source not in input_shapes and source not in self._out_feature_strides:
                raise ValueError(
                    f"FPN: the top block {type(top_block).__name__} reads '{source}', but with in_features "
                    f"{list(in_features)} the pyramid has only {list(self._out_feature_strides)} and the "
                    f"bottom-up network gives {list(input_shapes)}."
                )
            last_level = int(math.log2(strides[-1]))
            for level in range(last_level + 1, last_level + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{level}"] = 2**level
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

    @property
    def size_divisibility(self) -> int:
        """The coarsest input stride, so that every top-down upsampling lands on the lateral map's size."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images, shape (N, C, H, W), H and W multiples of `size_divisibility`.

        Returns:
            {"p2": ..., "p6": ...}: each (N, out_channels, H / stride, W / stride), finest level first.
        """
        bottom_up_features = self.bottom_up(x)
        source = self.top_block.in_feature if self.top_block is not None else None
        top_down = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results = [self.output_convs[0](top_down)]
        finer_features = self.in_features[-2::-1]
        for feature, lateral_conv, output_conv in zip(finer_features, self.lateral_convs[1:], self.output_convs[1:]):
            # Each bottom-up map is let go once used and the sum is made in place, so that at the finest (largest)
            # level fewer maps of its size are alive at once. Same values; autograd keeps what backward needs.
            bottom_up = bottom_up_features[feature] if feature == source else bottom_up_features.pop(feature)
            top_down = _add_upsampled_(lateral_conv(bottom_up), top_down)
            del bottom_up
            if self._fuse_type == "avg":
                top_down = top_down / 2
            results.insert(0, output_conv(top_down))

        if self.top_block is not None:
            if source in bottom_up_features:
                top_input = bottom_up_features[source]
            else:
                top_input = results[self._out_features.index(source)]
            results.extend(self.top_block(top_input))
        return dict(zip(self._out_features, results))


def _add_upsampled_(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """
    `fine += coarse` upsampled 2x (nearest), in place, without making the upsampled map: each coarse pixel is
    broadcast over its 2x2 block of a view of `fine`. The same sums as adding `F.interpolate(coarse,
    scale_factor=2)`, one map of the finest level's size fewer (62 MB at stride 4 of a 800x1216 image).
    """
    n, c, h, w = coarse.shape
    if fine.shape != (n, c, 2 * h, 2 * w):
        raise ValueError(f"FPN: a lateral map of shape {tuple(fine.shape)} is not twice {tuple(coarse.shape)}")
    fine.view(n, c, h, 2, w, 2).add_(coarse[:, :, :, None, :, None])
    return fine


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN from `cfg.MODEL.RESNETS` and `cfg.MODEL.FPN`, with p6 from `LastLevelMaxPool`."""
    return FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with RetinaNet's p6/p7 computed from res5."""
    return _resnet_fpn_p6p7(cfg, input_shape, "res5")


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with FCOS's p6/p7 computed from p5 (as Detectron2's FCOS config sets its top block)."""
    return _resnet_fpn_p6p7(cfg, input_shape, "p5")


def _resnet_fpn_p6p7(cfg, input_shape: ShapeSpec, p6_input: str) -> FPN:
    """ResNet + FPN whose p6 is a stride-2 conv of `p6_input` (a ResNet output or "p5") and p7 of p6."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels = out_channels if p6_input == "p5" else bottom_up.output_shape()[p6_input].channels
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels, out_channels, in_feature=p6_input),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )

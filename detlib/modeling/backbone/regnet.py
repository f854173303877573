"""
RegNet (Radosavovic et al. 2020, "Designing Network Design Spaces") and the AnyNet family it is drawn from:
a stem, then stages of identical residual blocks, each stage's first block changing width and stride.

Module names are those of pycls and Detectron2 (`stem`, `s1`..`s4`, blocks `b1`.., layers `a`, `a_bn`, ...),
so pycls ImageNet weights and Detectron2 RegNet checkpoints load unchanged.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from detlib.layers import CNNBlockBase, get_norm

from .backbone import Backbone

__all__ = [
    "AnyNet",
    "RegNet",
    "ResBasicBlock",
    "ResBottleneckBlock",
    "ResStem",
    "SimpleStem",
    "VanillaBlock",
    "generate_regnet_parameters",
]

# A block is built as block_class(w_in, w_out, stride, norm, activation_class, params), where params
# holds "bot_mul" (bottleneck ratio), "group_w" (channels per group) and "se_r" (squeeze-excitation ratio).
Activation = Callable[[], nn.Module]


def _conv(w_in: int, w_out: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """A 'same' convolution of odd kernel size (output size = input size / stride, rounded up)."""
    if kernel % 2 == 0:
        raise ValueError(f"RegNet convolutions have odd kernels, got {kernel}")
    return nn.Conv2d(w_in, w_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)


class _Sequence(CNNBlockBase):
    """A block whose forward applies its children in the order they were added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class ResStem(_Sequence):
    """ResNet's ImageNet stem: 7x7 stride-2 conv, norm, activation, 3x3 stride-2 max pool (stride 4)."""

    def __init__(self, w_in: int, w_out: int, norm, activation_class: Activation):
        super().__init__(w_in, w_out, 4)
        self.conv = _conv(w_in, w_out, 7, stride=2)
        self.bn = get_norm(norm, w_out)
        self.af = activation_class()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)


class SimpleStem(_Sequence):
    """3x3 stride-2 conv, norm, activation (stride 2)."""

    def __init__(self, w_in: int, w_out: int, norm, activation_class: Activation):
        super().__init__(w_in, w_out, 2)
        self.conv = _conv(w_in, w_out, 3, stride=2)
        self.bn = get_norm(norm, w_out)
        self.af = activation_class()


class SE(nn.Module):
    """Squeeze-and-excitation: channels scaled by a sigmoid gate computed from their global average."""

    def __init__(self, w_in: int, w_se: int, activation_class: Activation):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.f_ex = nn.Sequential(
            _conv(w_in, w_se, 1, bias=True), activation_class(), _conv(w_se, w_in, 1, bias=True), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(self.avg_pool(x))


class VanillaBlock(_Sequence):
    """Two 3x3 convs, each with norm and activation; no shortcut."""

    def __init__(self, w_in: int, w_out: int, stride: int, norm, activation_class: Activation, _params: Dict):
        super().__init__(w_in, w_out, stride)
        self.a = _conv(w_in, w_out, 3, stride=stride)
        self.a_bn = get_norm(norm, w_out)
        self.a_af = activation_class()
        self.b = _conv(w_out, w_out, 3)
        self.b_bn = get_norm(norm, w_out)
        self.b_af = activation_class()


class BasicTransform(nn.Module):
    """The residual branch of `ResBasicBlock`: 3x3 conv, norm, activation, 3x3 conv, norm."""

    def __init__(self, w_in: int, w_out: int, stride: int, norm, activation_class: Activation, _params: Dict):
        super().__init__()
        self.a = _conv(w_in, w_out, 3, stride=stride)
        self.a_bn = get_norm(norm, w_out)
        self.a_af = activation_class()
        self.b = _conv(w_out, w_out, 3)
        self.b_bn = get_norm(norm, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class BottleneckTransform(nn.Module):
    """
    The residual branch of `ResBottleneckBlock`: 1x1 conv to the bottleneck width, grouped 3x3 conv (carrying
    the stride), optional squeeze-excitation, 1x1 conv to the output width; norms after each conv.
    """

    def __init__(self, w_in: int, w_out: int, stride: int, norm, activation_class: Activation, params: Dict):
        super().__init__()
        w_b = int(round(w_out * params["bot_mul"]))
        w_se = int(round(w_in * params["se_r"]))
        self.a = _conv(w_in, w_b, 1)
        self.a_bn = get_norm(norm, w_b)
        self.a_af = activation_class()
        self.b = _conv(w_b, w_b, 3, stride=stride, groups=w_b // params["group_w"])
        self.b_bn = get_norm(norm, w_b)
        self.b_af = activation_class()
        # The squeeze width is a fraction of the block's input width, as in pycls.
        self.se = SE(w_b, w_se, activation_class) if w_se else None
        self.c = _conv(w_b, w_out, 1)
        self.c_bn = get_norm(norm, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class _ResidualBlock(CNNBlockBase):
    """activation(shortcut(x) + f(x)); the shortcut projects (1x1 conv `proj` + norm `bn`) when the shape changes."""

    transform_class: type

    def __init__(self, w_in: int, w_out: int, stride: int, norm, activation_class: Activation, params: Dict):
        super().__init__(w_in, w_out, stride)
        self.proj, self.bn = None, None
        if w_in != w_out or stride != 1:
            self.proj = _conv(w_in, w_out, 1, stride=stride)
            self.bn = get_norm(norm, w_out)
        self.f = self.transform_class(w_in, w_out, stride, norm, activation_class, params)
        self.af = activation_class()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.bn(self.proj(x))
        return self.af(shortcut + self.f(x))


class ResBasicBlock(_ResidualBlock):
    """Residual block of two 3x3 convs (`BasicTransform`)."""

    transform_class = BasicTransform


class ResBottleneckBlock(_ResidualBlock):
    """Residual bottleneck block with grouped 3x3 conv and optional SE (`BottleneckTransform`): RegNet's X and Y block."""

    transform_class = BottleneckTransform


class AnyStage(nn.Module):
    """`d` blocks named b1..bd; the first maps w_in to w_out with the stage's stride, the rest keep the shape."""

    def __init__(self, w_in, w_out, stride, d, block_class, norm, activation_class, params):
        super().__init__()
        for i in range(d):
            first = i == 0
            block = block_class(w_in if first else w_out, w_out, stride if first else 1, norm, activation_class, params)
            self.add_module(f"b{i + 1}", block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


def _init_weights(module: nn.Module) -> None:
    """pycls' initialization: He-normal convs over their fan-out, BatchNorm at the identity."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, mean=0.0, std=(2.0 / fan_out) ** 0.5)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.01)
        nn.init.zeros_(module.bias)


class AnyNet(Backbone):
    """
    A stem and stages s1, s2, ... of residual blocks, each stage given its depth, width, stride, group width and
    bottleneck ratio. Outputs are any of "stem", "s1", ..., by name.
    """

    def __init__(
        self,
        *,
        stem_class: Callable[..., CNNBlockBase],
        stem_width: int,
        block_class: Callable[..., CNNBlockBase],
        depths: Sequence[int],
        widths: Sequence[int],
        group_widths: Sequence[int],
        strides: Sequence[int],
        bottleneck_ratios: Sequence[float],
        se_ratio: float,
        activation_class: Activation,
        freeze_at: int = 0,
        norm="BN",
        out_features: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            stem_class: called as stem_class(3, stem_width, norm, activation_class).
            stem_width: channels out of the stem.
            block_class: called as block_class(w_in, w_out, stride, norm, activation_class, params).
            depths, widths, group_widths, strides, bottleneck_ratios: one entry per stage.
            se_ratio: squeeze-excitation width over the block input width (0: no SE).
            activation_class: builds an activation module.
            freeze_at: freeze the stem (1) and the first freeze_at - 1 stages.
            norm: norm after every conv (see `get_norm`).
            out_features: names of the outputs; by default the last stage.
        """
        super().__init__()
        self.stem = stem_class(3, stem_width, norm, activation_class)
        stride = self.stem.stride
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        self.stages_and_names: List[Tuple[nn.Module, str]] = []
        w_in = stem_width
        stage_specs = zip(depths, widths, strides, bottleneck_ratios, group_widths)
        for index, (depth, width, stage_stride, bot_mul, group_w) in enumerate(stage_specs, start=1):
            params = {"bot_mul": bot_mul, "group_w": group_w, "se_r": se_ratio}
            stage = AnyStage(w_in, width, stage_stride, depth, block_class, norm, activation_class, params)
            name = f"s{index}"
            self.add_module(name, stage)
            self.stages_and_names.append((stage, name))
            for block in stage.children():
                stride *= block.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = list(stage.children())[-1].out_channels
            w_in = width
        self.apply(_init_weights)

        self._out_features = list(out_features) if out_features is not None else [self.stages_and_names[-1][1]]
        known = [name for name, _ in self.named_children()]
        unknown = [f for f in self._out_features if f not in known]
        if unknown:
            raise ValueError(f"AnyNet out_features {unknown} are not among its layers {known}")
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (N, 3, H, W) -> {name: (N, channels, H / stride, W / stride)} for each of `out_features`."""
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        x = self.stem(x)
        computed = {"stem": x}
        for stage, name in self.stages_and_names:
            x = computed[name] = stage(x)
        # In network order, as the pyramid above expects.
        return {name: value for name, value in computed.items() if name in self._out_features}

    def freeze(self, freeze_at: int = 0) -> "AnyNet":
        """Freeze the stem (freeze_at >= 1) and stages s1 .. s{freeze_at - 1}: no gradients, frozen norms."""
        if freeze_at >= 1:
            self.stem.freeze()
        for index, (stage, _) in enumerate(self.stages_and_names, start=2):
            if freeze_at >= index:
                for block in stage.children():
                    block.freeze()
        return self


def adjust_block_compatibility(
    ws: Sequence[int], bs: Sequence[float], gs: Sequence[int]
) -> Tuple[List[int], List[float], List[int]]:
    """
    Make each stage's width, bottleneck ratio and group width consistent: the bottleneck width becomes a
    multiple of the group width (no larger than the bottleneck width), and the stage width follows from it.
    """
    if not len(ws) == len(bs) == len(gs):
        raise ValueError("widths, bottleneck ratios and group widths need one entry per stage")
    widths, groups = [], []
    for w, b, g in zip(ws, bs, gs):
        bottleneck = int(max(1, w * b))
        g = int(min(g, bottleneck))
        multiple = int(np.lcm(g, b)) if b > 1 else g
        bottleneck = max(multiple, int(round(bottleneck / multiple) * multiple))
        widths.append(int(bottleneck / b))
        groups.append(g)
    return widths, list(bs), groups


def generate_regnet_parameters(w_a: float, w_0: int, w_m: float, d: int, q: int = 8):
    """
    Stage widths and depths of a RegNet (Section 3.3 of the paper): block j has width w_0 + w_a * j, snapped to
    w_0 * w_m**k for the nearest integer k and rounded to a multiple of q; consecutive blocks of equal width form
    a stage.

    Returns:
        (stage widths, stage depths, number of stages, number of possible stages, per-block widths,
        per-block continuous widths).
    """
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        raise ValueError(f"invalid RegNet parameters w_a={w_a}, w_0={w_0}, w_m={w_m} (q={q})")
    continuous = w_0 + w_a * np.arange(d)
    exponents = np.round(np.log(continuous / w_0) / np.log(w_m))
    block_widths = (np.round(w_0 * np.power(w_m, exponents) / q) * q).astype(int)
    stage_widths, stage_depths = np.unique(block_widths, return_counts=True)
    return (
        stage_widths.tolist(),
        stage_depths.tolist(),
        len(stage_widths),
        exponents.max() + 1,
        block_widths.tolist(),
        continuous.tolist(),
    )


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class RegNet(AnyNet):
    """
    An AnyNet whose stage widths and depths follow from the quantized linear rule of `generate_regnet_parameters`;
    every stage has the same stride, group width and bottleneck ratio. RegNetX: `ResBottleneckBlock` without SE;
    RegNetY: with `se_ratio` 0.25.
    """

    def __init__(
        self,
        *,
        stem_class: Callable[..., CNNBlockBase],
        stem_width: int,
        block_class: Callable[..., CNNBlockBase],
        depth: int,
        w_a: float,
        w_0: int,
        w_m: float,
        group_width: int,
        stride: int = 2,
        bottleneck_ratio: float = 1.0,
        se_ratio: float = 0.0,
        activation_class: Optional[Activation] = None,
        freeze_at: int = 0,
        norm="BN",
        out_features: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            depth: total number of blocks.
            w_a, w_0, w_m: slope, initial width and quantization base of the width rule.
            group_width: channels per group of the 3x3 convs.
            stride: of every stage.
            bottleneck_ratio: bottleneck width over block width.
            activation_class: ReLU by default.
            Others: see `AnyNet`.
        """
        widths, depths = generate_regnet_parameters(w_a, w_0, w_m, depth)[:2]
        widths, ratios, groups = adjust_block_compatibility(
            widths, [bottleneck_ratio] * len(widths), [group_width] * len(widths)
        )
        super().__init__(
            activation_class=activation_class or _relu,
            block_class=block_class,
            bottleneck_ratios=ratios,
            depths=depths,
            freeze_at=freeze_at,
            group_widths=groups,
            norm=norm,
            out_features=out_features,
            se_ratio=se_ratio,
            stem_class=stem_class,
            stem_width=stem_width,
            strides=[stride] * len(widths),
            widths=widths,
        )

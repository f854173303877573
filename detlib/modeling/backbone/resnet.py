"""
ResNet and ResNeXt backbones (He et al. 2016; Xie et al. 2017) in Detectron2's layout.

Module names match Detectron2's (`stem.conv1`, `res2.0.conv1`, `res3.0.shortcut`, `<conv>.norm`), so its
checkpoints load by name. The stem has stride 4; stages res2..res5 have strides 4, 8, 16, 32.
"""

from typing import Dict, List, Optional, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from detlib.layers import CNNBlockBase, Conv2d, DeformConv, ModulatedDeformConv, ShapeSpec, get_norm
from detlib.layers.weight_init import c2_msra_fill

from .backbone import Backbone
from .build import BACKBONE_REGISTRY

__all__ = [
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "ResNet",
    "make_stage",
    "build_resnet_backbone",
]

# Residual blocks in res2..res5 for each depth; 18 and 34 use BasicBlock, deeper nets BottleneckBlock.
_BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _conv_norm(in_channels: int, out_channels: int, kernel: int, norm, stride: int = 1, **conv_args) -> Conv2d:
    """
    A bias-free conv followed by `norm`, padded to keep the size (up to the stride). Every conv of a
    ResNet is one; the weights are MSRA-initialized by the block that owns it.
    """
    padding = conv_args.get("dilation", 1) * (kernel // 2)
    norm_layer = get_norm(norm, out_channels)
    return Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False, norm=norm_layer, **conv_args)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm) -> Optional[Conv2d]:
    """Projection shortcut (1x1 conv + norm) when the block changes channels; identity (None) otherwise."""
    return None if in_channels == out_channels else _conv_norm(in_channels, out_channels, 1, norm, stride)


class BasicStem(CNNBlockBase):
    """7x7 stride-2 conv + norm + ReLU, then 3x3 stride-2 max pool: stride 4 in total."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm="BN"):
        super().__init__(in_channels, out_channels, stride=4)
        self.conv1 = _conv_norm(in_channels, out_channels, 7, norm, stride=2)
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs with a residual connection (ResNet-18/34). The first conv carries the stride."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm="BN"):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = _conv_norm(in_channels, out_channels, 3, norm, stride)
        self.conv2 = _conv_norm(out_channels, out_channels, 3, norm)
        for conv in (self.shortcut, self.conv1, self.conv2):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """
    1x1 reduce -> 3x3 (grouped, dilated) -> 1x1 expand, with a residual connection (ResNet-50 and deeper).

    `stride_in_1x1=True` puts the stride on the first 1x1 conv, as the original MSRA/Caffe2 models do;
    False puts it on the 3x3 conv, as torchvision does. Pretrained weights only fit the variant they were
    trained with.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        width = bottleneck_channels
        self.conv1 = _conv_norm(in_channels, width, 1, norm, stride_1x1)
        self.conv2 = _conv_norm(width, width, 3, norm, stride_3x3, groups=num_groups, dilation=dilation)
        self.conv3 = _conv_norm(width, out_channels, 1, norm)
        for conv in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class DeformBottleneckBlock(CNNBlockBase):
    """
    A `BottleneckBlock` whose 3x3 conv is deformable (Dai et al. 2017; modulated: Zhu et al. 2019): `conv2_offset`
    predicts, from the block's reduced features, a 2-D offset per kernel tap and offset group (and, modulated, a
    sigmoid weight per tap) that `conv2` samples with.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        """
        Args:
            deform_modulated: v2 (offsets and a weight per tap) rather than v1 (offsets only).
            deform_num_groups: offset groups: the input channels are split into this many groups that share offsets.
            others: as `BottleneckBlock`.
        """
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        width = bottleneck_channels
        self.conv1 = _conv_norm(in_channels, width, 1, norm, stride_1x1)
        # Per offset group, (dy, dx) for each of the 9 taps, plus one modulation weight per tap in v2.
        offset_channels = (27 if deform_modulated else 18) * deform_num_groups
        self.conv2_offset = Conv2d(width, offset_channels, 3, stride_3x3, padding=dilation, dilation=dilation)
        conv_class = ModulatedDeformConv if deform_modulated else DeformConv
        self.conv2 = conv_class(
            width,
            width,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            deformable_groups=deform_num_groups,
            bias=False,
            norm=get_norm(norm, width),
        )
        self.conv3 = _conv_norm(width, out_channels, 1, norm)
        for conv in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if conv is not None:
                c2_msra_fill(conv)
        # Zero offsets (and weights of sigmoid(0) = 0.5) at the start: a plain 3x3 conv until trained.
        nn.init.constant_(self.conv2_offset.weight, 0)
        nn.init.constant_(self.conv2_offset.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if self.deform_modulated:
            dy_dx_weight = self.conv2_offset(out)
            groups_x2 = dy_dx_weight.shape[1] // 3 * 2
            offset, mask = dy_dx_weight[:, :groups_x2], dy_dx_weight[:, groups_x2:].sigmoid()
            out = F.relu_(self.conv2(out, offset, mask))
        else:
            out = F.relu_(self.conv2(out, self.conv2_offset(out)))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class ResNet(Backbone):
    """
    A stem followed by stages `res2`, `res3`, ... of residual blocks, returning the features named in
    `out_features` (any of "stem", "res2".."res5", and "linear" when `num_classes` is set).

    Stages after the last requested feature are not built.
    """

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: List[List[CNNBlockBase]],
        num_classes: Optional[int] = None,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
    ):
        """
        Args:
            stem: the first block, e.g. `BasicStem`.
            stages: blocks of each stage, e.g. from `ResNet.make_stage`; stage i is named "res{i + 2}".
            num_classes: if set, add global average pooling and a linear classifier named "linear".
            out_features: names of the outputs; default: the last layer only.
            freeze_at: freeze the stem (1) and then also the first `freeze_at - 1` stages; see `freeze`.
        """
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes

        stride, channels, name_last = stem.stride, stem.out_channels, "stem"
        self._out_feature_strides: Dict[str, int] = {"stem": stride}
        self._out_feature_channels: Dict[str, int] = {"stem": stem.out_channels}

        if out_features is not None:
            last_stage = {"res2": 1, "res3": 2, "res4": 3, "res5": 4, "linear": len(stages)}
            stages = stages[: max((last_stage.get(f, 0) for f in out_features), default=0)]

        self.stage_names: List[str] = []
        self.stages: List[nn.Sequential] = []
        for i, blocks in enumerate(stages):
            if len(blocks) == 0:
                raise ValueError(f"ResNet stage res{i + 2} has no blocks.")
            name = f"res{i + 2}"
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            for block in blocks:
                stride *= block.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = channels = blocks[-1].out_channels
            name_last = name

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(channels, num_classes)
            nn.init.normal_(self.linear.weight, std=0.01)
            name_last = "linear"

        if out_features is None:
            out_features = [name_last]
        available = ["stem"] + self.stage_names + (["linear"] if num_classes is not None else [])
        unknown = [f for f in out_features if f not in available]
        if unknown or not out_features:
            raise ValueError(f"ResNet out_features {list(out_features)} must be a non-empty subset of {available}.")
        self._out_features = list(out_features)
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images, shape (N, C, H, W).

        Returns:
            the requested features by name; "resK" has shape (N, channels, H / stride, W / stride).
        """
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an input of shape (N, C, H, W); got {tuple(x.shape)}.")
        features = {"stem": self.stem(x)}
        last = features["stem"]
        for name, stage in zip(self.stage_names, self.stages):
            last = features[name] = stage(last)
        if self.num_classes is not None:
            features["linear"] = self.linear(torch.flatten(self.avgpool(last), 1))
        return {name: value for name, value in features.items() if name in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
            if name != "linear"
        }

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """
        Freeze the first `freeze_at` parts: 1 is the stem, 2 the stem and res2, and so on; 0 freezes nothing.

        Frozen parts take no gradients and their batch norms become `FrozenBatchNorm2d`. Used to keep the
        low-level filters of a pretrained backbone fixed while fine-tuning.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for index, stage in enumerate(self.stages, start=2):
            if freeze_at >= index:
                for block in stage.children():
                    block.freeze()
        return self

    @staticmethod
    def make_stage(
        block_class: Type[CNNBlockBase], num_blocks: int, *, in_channels: int, out_channels: int, **kwargs
    ) -> List[CNNBlockBase]:
        """
        Build the `num_blocks` blocks of one stage; the first maps `in_channels` to `out_channels`, the rest
        keep `out_channels`.

        Every other keyword is passed to each block. A keyword ending in `_per_block` is a list with one
        value per block, passed without the suffix; e.g. `stride_per_block=[2, 1, 1]` downsamples in the
        first block only.
        """
        per_block = {}
        shared = {}
        for key, value in kwargs.items():
            if key.endswith("_per_block"):
                if len(value) != num_blocks:
                    raise ValueError(f"{key} has {len(value)} values for a stage of {num_blocks} blocks.")
                per_block[key[: -len("_per_block")]] = value
            else:
                shared[key] = value
        both = set(per_block) & set(shared)
        if both:
            raise ValueError(f"make_stage got both X and X_per_block for {sorted(both)}.")
        blocks = []
        for i in range(num_blocks):
            block_kwargs = {**shared, **{key: values[i] for key, values in per_block.items()}}
            blocks.append(block_class(in_channels=in_channels, out_channels=out_channels, **block_kwargs))
            in_channels = out_channels
        return blocks

    @staticmethod
    def make_default_stages(
        depth: int, block_class: Optional[Type[CNNBlockBase]] = None, **kwargs
    ) -> List[List[CNNBlockBase]]:
        """
        The four stages (res2..res5) of the standard ResNet-`depth`, as Python configs build them:
        `BasicBlock` below depth 50, else `BottleneckBlock` with a bottleneck a quarter of the output
        width; res2 keeps the stem's resolution, each later stage halves it. Other keywords (`norm`,
        `stride_in_1x1`, ...) go to every block.
        """
        if depth not in _BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}.")
        basic = depth < 50
        if block_class is None:
            block_class = BasicBlock if basic else BottleneckBlock
        widths = (64, 128, 256, 512) if basic else (256, 512, 1024, 2048)
        in_channels = 64
        stages = []
        for index, (num_blocks, out_channels) in enumerate(zip(_BLOCKS_PER_STAGE[depth], widths)):
            stage_kwargs = dict(kwargs)
            if not basic:
                stage_kwargs["bottleneck_channels"] = out_channels // 4
            first_stride = 1 if index == 0 else 2
            stages.append(
                ResNet.make_stage(
                    block_class,
                    num_blocks,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                    **stage_kwargs,
                )
            )
            in_channels = out_channels
        return stages


make_stage = ResNet.make_stage


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet from `cfg.MODEL.RESNETS` and `cfg.MODEL.BACKBONE.FREEZE_AT`."""
    r = cfg.MODEL.RESNETS
    norm = r.NORM
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}.")
    if len(r.DEFORM_ON_PER_STAGE) != 4:
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 values (res2..res5), got {r.DEFORM_ON_PER_STAGE}.")
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}.")
    basic = depth < 50
    if basic:
        for key, value, required in (
            ("RES2_OUT_CHANNELS", r.RES2_OUT_CHANNELS, 64),
            ("RES5_DILATION", r.RES5_DILATION, 1),
            ("NUM_GROUPS", r.NUM_GROUPS, 1),
            ("DEFORM_ON_PER_STAGE", list(r.DEFORM_ON_PER_STAGE), [False] * 4),
        ):
            if value != required:
                raise ValueError(f"ResNet-{depth} (BasicBlock) needs MODEL.RESNETS.{key} = {required}, got {value}.")

    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=norm)
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for stage_index, num_blocks in zip(range(2, 6), _BLOCKS_PER_STAGE[depth]):
        dilation = r.RES5_DILATION if stage_index == 5 else 1
        # res2 follows the stem's max pool; a dilated res5 keeps the resolution of res4.
        first_stride = 1 if stage_index == 2 or dilation == 2 else 2
        kwargs = dict(
            num_blocks=num_blocks,
            in_channels=in_channels,
            out_channels=out_channels,
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            norm=norm,
        )
        if basic:
            block_class = BasicBlock
        elif r.DEFORM_ON_PER_STAGE[stage_index - 2]:
            block_class = DeformBottleneckBlock
            kwargs.update(deform_modulated=r.DEFORM_MODULATED, deform_num_groups=r.DEFORM_NUM_GROUPS)
        else:
            block_class = BottleneckBlock
        if not basic:
            kwargs.update(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=r.STRIDE_IN_1X1,
                dilation=dilation,
                num_groups=r.NUM_GROUPS,
            )
        stages.append(ResNet.make_stage(block_class, **kwargs))
        in_channels, out_channels, bottleneck_channels = out_channels, out_channels * 2, bottleneck_channels * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)

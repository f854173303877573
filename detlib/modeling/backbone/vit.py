"""
Plain Vision Transformer backbone of ViTDet (Li et al. 2022, "Exploring Plain Vision Transformer Backbones
for Object Detection"), its `SimpleFeaturePyramid`, and the layer-wise learning-rate decay of its recipe.

Module and parameter names are Detectron2's, so its ViTDet checkpoints (and MAE-pretrained weights
converted for it) load unchanged.
"""

import math
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from detlib.layers import CNNBlockBase, Conv2d, DropPath, Mlp, ShapeSpec, get_norm
from detlib.layers.weight_init import c2_msra_fill

from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .fpn import LastLevelMaxPool
from .utils import (
    PatchEmbed,
    add_decomposed_rel_pos,
    add_rel_pos_tables,
    get_abs_pos,
    init_transformer_weights,
    window_partition,
    window_unpartition,
)

__all__ = ["ViT", "SimpleFeaturePyramid", "build_vit_sfp_backbone", "get_vit_lr_decay_rate"]


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) token map, with optional decomposed relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            dim: channels in and out.
            num_heads: heads, each of dim // num_heads channels.
            qkv_bias: whether the query / key / value projection has a bias.
            use_rel_pos: add decomposed relative position bias (tables `rel_pos_h`, `rel_pos_w`).
            rel_pos_zero_init: start the tables at zero (else truncated normal, std 0.02).
            input_size: (H, W) of the token maps the tables are sized for; other sizes are interpolated.
        """
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("Attention with use_rel_pos=True needs input_size to size its tables")
            add_rel_pos_tables(self, (2 * input_size[0] - 1, 2 * input_size[1] - 1), head_dim, rel_pos_zero_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        # (B, HW, 3, heads, head_dim) -> 3 x (B, heads, HW, head_dim): 4-D, as ONNX export's attention needs
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.use_rel_pos:
            flat_q = q.flatten(0, 1)
            zeros = q.new_zeros(flat_q.shape[0], h * w, h * w)
            bias = add_decomposed_rel_pos(zeros, flat_q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            bias = bias.reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        # (B, heads, HW, head_dim) -> (B, H, W, heads * head_dim). An explicit copy, not reshape's own choice of
        # a view: the CPU kernel's output lays the heads out so that a view works, and torch.export would record
        # one, which the ONNX export's attention (laid out as its shape) cannot take.
        out = out.permute(0, 2, 1, 3).clone(memory_format=torch.contiguous_format).view(b, h, w, c)
        return self.proj(out)


class ResBottleneckBlock(CNNBlockBase):
    """
    1x1 -> 3x3 -> 1x1 convolutions (each normed, GELU between) added to the input, with no activation after:
    the "residual propagation" block ViTDet may insert after a transformer block. The last norm starts at
    zero, so the block starts as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        norm: str = "LN",
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ):
        super().__init__(in_channels, out_channels, 1)
        # Children in the order forward applies them.
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, bias=False)
        self.norm1 = get_norm(norm, bottleneck_channels)
        self.act1 = act_layer()
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, 3, padding=1, bias=False)
        self.norm2 = get_norm(norm, bottleneck_channels)
        self.act2 = act_layer()
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.norm3 = get_norm(norm, out_channels)
        for conv in (self.conv1, self.conv2, self.conv3):
            c2_msra_fill(conv)
        for norm_layer in (self.norm1, self.norm2, self.norm3):
            nn.init.ones_(norm_layer.weight)
            nn.init.zeros_(norm_layer.bias)
        nn.init.zeros_(self.norm3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.children():
            out = layer(out)
        return x + out


class Block(nn.Module):
    """Pre-norm transformer block: attention (global, or within windows) and an MLP, each residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        use_residual_block: bool = False,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            window_size: attend within non-overlapping windows of this side; 0 for global attention.
            use_residual_block: follow the block with a `ResBottleneckBlock` (bottleneck of dim // 2).
            input_size: (H, W) of the token map, for the relative position tables of global attention.
            Others: see `ViT`.
        """
        super().__init__()
        # Window attention sizes its relative position tables for a window, global attention for the whole map.
        attn_size = (window_size, window_size) if window_size else input_size
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, rel_pos_zero_init, attn_size)
        self.norm1 = norm_layer(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.window_size = window_size
        self.use_residual_block = use_residual_block
        if use_residual_block:
            self.residual = ResBottleneckBlock(dim, dim, dim // 2, norm="LN", act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        y = self.norm1(x)
        if self.window_size > 0:
            hw = (y.shape[1], y.shape[2])
            windows, pad_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(windows), self.window_size, pad_hw, hw)
        else:
            y = self.attn(y)
        x = x + self.drop_path(y)
        out = x + self.drop_path(self.mlp(self.norm2(x)))
        if not self.use_residual_block:
            return out
        # The residual block is convolutional: through NCHW and back.
        return self.residual(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ViT(Backbone):
    """
    ViTDet's backbone: a plain, single-scale ViT whose blocks attend within windows except the
    `window_block_indexes`-complement (global blocks), with absolute position embeddings of the pretraining
    grid resized to the input. Output: one map `out_feature` of stride `patch_size`.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        residual_block_indexes: Sequence[int] = (),
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_feature: str = "last_feat",
    ):
        """
        Args:
            img_size: input size the relative position tables of global blocks are sized for.
            patch_size: side of a patch, the stride of the output.
            in_chans: image channels.
            embed_dim: token channels.
            depth: number of blocks.
            num_heads: attention heads per block.
            mlp_ratio: hidden width of the MLPs over embed_dim.
            qkv_bias: whether query / key / value projections have a bias.
            drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
            norm_layer: norm over channels (called with embed_dim).
            act_layer: activation of the MLPs.
            use_abs_pos: add absolute position embeddings (`pos_embed`).
            use_rel_pos: add decomposed relative position bias in attention.
            rel_pos_zero_init: start the relative position tables at zero.
            window_size: window side of the window-attention blocks.
            window_block_indexes: blocks that attend within windows; the others attend globally.
            residual_block_indexes: blocks followed by a convolutional residual block.
            use_act_checkpoint: in training, recompute each block's activations in backward instead of storing them.
            pretrain_img_size: image size of pretraining, which sized `pos_embed`.
            pretrain_use_cls_token: `pos_embed` has a leading class-token entry (ignored here).
            out_feature: name of the output map.
        """
        super().__init__()
        self.pretrain_use_cls_token, self.use_act_checkpoint = pretrain_use_cls_token, use_act_checkpoint
        patch = (patch_size, patch_size)
        self.patch_embed = PatchEmbed(kernel_size=patch, stride=patch, in_chans=in_chans, embed_dim=embed_dim)
        if use_abs_pos:
            positions = (pretrain_img_size // patch_size) ** 2 + int(pretrain_use_cls_token)
            self.pos_embed = nn.Parameter(torch.zeros(1, positions, embed_dim))
        else:
            self.pos_embed = None

        drop_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        grid = (img_size // patch_size, img_size // patch_size)
        self.blocks = nn.ModuleList(
            Block(
                act_layer=act_layer,
                dim=embed_dim,
                drop_path=drop_rates[i],
                input_size=grid,
                mlp_ratio=mlp_ratio,
                norm_layer=norm_layer,
                num_heads=num_heads,
                qkv_bias=qkv_bias,
                rel_pos_zero_init=rel_pos_zero_init,
                use_rel_pos=use_rel_pos,
                use_residual_block=i in residual_block_indexes,
                window_size=window_size if i in window_block_indexes else 0,
            )
            for i in range(depth)
        )
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (N, C, H, W) -> {out_feature: (N, embed_dim, H // patch_size, W // patch_size)}."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        for block in self.blocks:
            if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


class SimpleFeaturePyramid(Backbone):
    """
    ViTDet's pyramid from one map: each level rescales the input map by one of `scale_factors` (transposed
    convolutions up, max pooling down), then a 1x1 and a 3x3 convolution (both normed) to `out_channels`.
    Levels are named "p<k>" for stride 2**k (modules `simfp_<k>`), then those of the optional top block.
    """

    def __init__(
        self,
        net: Backbone,
        in_feature: str,
        out_channels: int,
        scale_factors: Sequence[float],
        top_block: Optional[nn.Module] = None,
        norm: str = "LN",
        square_pad: int = 0,
    ):
        """
        Args:
            net: backbone giving `in_feature`.
            in_feature: the map the pyramid is built from.
            out_channels: channels of every level.
            scale_factors: one per level, each 4, 2, 1 or 0.5, so that strides double from level to level.
            top_block: e.g. `LastLevelMaxPool`; called on its `in_feature` (a level or a `net` output),
                adding `num_levels` coarser levels.
            norm: norm of the convolutions (see `get_norm`); "" for none, in which case they have biases.
            square_pad: if > 0, inputs are padded to this square size (`padding_constraints`).
        """
        super().__init__()
        if not isinstance(net, Backbone):
            raise TypeError(f"SimpleFeaturePyramid needs a Backbone as net, got {type(net).__name__}")
        input_shape = net.output_shape()[in_feature]
        strides = [int(input_shape.stride / scale) for scale in scale_factors]
        for finer, coarser in zip(strides[:-1], strides[1:]):
            if coarser != 2 * finer:
                raise ValueError(f"SimpleFeaturePyramid strides must double from level to level, got {strides}")
        dim = input_shape.channels
        self.scale_factors = tuple(scale_factors)
        self.stages = []
        for scale, stride in zip(scale_factors, strides):
            layers, width = _rescale_layers(scale, dim, norm)
            layers += [_normed_conv(width, out_channels, 1, norm), _normed_conv(out_channels, out_channels, 3, norm)]
            stage = nn.Sequential(*layers)
            self.add_module(f"simfp_{int(math.log2(stride))}", stage)
            self.stages.append(stage)

        self.net = net
        self.in_feature = in_feature
        self.top_block = top_block
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            source = top_block.in_feature
            if source not in self._out_feature_strides and source not in net.output_shape():
                raise ValueError(
                    f"SimpleFeaturePyramid: the top block reads '{source}', which is neither a level "
                    f"{list(self._out_feature_strides)} nor an output of net {list(net.output_shape())}"
                )
            last = int(math.log2(strides[-1]))
            for level in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{level}"] = 2**level
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad

    @property
    def padding_constraints(self) -> Dict[str, int]:
        # Spelled "size_divisiblity" as in Detectron2, where `ImageList` does not read it: inputs are padded only to
        # `square_size` (ViTDet's configs pad to 1024 squares), and detections stay those of Detectron2.
        return {"size_divisiblity": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (N, C, H, W) -> {"p2": ..., "p6": ...}, each (N, out_channels, H / stride, W / stride), finest first."""
        bottom_up = self.net(x)
        features = bottom_up[self.in_feature]
        results = [stage(features) for stage in self.stages]
        if self.top_block is not None:
            source = self.top_block.in_feature
            top_input = bottom_up[source] if source in bottom_up else results[self._out_features.index(source)]
            results.extend(self.top_block(top_input))
        return dict(zip(self._out_features, results))


def _normed_conv(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> Conv2d:
    """A same-size convolution followed by `norm`; biased only without a norm."""
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
    )


def _rescale_layers(scale: float, dim: int, norm: str) -> Tuple[list, int]:
    """The layers that bring a `dim`-channel map to `scale` times its resolution, and their output channels."""
    if scale == 4.0:
        # Two stride-2 transposed convolutions, halving channels each time, normed and GELU between.
        return [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            get_norm(norm, dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        ], dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    if scale == 0.5:
        return [nn.MaxPool2d(kernel_size=2, stride=2)], dim
    raise ValueError(f"SimpleFeaturePyramid scale factor {scale} is not supported (4, 2, 1 or 0.5)")


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """
    Learning-rate multiplier of parameter `name` under layer-wise decay: lr_decay_rate ** (num_layers + 1 - layer),
    where the patch and position embeddings of the backbone are layer 0, block i is layer i + 1 (its residual
    conv block excepted), and everything else (the rest of the backbone, the heads) is layer num_layers + 1.
    """
    layer = num_layers + 1
    if name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer = 0
        elif ".blocks." in name and ".residual." not in name:
            layer = int(name.split(".blocks.", 1)[1].split(".", 1)[0]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer)


def build_simple_feature_pyramid(cfg, net: Backbone, in_feature: str) -> SimpleFeaturePyramid:
    """`SimpleFeaturePyramid` over `net`'s `in_feature` from `cfg.MODEL.SFP`, MODEL.FPN.OUT_CHANNELS wide, with one
    more level max-pooled from its coarsest (p6 for ViTDet's p2-p5)."""
    scale_factors = tuple(cfg.MODEL.SFP.SCALE_FACTORS)
    coarsest_stride = net.output_shape()[in_feature].stride / min(scale_factors)
    return SimpleFeaturePyramid(
        net=net,
        in_feature=in_feature,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=scale_factors,
        top_block=LastLevelMaxPool(in_feature=f"p{int(math.log2(coarsest_stride))}"),
        norm=cfg.MODEL.SFP.NORM,
        square_pad=cfg.MODEL.SFP.SQUARE_PAD,
    )


@BACKBONE_REGISTRY.register()
def build_vit_sfp_backbone(cfg, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """ViTDet's backbone from YAML: a `ViT` from `cfg.MODEL.VIT` under the simple pyramid of `cfg.MODEL.SFP`."""
    vit = cfg.MODEL.VIT
    net = ViT(
        img_size=vit.IMG_SIZE,
        patch_size=vit.PATCH_SIZE,
        in_chans=input_shape.channels,
        embed_dim=vit.EMBED_DIM,
        depth=vit.DEPTH,
        num_heads=vit.NUM_HEADS,
        mlp_ratio=vit.MLP_RATIO,
        qkv_bias=vit.QKV_BIAS,
        drop_path_rate=vit.DROP_PATH_RATE,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_abs_pos=vit.USE_ABS_POS,
        use_rel_pos=vit.USE_REL_POS,
        window_size=vit.WINDOW_SIZE,
        window_block_indexes=tuple(vit.WINDOW_BLOCK_INDEXES),
        residual_block_indexes=tuple(vit.RESIDUAL_BLOCK_INDEXES),
        use_act_checkpoint=vit.USE_ACT_CHECKPOINT,
        pretrain_img_size=vit.PRETRAIN_IMG_SIZE,
        pretrain_use_cls_token=vit.PRETRAIN_USE_CLS_TOKEN,
    )
    return build_simple_feature_pyramid(cfg, net, net._out_features[0])

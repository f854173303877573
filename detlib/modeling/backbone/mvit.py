"""
MViTv2 backbone (Li et al. 2022, "MViTv2: Improved Multiscale Vision Transformers for Classification and
Detection"): pooling attention (queries, keys and values pooled by strided depthwise convolutions), residual
pooling, decomposed relative position bias, and window attention in the first stage. Module and parameter
names are Detectron2's, so its MViTv2 checkpoints load unchanged.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from detlib.layers import DropPath, Mlp

from .backbone import Backbone
from .utils import (
    PatchEmbed,
    add_decomposed_rel_pos,
    get_abs_pos,
    init_transformer_weights,
    window_partition,
    window_unpartition,
)

__all__ = ["MViT"]


def attention_pool(x: torch.Tensor, pool: nn.Module, norm: Optional[nn.Module] = None) -> torch.Tensor:
    """Apply a spatial `pool` (an NCHW module) to a (B, H, W, C) map, then the optional channel `norm`."""
    x = pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return norm(x) if norm is not None else x


def _depthwise_pool(channels: int, kernel: Tuple[int, int], stride: int) -> nn.Conv2d:
    return nn.Conv2d(
        channels, channels, kernel, stride=stride, padding=[k // 2 for k in kernel], groups=channels, bias=False
    )


class MultiScaleAttention(nn.Module):
    """
    Pooling attention on a (B, H, W, C) map: queries pooled with stride `stride_q` (the output resolution),
    keys and values with `stride_kv`; each head attends (within windows, if `window_size`) and, with residual
    pooling, adds its pooled queries to its output.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        qkv_bias: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        pool_kernel: Tuple[int, int] = (3, 3),
        stride_q: int = 1,
        stride_kv: int = 1,
        residual_pooling: bool = True,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            dim, dim_out: channels in and out.
            num_heads: heads, each of dim_out // num_heads channels.
            pool_kernel: kernel of the pooling convolutions.
            stride_q, stride_kv: strides of query and key / value pooling.
            residual_pooling: add the pooled queries to the attention output.
            window_size: attend within windows of this side (at the input resolution); 0 for global.
            use_rel_pos: add decomposed relative position bias.
            rel_pos_zero_init: start the relative position tables at zero.
            input_size: (H, W) of the input map, square; sizes the relative position tables.
        """
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.pool_q = _depthwise_pool(head_dim, pool_kernel, stride_q)
        self.norm_q = norm_layer(head_dim)
        for name in ("k", "v"):
            self.add_module(f"pool_{name}", _depthwise_pool(head_dim, pool_kernel, stride_kv))
            self.add_module(f"norm_{name}", norm_layer(head_dim))
        self.window_size, self.residual_pooling, self.use_rel_pos = window_size, residual_pooling, use_rel_pos
        if window_size:
            # Window sides at the pooled resolutions of the queries and of the keys / values.
            self.q_win_size, self.kv_win_size = window_size // stride_q, window_size // stride_kv
        if use_rel_pos:
            if input_size is None or input_size[0] != input_size[1]:
                raise ValueError(f"MViT relative positions need a square input_size, got {input_size}")
            size = input_size[0]
            length = 2 * max(size // stride_q, size // stride_kv) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(length, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(length, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H / stride_q, W / stride_q, dim_out)."""
        b, h, w, _ = x.shape
        # (B, H, W, 3, heads, head_dim) -> 3 x (B * heads, H, W, head_dim)
        qkv = self.qkv(x).reshape(b, h, w, 3, self.num_heads, -1).permute(3, 0, 4, 1, 2, 5)
        pools = ((self.pool_q, self.norm_q), (self.pool_k, self.norm_k), (self.pool_v, self.norm_v))
        q, k, v = (
            attention_pool(t, pool, norm)
            for t, (pool, norm) in zip(qkv.reshape(3, b * self.num_heads, h, w, -1), pools)
        )

        pooled_q = q
        q_map_hw = (q.shape[1], q.shape[2])
        if self.window_size:
            q, q_pad_hw = window_partition(q, self.q_win_size)
            k, _ = window_partition(k, self.kv_win_size)
            v, _ = window_partition(v, self.kv_win_size)
            q_hw, kv_hw = (self.q_win_size,) * 2, (self.kv_win_size,) * 2
        else:
            q_hw, kv_hw = q_map_hw, (k.shape[1], k.shape[2])
        q = q.reshape(q.shape[0], q_hw[0] * q_hw[1], -1)
        k = k.reshape(k.shape[0], kv_hw[0] * kv_hw[1], -1)
        v = v.reshape(v.shape[0], kv_hw[0] * kv_hw[1], -1)

        bias = None
        if self.use_rel_pos:
            zeros = q.new_zeros(q.shape[0], q.shape[1], k.shape[1])
            bias = add_decomposed_rel_pos(zeros, q, self.rel_pos_h, self.rel_pos_w, q_hw, kv_hw)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.reshape(out.shape[0], q_hw[0], q_hw[1], -1)
        if self.window_size:
            out = window_unpartition(out, self.q_win_size, q_pad_hw, q_map_hw)
        if self.residual_pooling:
            out = out + pooled_q
        # (B * heads, H', W', head_dim) -> (B, H', W', heads * head_dim)
        h, w = out.shape[1], out.shape[2]
        out = out.reshape(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """
    Pre-norm block of pooling attention and an MLP. Where the width changes the shortcut is a linear
    projection `proj` of the normed input; where queries are strided it is max-pooled (`pool_skip`) to match.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        qkv_pool_kernel: Tuple[int, int] = (3, 3),
        stride_q: int = 1,
        stride_kv: int = 1,
        residual_pooling: bool = True,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        """See `MultiScaleAttention` and `MViT` for the arguments."""
        super().__init__()
        self.mlp = Mlp(dim_out, hidden_features=int(dim_out * mlp_ratio), out_features=dim_out, act_layer=act_layer)
        self.norm2 = norm_layer(dim_out)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(
            dim,
            dim_out,
            input_size=input_size,
            norm_layer=norm_layer,
            num_heads=num_heads,
            pool_kernel=qkv_pool_kernel,
            qkv_bias=qkv_bias,
            rel_pos_zero_init=rel_pos_zero_init,
            residual_pooling=residual_pooling,
            stride_kv=stride_kv,
            stride_q=stride_q,
            use_rel_pos=use_rel_pos,
            window_size=window_size,
        )
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        if stride_q > 1:
            kernel = stride_q + 1
            self.pool_skip = nn.MaxPool2d(kernel, stride_q, kernel // 2, ceil_mode=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H / stride_q, W / stride_q, dim_out)."""
        x_norm = self.norm1(x)
        attended = self.attn(x_norm)
        if hasattr(self, "proj"):
            x = self.proj(x_norm)
        if hasattr(self, "pool_skip"):
            x = attention_pool(x, self.pool_skip)
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MViT(Backbone):
    """
    MViTv2 for detection: a strided patch embedding, then four stages whose last blocks are given by
    `last_block_indexes`. The first block of each later stage halves the resolution (query stride 2) and the
    last block of each stage doubles the width and heads. Stage 2 uses window attention, the last blocks of
    stages 3-5 attend globally. Outputs "scale2".."scale5" (strides 4-32 for a stride-4 patch embedding),
    each after its own norm `scale<k>_norm`.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_kernel: Tuple[int, int] = (7, 7),
        patch_stride: Tuple[int, int] = (4, 4),
        patch_padding: Tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 96,
        depth: int = 16,
        num_heads: int = 1,
        last_block_indexes: Sequence[int] = (0, 2, 11, 15),
        qkv_pool_kernel: Tuple[int, int] = (3, 3),
        adaptive_kv_stride: int = 4,
        adaptive_window_size: int = 56,
        residual_pooling: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = False,
        use_rel_pos: bool = True,
        rel_pos_zero_init: bool = True,
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"),
    ):
        """
        Args:
            img_size: input size the relative position tables are sized for.
            patch_kernel, patch_stride, patch_padding: of the patch-embedding convolution.
            in_chans: image channels.
            embed_dim: channels of the first stage.
            depth: number of blocks.
            num_heads: heads of the first stage (doubling with each stage).
            last_block_indexes: index of the last block of each of the four stages.
            qkv_pool_kernel: kernel of the query / key / value pooling.
            adaptive_kv_stride: key / value pooling stride in the first stage (halving with each stage, at least 1).
            adaptive_window_size: window side in the first stage (halving with each stage).
            residual_pooling: add pooled queries to the attention output.
            mlp_ratio: MLP hidden width over the block width.
            qkv_bias: whether query / key / value projections have a bias.
            drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
            norm_layer: norm over channels.
            act_layer: activation of the MLPs.
            use_abs_pos: add absolute position embeddings (`pos_embed`, resized to the input).
            use_rel_pos: add decomposed relative position bias in attention.
            rel_pos_zero_init: start the relative position tables at zero.
            use_act_checkpoint: in training, recompute block activations in backward instead of storing them.
            pretrain_img_size: image size of pretraining, which sized `pos_embed`.
            pretrain_use_cls_token: `pos_embed` has a leading class-token entry (ignored here).
            out_features: which of "scale2".."scale5" to return.
        """
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_embed = PatchEmbed(
            kernel_size=patch_kernel, stride=patch_stride, padding=patch_padding, in_chans=in_chans, embed_dim=embed_dim
        )
        if use_abs_pos:
            grid = (pretrain_img_size // patch_stride[0]) * (pretrain_img_size // patch_stride[1])
            self.pos_embed = nn.Parameter(torch.zeros(1, grid + int(pretrain_use_cls_token), embed_dim))
        else:
            self.pos_embed = None

        last = list(last_block_indexes)
        drop_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        dim, dim_out = embed_dim, embed_dim
        kv_stride, window_size = adaptive_kv_stride, adaptive_window_size
        input_size = (img_size // patch_stride[0], img_size // patch_stride[1])
        stage, stride = 2, patch_stride[0]
        self._out_feature_strides: Dict[str, int] = {}
        self._out_feature_channels: Dict[str, int] = {}
        self.blocks = nn.ModuleList()
        for i in range(depth):
            starts_stage = i - 1 in last  # its queries are pooled with stride 2
            block = MultiScaleBlock(
                act_layer=act_layer,
                dim=dim,
                dim_out=dim_out,
                drop_path=drop_rates[i],
                input_size=input_size,
                mlp_ratio=mlp_ratio,
                norm_layer=norm_layer,
                num_heads=num_heads,
                qkv_bias=qkv_bias,
                qkv_pool_kernel=qkv_pool_kernel,
                rel_pos_zero_init=rel_pos_zero_init,
                residual_pooling=residual_pooling,
                # The last blocks of stages 3 and 4 pool keys and values twice as much: the next block's
                # queries come at half the resolution.
                stride_kv=2 * kv_stride if i in last[1:3] else kv_stride,
                stride_q=2 if starts_stage else 1,
                use_rel_pos=use_rel_pos,
                # Global attention in the last block of stages 3-5; windows everywhere else.
                window_size=0 if i in last[1:] else window_size,
            )
            self.blocks.append(block)
            dim = dim_out
            if starts_stage:
                window_size //= 2
                input_size = (input_size[0] // 2, input_size[1] // 2)
            if i in last:
                name = f"scale{stage}"
                if name in out_features:
                    self.add_module(f"{name}_norm", norm_layer(dim_out))
                    self._out_feature_channels[name], self._out_feature_strides[name] = dim_out, stride
                stage, stride, dim_out, num_heads = stage + 1, 2 * stride, 2 * dim_out, 2 * num_heads
                kv_stride = max(kv_stride // 2, 1)

        self._out_features = list(out_features)
        self._last_block_indexes = tuple(last)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (N, C, H, W) -> {"scale<k>": (N, channels, H / stride, W / stride)} for each of `out_features`."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        outputs = {}
        stage = 2
        for i, block in enumerate(self.blocks):
            if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in self._last_block_indexes:
                name = f"scale{stage}"
                if name in self._out_features:
                    outputs[name] = getattr(self, f"{name}_norm")(x).permute(0, 3, 1, 2)
                stage += 1
        return outputs

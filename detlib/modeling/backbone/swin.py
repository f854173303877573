"""
Swin Transformer backbone (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows"):
attention within local windows that shift by half a window every other block, and patch merging between
stages. Module and parameter names are those of the official detection code and Detectron2, so their
checkpoints (ImageNet-22k pretrained Swin-B / L included) load unchanged.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from detlib.layers import DropPath, Mlp

from .backbone import Backbone
from .utils import init_transformer_weights, window_partition, window_unpartition

__all__ = ["SwinTransformer"]

# Logit added between tokens of a shifted window that come from different regions of the image, which
# the cyclic shift brought together: their attention weight becomes negligible.
_MASKED = -100.0


def _relative_position_index(window_size: Tuple[int, int]) -> torch.Tensor:
    """(Wh * Ww, Wh * Ww) index into a table of (2 Wh - 1) * (2 Ww - 1) offsets, for every pair of window positions."""
    wh, ww = window_size
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (wh - 1)
    dx = xs[:, None] - xs[None, :] + (ww - 1)
    return dy * (2 * ww - 1) + dx


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a learned bias per head and relative offset."""

    def __init__(
        self,
        dim: int,
        window_size: Tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        offsets = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(offsets, num_heads))
        # Persistent: Swin checkpoints carry it.
        self.register_buffer("relative_position_index", _relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B * num_windows, N, C) tokens of each window, N = Wh * Ww.
            mask: (num_windows, N, N) additive logits (0 or `_MASKED`), or None.
        """
        windows, n, c = x.shape
        q, k, v = self.qkv(x).reshape(windows, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B * nW, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]
        logits = logits + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            logits = logits.reshape(-1, num_windows, self.num_heads, n, n) + mask[None, :, None]
            logits = logits.reshape(windows, self.num_heads, n, n)
        weights = self.attn_drop(logits.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(windows, n, c)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: (shifted) window attention and an MLP, each residual, on (B, H * W, C) tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"Swin shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.dim, self.num_heads = dim, num_heads
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(
            dim, (window_size, window_size), num_heads, qkv_bias, qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, H * W, C).
            hw: (H, W).
            mask: the `_shift_mask` of the padded map, used when this block shifts.
        """
        b, _, c = x.shape
        h, w = hw
        y = self.norm1(x).reshape(b, h, w, c)
        # Windows tile the map padded (bottom / right) to multiples of the window size; padding before the
        # shift, so that padded tokens wrap around as in the reference implementation.
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
        if self.shift_size:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows, _ = window_partition(y, ws)
        windows = self.attn(windows.reshape(-1, ws * ws, c), mask=mask if self.shift_size else None)
        y = window_unpartition(windows.reshape(-1, ws, ws, c), ws, (hp, wp), (hp, wp))
        if self.shift_size:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        y = y[:, :h, :w].reshape(b, h * w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the resolution: concatenate each 2x2 neighbourhood's tokens (4C), normalize, project to 2C."""

    def __init__(self, dim: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, H * W, C) -> (B, ceil(H / 2) * ceil(W / 2), 2C); odd sizes are zero-padded first."""
        b, _, c = x.shape
        x = F.pad(x.reshape(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        # Order of the four: (even row, even col), (odd, even), (even, odd), (odd, odd), as the weights expect.
        parts = [x[:, dy::2, dx::2] for dx in (0, 1) for dy in (0, 1)]
        x = torch.cat(parts, dim=-1).reshape(b, -1, 4 * c)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path=0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        downsample: Optional[Callable[..., nn.Module]] = None,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.window_size, self.shift_size = window_size, window_size // 2
        self.depth, self.use_checkpoint = depth, use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                attn_drop=attn_drop,
                dim=dim,
                drop=drop,
                drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                mlp_ratio=mlp_ratio,
                norm_layer=norm_layer,
                num_heads=num_heads,
                qk_scale=qk_scale,
                qkv_bias=qkv_bias,
                shift_size=self.shift_size if i % 2 else 0,
                window_size=window_size,
            )
            for i in range(depth)
        )
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample is not None else None

    def _shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """
        (num_windows, N, N) logits masking pairs of tokens of a shifted window that come from different regions:
        along each axis the padded map splits into [0, -window), [-window, -shift) and [-shift, end).
        """
        ws, shift = self.window_size, self.shift_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws

        def regions(size: int) -> torch.Tensor:
            ids = torch.zeros(size, device=device)
            ids[size - ws :] = 1
            ids[size - shift :] = 2
            return ids

        region = (3 * regions(hp)[:, None] + regions(wp)[None, :]).reshape(1, hp, wp, 1)
        region = window_partition(region, ws)[0].reshape(-1, ws * ws)
        different = region[:, None, :] != region[:, :, None]
        return torch.zeros(different.shape, device=device).masked_fill_(different, _MASKED)

    def forward(self, x: torch.Tensor, h: int, w: int):
        """
        (B, H * W, C) tokens -> (stage output, H, W, next stage's input, its H, its W); the last two equal
        the first when the stage does not downsample.
        """
        mask = self._shift_mask(h, w, x.device)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, (h, w), mask, use_reentrant=False)
            else:
                x = block(x, (h, w), mask)
        if self.downsample is None:
            return x, h, w, x, h, w
        return x, h, w, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Image to (B, embed_dim, H / patch, W / patch) patch features, input zero-padded to multiples of the patch."""

    def __init__(self, patch_size=4, in_chans: int = 3, embed_dim: int = 96, norm_layer=None):
        super().__init__()
        self.patch_size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.patch_size
        h, w = x.shape[-2:]
        x = self.proj(F.pad(x, (0, (pw - w % pw) % pw, 0, (ph - h % ph) % ph)))
        if self.norm is not None:
            # The norm acts on channels: through channels-last and back.
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinTransformer(Backbone):
    """
    Swin Transformer: patch embedding, then stages whose resolution halves and width doubles. Outputs "p<i>"
    for each stage i of `out_indices`: (N, embed_dim * 2**i, H / (patch * 2**i), W / (patch * 2**i)), each after
    its own norm `norm<i>`.
    """

    def __init__(
        self,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        use_checkpoint: bool = False,
    ):
        """
        Args:
            pretrain_img_size: image size of pretraining, which sizes the absolute position embedding.
            patch_size: side of a patch (the stride of stage 0).
            in_chans: image channels.
            embed_dim: channels of stage 0; stage i has embed_dim * 2**i.
            depths, num_heads: blocks and attention heads of each stage.
            window_size: side of the attention windows.
            mlp_ratio: MLP hidden width over the block width.
            qkv_bias: whether query / key / value projections have a bias.
            qk_scale: logit scale; head_dim ** -0.5 by default.
            drop_rate, attn_drop_rate: dropout after projections / on attention weights.
            drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
            norm_layer: norm over channels.
            ape: add an absolute position embedding (resized to the input).
            patch_norm: normalize the patch embedding.
            out_indices: stages whose outputs are returned.
            frozen_stages: -1 trains everything; 0 freezes the patch embedding, 1 also the position
                embedding, k >= 2 also stages 0 .. k - 2.
            use_checkpoint: in training, recompute block activations in backward instead of storing them.
        """
        super().__init__()
        self.pretrain_img_size, self.embed_dim, self.num_layers = pretrain_img_size, embed_dim, len(depths)
        self.ape, self.patch_norm = ape, patch_norm
        self.out_indices, self.frozen_stages = tuple(out_indices), frozen_stages
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer if patch_norm else None)
        if ape:
            grid_h = pretrain_img_size // self.patch_embed.patch_size[0]
            grid_w = pretrain_img_size // self.patch_embed.patch_size[1]
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid_h, grid_w))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        drop_rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            first = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    attn_drop=attn_drop_rate,
                    depth=depths[i],
                    dim=self.num_features[i],
                    downsample=PatchMerging if i < self.num_layers - 1 else None,
                    drop=drop_rate,
                    drop_path=drop_rates[first : first + depths[i]],
                    mlp_ratio=mlp_ratio,
                    norm_layer=norm_layer,
                    num_heads=num_heads[i],
                    qk_scale=qk_scale,
                    qkv_bias=qkv_bias,
                    use_checkpoint=use_checkpoint,
                    window_size=window_size,
                )
            )
        for i in self.out_indices:
            self.add_module(f"norm{i}", norm_layer(self.num_features[i]))

        self._freeze_stages()
        patch = self.patch_embed.patch_size[0]
        self._out_features = [f"p{i}" for i in self.out_indices]
        self._out_feature_channels = {f"p{i}": self.num_features[i] for i in self.out_indices}
        self._out_feature_strides = {f"p{i}": patch * 2**i for i in self.out_indices}
        self._size_divisibility = patch * 2 ** (self.num_layers - 1)
        self.apply(init_transformer_weights)

    def _freeze_stages(self) -> None:
        frozen: List[nn.Parameter] = []
        if self.frozen_stages >= 0:
            frozen += self.patch_embed.parameters()
        if self.frozen_stages >= 1 and self.ape:
            frozen.append(self.absolute_pos_embed)
        for layer in self.layers[: max(self.frozen_stages - 1, 0)]:
            frozen += layer.parameters()
        for param in frozen:
            param.requires_grad = False

    @property
    def size_divisibility(self) -> int:
        """The stride of the last stage: every patch merging then sees an even size."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))  # (B, H * W, C)
        outputs = {}
        for i, layer in enumerate(self.layers):
            out, out_h, out_w, x, h, w = layer(x, h, w)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outputs[f"p{i}"] = out.reshape(-1, out_h, out_w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
        return outputs

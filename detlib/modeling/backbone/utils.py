"""
Token-map helpers shared by the plain and multiscale vision transformers (ViT, MViT): window partitioning,
decomposed relative position bias, absolute position embeddings resized to the input, and patch embedding.

Token maps are channels-last throughout: (B, H, W, C).
"""

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = [
    "PatchEmbed",
    "add_decomposed_rel_pos",
    "add_rel_pos_tables",
    "get_abs_pos",
    "get_rel_pos",
    "init_transformer_weights",
    "window_partition",
    "window_unpartition",
]


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """
    Cut a (B, H, W, C) map into non-overlapping square windows, zero-padding H and W at the bottom / right
    up to multiples of `window_size`.

    Returns:
        (B * num_windows, window_size, window_size, C) windows, row-major within each image, and the
        padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    # Ceiling division on non-negative numbers: ONNX export turns a size's floor division into Div, which
    # truncates, so -(-h // window_size) would round the wrong way there.
    rows, cols = (h + window_size - 1) // window_size, (w + window_size - 1) // window_size
    hp, wp = rows * window_size, cols * window_size
    # Padded unconditionally (by zero rows when H divides): a branch on the size would make torch.export guard it.
    x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    x = x.reshape(b, rows, window_size, cols, window_size, c).transpose(2, 3)
    return x.reshape(b * rows * cols, window_size, window_size, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: Tuple[int, int], hw: Tuple[int, int]
) -> torch.Tensor:
    """
    Inverse of `window_partition`: (B * num_windows, window_size, window_size, C) windows of a map padded
    to `pad_hw` back to the (B, H, W, C) map of size `hw`.
    """
    (hp, wp), (h, w) = pad_hw, hw
    rows, cols = hp // window_size, wp // window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, rows, cols, window_size, window_size, c).transpose(2, 3).reshape(-1, hp, wp, c)
    # Cropped by negative padding, which copies, rather than sliced: torch.export records whether a slice is
    # contiguous, a guard that padding happened which would fix whether H and W are multiples of the window.
    return F.pad(x, (0, 0, 0, w - wp, 0, h - hp))


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """
    The embedding of each query-key offset along one axis.

    Args:
        q_size, k_size: number of query and key positions along the axis; the shorter of the two is
            stretched to the longer one's extent, so both span the same image region.
        rel_pos: (L, C) table, one row per offset; resized linearly to 2 * max(q_size, k_size) - 1
            rows when L differs (e.g. a model trained at another resolution).

    Returns:
        (q_size, k_size, C).
    """
    # Sizes may be symbolic (torch.export): a branch on one that is not known to hold takes the general path,
    # which gives the same result, instead of guarding (and so fixing) the size.
    length = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if not statically_known_true(rel_pos.shape[0] == length):
        table = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None]
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :]
    if statically_known_true(q_size == k_size):
        # Integer offsets, shifted to start at row 0 (the float steps below are 1 here).
        return table[q_coords - k_coords + (k_size - 1)]
    q_step, k_step = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    # Offsets run from -(k_size - 1) * k_step to (q_size - 1) * q_step; shifted to start at row 0.
    offsets = q_coords * q_step - k_coords * k_step + (k_size - 1) * k_step
    return table[offsets.long()]


def add_rel_pos_tables(module: nn.Module, lengths: Tuple[int, int], head_dim: int, zero_init: bool) -> None:
    """
    Register `rel_pos_h` and `rel_pos_w` on `module`: (length, head_dim) tables of the decomposed relative position
    bias for the two axes, at zero or truncated-normal (std 0.02).
    """
    for name, length in zip(("rel_pos_h", "rel_pos_w"), lengths):
        table = nn.Parameter(torch.zeros(length, head_dim))
        if not zero_init:
            nn.init.trunc_normal_(table, std=0.02)
        module.register_parameter(name, table)


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
) -> torch.Tensor:
    """
    Add MViTv2's decomposed relative position bias (Li et al. 2022) to attention logits: the bias between
    query (i, j) and key (k, l) is q . R_h[i - k] + q . R_w[j - l].

    Args:
        attn: (B, q_h * q_w, k_h * k_w) logits.
        q: (B, q_h * q_w, C) queries, unscaled.
        rel_pos_h, rel_pos_w: (L_h, C) and (L_w, C) offset tables (see `get_rel_pos`).
        q_size, k_size: (h, w) of the query and key maps.

    Returns:
        Logits of the shape of `attn`.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    table_h = get_rel_pos(q_h, k_h, rel_pos_h)  # (q_h, k_h, C)
    table_w = get_rel_pos(q_w, k_w, rel_pos_w)  # (q_w, k_w, C)
    q_map = q.reshape(q.shape[0], q_h, q_w, q.shape[-1])
    bias_h = torch.einsum("nyxc,ykc->nyxk", q_map, table_h)  # (B, q_h, q_w, k_h)
    bias_w = torch.einsum("nyxc,xlc->nyxl", q_map, table_w)  # (B, q_h, q_w, k_w)
    logits = attn.reshape(-1, q_h, q_w, k_h, k_w) + bias_h.unsqueeze(-1) + bias_w.unsqueeze(-2)
    return logits.reshape(-1, q_h * q_w, k_h * k_w)


def get_abs_pos(abs_pos: torch.Tensor, has_cls_token: bool, hw: Tuple[int, int]) -> torch.Tensor:
    """
    Absolute position embeddings of a square pretraining grid, resized (bicubic) to an (H, W) token map.

    Args:
        abs_pos: (1, num_positions, C), num_positions a square, plus one leading class-token entry when
            `has_cls_token` (dropped here).
        hw: (H, W) of the token map.

    Returns:
        (1, H, W, C).
    """
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    side = math.isqrt(abs_pos.shape[1])
    if side * side != abs_pos.shape[1]:
        raise ValueError(f"absolute position embeddings of {abs_pos.shape[1]} positions are not a square grid")
    grid = abs_pos.reshape(1, side, side, -1)
    # Only sizes known to be the grid's skip the resize: a symbolic one (torch.export) is resized, the identity
    # at the grid's size, rather than guarded.
    if statically_known_true(side == hw[0]) and statically_known_true(side == hw[1]):
        return grid
    resized = F.interpolate(grid.permute(0, 3, 1, 2), size=tuple(hw), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) to a channels-last token map (B, H', W', embed_dim) by one strided convolution `proj`."""

    def __init__(
        self,
        kernel_size: Tuple[int, int] = (16, 16),
        stride: Tuple[int, int] = (16, 16),
        padding: Tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def init_transformer_weights(module: nn.Module) -> None:
    """For `Module.apply`: truncated-normal (std 0.02) linear weights with zero bias, LayerNorms at the identity."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

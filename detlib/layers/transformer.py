"""Pieces of the transformer blocks that ViT, Swin and MViT share: the two-layer `Mlp` and `DropPath`."""

from typing import Callable, Optional

import torch
import torch.nn as nn

__all__ = ["DropPath", "Mlp"]


class Mlp(nn.Module):
    """
    `fc2(drop(act(fc1(x))))`, then dropout: the feed-forward half of a transformer block, on the last dim.

    Parameter names (`fc1`, `fc2`) are those of timm's `Mlp`, which Detectron2's backbones use.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """
    Stochastic depth (Huang et al. 2016): in training, zeroes a residual branch for a random `drop_prob`
    fraction of the samples and scales the others by 1 / (1 - drop_prob), so its expectation is unchanged.
    The identity in evaluation.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        # One draw per sample, broadcast over every other dim.
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"

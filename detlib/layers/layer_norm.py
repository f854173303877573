"""`LayerNorm` over the channels of an NCHW map: the "LN" norm of `get_norm`, as ConvNeXt and ViTDet use it."""

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LayerNorm"]


class LayerNorm(nn.Module):
    """
    Normalizes each pixel of an (N, C, H, W) map over its C channels, then scales and shifts per channel.

    Parameters are `weight` and `bias` of shape (C,), as in Detectron2's `LayerNorm`, so its checkpoints load.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels last for F.layer_norm, which normalizes the trailing dimension; back to NCHW after.
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}"

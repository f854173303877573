"""`CNNBlockBase`: the building block of a CNN backbone, which knows its channels and stride and can freeze itself."""

import torch.nn as nn

from .batch_norm import FrozenBatchNorm2d

__all__ = ["CNNBlockBase"]


class CNNBlockBase(nn.Module):
    """
    A block with `in_channels`, `out_channels` and `stride` (its output is `stride` times smaller than its input).

    Subclasses build their layers in `__init__` and define `forward`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "CNNBlockBase":
        """
        Stop training this block: no parameter takes gradients, and batch norms become `FrozenBatchNorm2d`
        (so their statistics stop updating too, even in training mode).
        """
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self

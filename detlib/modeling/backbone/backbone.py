"""`Backbone`: the interface every feature extractor of a detector implements."""

from abc import ABCMeta, abstractmethod
from typing import Dict

import torch
import torch.nn as nn

from detlib.layers import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """
    A network mapping an image batch (N, C, H, W) to named feature maps, e.g. {"p2": ..., "p6": ...}.

    Subclasses set `_out_features` (names, in output order), `_out_feature_channels` and
    `_out_feature_strides` (dicts keyed by name), from which `output_shape()` is derived.
    """

    def __init__(self):
        super().__init__()

    @abstractmethod
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Return a dict from feature name to tensor of shape (N, channels, H / stride, W / stride)."""

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (0: no constraint); `ImageList` pads to it."""
        return 0

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """
        Extra padding requirements, e.g. {"size_divisiblity": 32, "square_size": 1024}; empty by default.

        The keys are spelled as Detectron2 spells them, including "size_divisiblity".
        """
        return {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Channels and stride of each output feature, keyed by feature name."""
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

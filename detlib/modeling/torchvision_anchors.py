"""The anchors of torchvision's detection models, for running their converted weights in detlib."""

from typing import Sequence

import torch

from detlib.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator

__all__ = ["TorchvisionAnchorGenerator"]


@ANCHOR_GENERATOR_REGISTRY.register()
class TorchvisionAnchorGenerator(DefaultAnchorGenerator):
    """
    `DefaultAnchorGenerator` with each cell anchor's coordinates rounded to whole pixels, as
    torchvision's `AnchorGenerator` makes them. A model whose RPN was trained on such anchors
    regresses its deltas from them, so its converted weights need them to give the same proposals.
    """

    @staticmethod
    def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
        return DefaultAnchorGenerator.generate_cell_anchors(sizes, aspect_ratios).round()

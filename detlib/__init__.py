"""detlib: a two-stage object detection research codebase (Faster / Mask R-CNN on ResNet + FPN)."""

__version__ = "0.1.0"

"""A small transform API: deterministic `Transform`s and the random `Augmentation`s that make them."""

from .augmentation import AugInput, Augmentation, AugmentationList, apply_augmentations
from .augmentation_impl import RandomCrop, RandomFlip, Resize, ResizeShortestEdge
from .transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [
    "AugInput",
    "Augmentation",
    "AugmentationList",
    "apply_augmentations",
    "RandomCrop",
    "RandomFlip",
    "Resize",
    "ResizeShortestEdge",
    "CropTransform",
    "HFlipTransform",
    "NoOpTransform",
    "ResizeTransform",
    "Transform",
    "TransformList",
    "VFlipTransform",
]

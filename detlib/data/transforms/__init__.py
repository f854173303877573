"""A small transform API: deterministic `Transform`s and the random `Augmentation`s that make them."""

from .augmentation import AugInput, Augmentation, AugmentationList, apply_augmentations
from .augmentation_impl import FixedSizeCrop, RandomCrop, RandomFlip, Resize, ResizeScale, ResizeShortestEdge
from .transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
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
    "FixedSizeCrop",
    "RandomCrop",
    "RandomFlip",
    "Resize",
    "ResizeScale",
    "ResizeShortestEdge",
    "CropTransform",
    "HFlipTransform",
    "NoOpTransform",
    "PadTransform",
    "ResizeTransform",
    "Transform",
    "TransformList",
    "VFlipTransform",
]

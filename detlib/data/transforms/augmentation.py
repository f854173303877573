"""
Augmentations: random policies that look at their input and produce a deterministic `Transform`.

An `Augmentation` names the inputs it needs in `input_args` (attributes of `AugInput`, e.g.
"image", "boxes"); calling it on an `AugInput` samples a transform, applies it to the input in place
and returns it, so the caller can apply the same transform to anything else (polygons, masks).
Randomness comes from numpy's global generator, which the data loader seeds per worker.
"""

from typing import Any, List, Optional, Sequence

import numpy as np

from .transform import Transform, TransformList

__all__ = ["Augmentation", "AugmentationList", "AugInput", "apply_augmentations"]


class AugInput:
    """
    What augmentations see and change: an image (H x W x C or H x W numpy array) and optionally
    N x 4 XYXY `boxes` and an H x W `sem_seg` map.
    """

    def __init__(self, image: np.ndarray, *, boxes: Optional[np.ndarray] = None, sem_seg: Optional[np.ndarray] = None):
        if image.ndim not in (2, 3):
            raise ValueError(f"AugInput needs an H x W or H x W x C image, got shape {image.shape}.")
        self.image = image
        self.boxes = boxes
        self.sem_seg = sem_seg

    def transform(self, tfm: Transform) -> None:
        """Applies `tfm` to every field in place."""
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)

    def apply_augmentations(self, augmentations: Sequence["Augmentation"]) -> TransformList:
        return AugmentationList(augmentations)(self)


class Augmentation:
    """Base class: subclasses implement `get_transform(*inputs)`, inputs named by `input_args`."""

    input_args: Sequence[str] = ("image",)

    def get_transform(self, *args: Any) -> Transform:
        raise NotImplementedError

    def __call__(self, aug_input: AugInput) -> Transform:
        args = [getattr(aug_input, name) for name in self.input_args]
        tfm = self.get_transform(*args)
        if not isinstance(tfm, Transform):
            raise TypeError(f"{type(self).__name__}.get_transform must return a Transform, got {type(tfm)}.")
        aug_input.transform(tfm)
        return tfm

    @staticmethod
    def _rand_range(low: float = 0.0, high: float = 1.0) -> float:
        return float(np.random.uniform(low, high))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class AugmentationList(Augmentation):
    """Augmentations applied in sequence, each seeing the output of the previous one."""

    def __init__(self, augs: Sequence[Augmentation]):
        self.augs: List[Augmentation] = list(augs)

    def __call__(self, aug_input: AugInput) -> TransformList:
        return TransformList([aug(aug_input) for aug in self.augs])

    def __repr__(self) -> str:
        return f"AugmentationList[{', '.join(repr(a) for a in self.augs)}]"


def apply_augmentations(augmentations: Sequence[Augmentation], image: np.ndarray):
    """Augments a bare image; returns `(augmented image, TransformList)`."""
    aug_input = AugInput(image)
    tfms = aug_input.apply_augmentations(augmentations)
    return aug_input.image, tfms

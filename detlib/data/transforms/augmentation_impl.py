"""The augmentations detection training uses: resizing, flipping, cropping."""

import sys
from typing import Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .augmentation import Augmentation
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

__all__ = ["Resize", "ResizeShortestEdge", "ResizeScale", "FixedSizeCrop", "RandomFlip", "RandomCrop"]


class Resize(Augmentation):
    """Resizes to a fixed (h, w)."""

    def __init__(self, shape: Union[int, Tuple[int, int]], interp: int = Image.BILINEAR):
        self.shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
        self.interp = interp

    def get_transform(self, image: np.ndarray) -> Transform:
        return ResizeTransform(image.shape[0], image.shape[1], self.shape[0], self.shape[1], self.interp)


class ResizeShortestEdge(Augmentation):
    """
    Scales the image so that its shorter side is a sampled length, unless that would make the longer
    side exceed `max_size`, in which case the longer side becomes `max_size`. With
    `sample_style="range"` the length is uniform over the integers in [min, max] of
    `short_edge_length`; with "choice" it is one of `short_edge_length`. A length of 0 means no resize.
    """

    def __init__(
        self,
        short_edge_length: Union[int, Sequence[int]],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
        interp: int = Image.BILINEAR,
    ):
        if sample_style not in ("range", "choice"):
            raise ValueError(f"ResizeShortestEdge sample_style must be 'range' or 'choice', got '{sample_style}'.")
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(short_edge_length)
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"sample_style='range' needs (min, max) lengths, got {short_edge_length}.")
        self.short_edge_length = short_edge_length
        self.max_size = max_size
        self.sample_style = sample_style
        self.interp = interp

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self.sample_style == "range":
            size = int(np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(np.random.choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        new_h, new_w = self.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w, self.interp)

    @staticmethod
    def get_output_shape(old_h: int, old_w: int, short_edge_length: int, max_size: int) -> Tuple[int, int]:
        """(new_h, new_w) for an old_h x old_w image, rounded half up."""
        scale = short_edge_length / min(old_h, old_w)
        if old_h < old_w:
            new_h, new_w = short_edge_length, scale * old_w
        else:
            new_h, new_w = scale * old_h, short_edge_length
        if max(new_h, new_w) > max_size:
            shrink = max_size / max(new_h, new_w)
            new_h, new_w = new_h * shrink, new_w * shrink
        return int(new_h + 0.5), int(new_w + 0.5)


class RandomFlip(Augmentation):
    """Flips horizontally (or vertically) with probability `prob`."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        if horizontal == vertical:
            raise ValueError("RandomFlip flips exactly one of horizontally or vertically.")
        self.prob = prob
        self.horizontal = horizontal
        self.vertical = vertical

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self._rand_range() >= self.prob:
            return NoOpTransform()
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class RandomCrop(Augmentation):
    """
    Crops a random window. `crop_type` says how `crop_size` reads:
    "relative" (fraction h, w of the image), "relative_range" (fractions sampled uniformly in
    [crop_size, 1]), "absolute" (pixels, clamped to the image) and "absolute_range" (pixels sampled
    uniformly in [crop_size[0], crop_size[1]] for both sides, clamped to the image).
    """

    _TYPES = ("relative", "relative_range", "absolute", "absolute_range")

    def __init__(self, crop_type: str, crop_size: Sequence[float]):
        if crop_type not in self._TYPES:
            raise ValueError(f"RandomCrop crop_type must be one of {self._TYPES}, got '{crop_type}'.")
        self.crop_type = crop_type
        self.crop_size = tuple(crop_size)

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        crop_h, crop_w = self.get_crop_size((h, w))
        y0 = int(np.random.randint(h - crop_h + 1))
        x0 = int(np.random.randint(w - crop_w + 1))
        return CropTransform(x0, y0, crop_w, crop_h)

    def get_crop_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            lo = np.asarray(self.crop_size, dtype=np.float64)
            ch, cw = lo + np.random.rand(2) * (1 - lo)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(int(self.crop_size[0]), h), min(int(self.crop_size[1]), w)
        lo, hi = int(self.crop_size[0]), int(self.crop_size[1])
        ch = int(np.random.randint(min(h, lo), min(h, hi) + 1))
        cw = int(np.random.randint(min(w, lo), min(w, hi) + 1))
        return ch, cw


class ResizeScale(Augmentation):
    """
    Large-scale jitter, part 1: scale the image, keeping its aspect ratio, to fit within
    `s * target_height` x `s * target_width` for a scale `s` drawn uniformly from
    [min_scale, max_scale] (sizes rounded to the nearest pixel).
    """

    def __init__(
        self, min_scale: float, max_scale: float, target_height: int, target_width: int, interp: int = Image.BILINEAR
    ):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"ResizeScale needs 0 < min_scale <= max_scale, got {min_scale}, {max_scale}.")
        self.min_scale, self.max_scale = min_scale, max_scale
        self.target_height, self.target_width = target_height, target_width
        self.interp = interp

    def get_transform(self, image: np.ndarray) -> Transform:
        return self.resize_for_scale(image.shape[:2], np.random.uniform(self.min_scale, self.max_scale))

    def resize_for_scale(self, image_size: Tuple[int, int], scale: float) -> ResizeTransform:
        """The resize of an image of `image_size` (h, w) for the drawn `scale`."""
        h, w = image_size
        factor = min(scale * self.target_height / h, scale * self.target_width / w)
        new_h, new_w = (int(v) for v in np.round(np.array([h, w], dtype=np.float64) * factor))
        return ResizeTransform(h, w, new_h, new_w, self.interp)


class FixedSizeCrop(Augmentation):
    """
    Large-scale jitter, part 2: crop a random `crop_size` (h, w) window where the image is larger
    (one uniform draw places the window along both axes), then, with `pad`, pad the right and
    bottom up to `crop_size` with `pad_value` (label maps with `seg_pad_value`). Boxes are clipped by
    the crop; a mapper with `recompute_boxes=True` refits them to the cropped masks.
    """

    def __init__(
        self, crop_size: Tuple[int, int], pad: bool = True, pad_value: float = 128.0, seg_pad_value: int = 255
    ):
        self.crop_size = tuple(int(v) for v in crop_size)
        if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
            raise ValueError(f"FixedSizeCrop crop_size must be (h, w) > 0, got {crop_size}.")
        self.pad, self.pad_value, self.seg_pad_value = pad, pad_value, seg_pad_value

    def get_transform(self, image: np.ndarray) -> Transform:
        return self.transform_for_offset(image.shape[:2], np.random.uniform(0.0, 1.0))

    def transform_for_offset(self, image_size: Tuple[int, int], fraction: float) -> TransformList:
        """The crop (and pad) of an image of `image_size` (h, w) with the window at `fraction` of the
        free room along each axis."""
        h, w = image_size
        crop_h, crop_w = self.crop_size
        y0, x0 = (int(v) for v in np.round(np.maximum([h - crop_h, w - crop_w], 0) * fraction))
        kept_h, kept_w = min(h, crop_h), min(w, crop_w)
        transforms: list = [CropTransform(x0, y0, kept_w, kept_h)]
        if self.pad:
            transforms.append(
                PadTransform(0, 0, crop_w - kept_w, crop_h - kept_h, kept_w, kept_h, self.pad_value, self.seg_pad_value)
            )
        return TransformList(transforms)

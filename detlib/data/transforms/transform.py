"""
Deterministic transforms: once created, a `Transform` maps an image and everything annotated on it
(points, boxes, polygons, segmentation maps) the same way.

Conventions: images are H x W x C (or H x W) numpy arrays; coordinates are N x 2 float arrays of
(x, y) in absolute pixels, where pixel (i, j) covers [j, j+1) x [i, i+1); boxes are N x 4 XYXY.
"""

from abc import ABC, abstractmethod
from typing import Iterable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "Transform",
    "TransformList",
    "NoOpTransform",
    "HFlipTransform",
    "VFlipTransform",
    "ResizeTransform",
    "CropTransform",
    "PadTransform",
]


class Transform(ABC):
    """A deterministic geometric or photometric change of an image and its annotations."""

    @abstractmethod
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Transforms an H x W x C or H x W image (uint8 or float)."""

    @abstractmethod
    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Transforms N x 2 (x, y) absolute pixel coordinates."""

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Transforms an H x W label or mask map; subclasses that interpolate must not blend labels."""
        return self.apply_image(segmentation)

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """
        Transforms N x 4 XYXY boxes into the axis-aligned boxes enclosing their transformed corners.
        """
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        corners = box[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)  # 4 corners per box
        corners = self.apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        """Transforms a list of K x 2 polygon vertex arrays."""
        return [self.apply_coords(np.asarray(p, dtype=np.float64)) for p in polygons]

    def inverse(self) -> "Transform":
        raise NotImplementedError(f"{type(self).__name__} has no inverse.")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class TransformList(Transform):
    """Transforms applied in order."""

    def __init__(self, transforms: Iterable[Transform]):
        flat: List[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, TransformList) else [t])
        self.transforms = flat

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            img = t.apply_image(img)
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            segmentation = t.apply_segmentation(segmentation)
        return segmentation

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        # Box by box, not corners through the whole chain: that is how each step defines boxes.
        for t in self.transforms:
            box = t.apply_box(box)
        return box

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        for t in self.transforms:
            polygons = t.apply_polygons(polygons)
        return polygons

    def inverse(self) -> "TransformList":
        return TransformList([t.inverse() for t in reversed(self.transforms)])

    def __add__(self, other: Transform) -> "TransformList":
        return TransformList([self, other])

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, idx: int) -> Transform:
        return self.transforms[idx]

    def __repr__(self) -> str:
        return f"TransformList[{', '.join(repr(t) for t in self.transforms)}]"


class NoOpTransform(Transform):
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def inverse(self) -> "NoOpTransform":
        return self


class HFlipTransform(Transform):
    """Mirrors left-right an image `width` pixels wide: x -> width - x."""

    def __init__(self, width: int):
        self.width = width

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.flip(img, axis=1)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = self.width - coords[:, 0]
        return coords

    def inverse(self) -> "HFlipTransform":
        return self


class VFlipTransform(Transform):
    """Mirrors top-bottom an image `height` pixels high: y -> height - y."""

    def __init__(self, height: int):
        self.height = height

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.flip(img, axis=0)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 1] = self.height - coords[:, 1]
        return coords

    def inverse(self) -> "VFlipTransform":
        return self


_TORCH_MODES = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}


class ResizeTransform(Transform):
    """
    Resizes an h x w image to new_h x new_w. uint8 images go through PIL with `interp` (PIL's
    bilinear widens its filter when shrinking, which is what Detectron2-trained models expect);
    float images through torch interpolation. Segmentations always use nearest neighbour.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: Optional[int] = None):
        self.h, self.w, self.new_h, self.new_w = h, w, new_h, new_w
        self.interp = Image.BILINEAR if interp is None else interp

    def apply_image(self, img: np.ndarray, interp: Optional[int] = None) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"ResizeTransform expects a {self.h}x{self.w} image, got {img.shape[:2]}.")
        interp = self.interp if interp is None else interp
        if img.dtype == np.uint8:
            squeeze = img.ndim == 3 and img.shape[2] == 1
            pil = Image.fromarray(img[:, :, 0] if squeeze else img)
            out = np.asarray(pil.resize((self.new_w, self.new_h), interp))
            return out[:, :, None] if squeeze else out
        tensor = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        chw = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor[None]
        mode = _TORCH_MODES[interp]
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        out = F.interpolate(chw[None], (self.new_h, self.new_w), mode=mode, **kwargs)[0]
        out = out.permute(1, 2, 0) if tensor.ndim == 3 else out[0]
        return out.numpy().astype(img.dtype, copy=False)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.dtype == bool:
            return self.apply_image(segmentation.astype(np.uint8), interp=Image.NEAREST).astype(bool)
        return self.apply_image(segmentation, interp=Image.NEAREST)

    def inverse(self) -> "ResizeTransform":
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class CropTransform(Transform):
    """Keeps the w x h window whose top-left pixel is (x0, y0)."""

    def __init__(self, x0: int, y0: int, w: int, h: int):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        """Clips each polygon to the window (dropping those left with no area), then shifts it."""
        window = (self.x0, self.y0, self.x0 + self.w, self.y0 + self.h)
        clipped = [_clip_polygon(np.asarray(p, dtype=np.float64), *window) for p in polygons]
        return [self.apply_coords(p) for p in clipped if len(p) >= 3]


class PadTransform(Transform):
    """
    Pads `x0` / `y0` pixels before and `x1` / `y1` after an orig_w x orig_h image: images with
    `pad_value`, label maps with `seg_pad_value`, instance masks (bool) with False.
    """

    def __init__(
        self,
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        orig_w: Optional[int] = None,
        orig_h: Optional[int] = None,
        pad_value: float = 0,
        seg_pad_value: int = 0,
    ):
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1
        self.orig_w, self.orig_h = orig_w, orig_h
        self.pad_value, self.seg_pad_value = pad_value, seg_pad_value

    def _pad(self, array: np.ndarray, value: float) -> np.ndarray:
        widths = [(self.y0, self.y1), (self.x0, self.x1)] + [(0, 0)] * (array.ndim - 2)
        return np.pad(array, widths, mode="constant", constant_values=value)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._pad(img, self.pad_value)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        # An instance mask must not grow into the padding; a label map marks it (255: ignore).
        return self._pad(segmentation, False if segmentation.dtype == bool else self.seg_pad_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] += self.x0
        coords[:, 1] += self.y0
        return coords


def _clip_polygon(poly: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """
    Sutherland-Hodgman clipping of a K x 2 polygon to a rectangle, one rectangle side at a time,
    each side vectorized over the polygon's edges. Concave polygons may come out with zero-width
    bridges along the rectangle's border, which enclose no area and so rasterize correctly.
    """
    for axis, bound, keep_below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if len(poly) == 0:
            break
        nxt = np.roll(poly, -1, axis=0)
        p_in = poly[:, axis] <= bound if keep_below else poly[:, axis] >= bound
        n_in = nxt[:, axis] <= bound if keep_below else nxt[:, axis] >= bound
        crosses = p_in != n_in
        denom = np.where(crosses, nxt[:, axis] - poly[:, axis], 1.0)
        t = (bound - poly[:, axis]) / denom
        cross_pts = poly + t[:, None] * (nxt - poly)
        # Each edge emits its start vertex if inside, then the crossing point if it crosses.
        emitted = np.stack([poly, cross_pts], axis=1).reshape(-1, 2)
        keep = np.stack([p_in, crosses], axis=1).reshape(-1)
        poly = emitted[keep]
    return poly

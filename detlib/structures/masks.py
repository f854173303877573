"""
Instance masks in two representations:

* `BitMasks`: an (N, H, W) bool tensor, one full-image mask per instance;
* `PolygonMasks`: per instance a list of polygons, each a flat float64 numpy array
  [x0, y0, x1, y1, ...] in image pixels (kept in numpy so data transforms can move them exactly).

Both produce the per-box MxM training targets of a mask head with `crop_and_resize`.
"""

import itertools
from typing import Any, Iterator, List, Sequence, Union

import numpy as np
import pycocotools.mask as mask_util
import torch

from .boxes import Boxes
from .list_indexing import index_list

__all__ = ["BitMasks", "PolygonMasks", "polygons_to_bitmask"]


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """
    Rasterize the union of `polygons` (flat [x0, y0, x1, y1, ...] arrays, pixel coordinates) into a
    (height, width) bool array, with COCO's rasterizer (pycocotools).
    """
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects(polygons, height, width)
    rle = mask_util.merge(rles)
    return mask_util.decode(rle).astype(bool)


def _polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Area of a simple polygon by the shoelace formula."""
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _rasterize_polygons_within_box(polygons: List[np.ndarray], box: np.ndarray, mask_size: int) -> torch.Tensor:
    """
    Crop an instance's polygons to `box` (XYXY) and rasterize them at `mask_size` x `mask_size`.

    The arithmetic (box size and scale in the boxes' dtype, float32 for `Boxes`; shifts and scaling
    of the float64 polygons; the 0.1-pixel floor on the box size) follows Detectron2 step by step,
    because the mask targets, and hence the mask loss, must agree with it pixel for pixel.
    """
    w, h = box[2] - box[0], box[3] - box[1]
    ratio_w = mask_size / max(w, 0.1)
    ratio_h = mask_size / max(h, 0.1)
    moved = []
    for p in polygons:
        q = p.copy()
        q[0::2] = (q[0::2] - box[0]) * ratio_w
        q[1::2] = (q[1::2] - box[1]) * ratio_h
        moved.append(q)
    return torch.from_numpy(polygons_to_bitmask(moved, mask_size, mask_size))


class BitMasks:
    """
    N instance masks as an (N, H, W) bool tensor `tensor` covering the whole image.
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray]):
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.to(torch.bool)
        else:
            tensor = torch.as_tensor(tensor, dtype=torch.bool, device=torch.device("cpu"))
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks need an (N, H, W) tensor, got shape {tuple(tensor.shape)}")
        self.image_size = tensor.shape[1:]
        self.tensor = tensor

    def to(self, *args: Any, **kwargs: Any) -> "BitMasks":
        return BitMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __getitem__(self, item) -> "BitMasks":
        """`masks[i]` keeps one mask; slices, bool masks and index tensors select several."""
        selected = self.tensor[item]
        if selected.dim() == 2:  # a single integer index
            selected = selected.unsqueeze(0)
        if selected.dim() != 3:
            raise IndexError(f"Indexing BitMasks with {item} did not give an (N, H, W) tensor")
        return BitMasks(selected)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)}, image_size={tuple(self.image_size)})"

    def nonempty(self) -> torch.Tensor:
        """Bool (N,): True for masks with at least one pixel set."""
        return self.tensor.flatten(1).any(dim=1)

    def area(self) -> torch.Tensor:
        """Number of set pixels per mask, (N,)."""
        return self.tensor.flatten(1).sum(dim=1)

    def get_bounding_boxes(self) -> Boxes:
        """
        The tightest box around each mask, XYXY in pixels with the far edge exclusive (a single
        pixel at (x, y) gives (x, y, x + 1, y + 1)). Empty masks give (0, 0, 0, 0).
        """
        n, h, w = self.tensor.shape
        boxes = torch.zeros(n, 4, dtype=torch.float32, device=self.device)
        if n == 0:
            return Boxes(boxes)
        cols = self.tensor.any(dim=1)  # (N, W): columns holding a set pixel
        rows = self.tensor.any(dim=2)  # (N, H)
        # argmax returns the first maximal index: the first set column from the left, or from the
        # right on the flipped mask.
        boxes[:, 0] = cols.to(torch.uint8).argmax(dim=1).to(torch.float32)
        boxes[:, 2] = w - cols.flip(1).to(torch.uint8).argmax(dim=1).to(torch.float32)
        boxes[:, 1] = rows.to(torch.uint8).argmax(dim=1).to(torch.float32)
        boxes[:, 3] = h - rows.flip(1).to(torch.uint8).argmax(dim=1).to(torch.float32)
        boxes[~self.nonempty()] = 0
        return Boxes(boxes)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """
        Crop mask i to `boxes[i]` (XYXY pixels, Nx4) and resample it to `mask_size` x `mask_size` with
        ROIAlign (half-pixel aligned, adaptive sampling), thresholded at 0.5.

        Returns:
            (N, mask_size, mask_size) bool tensor on the masks' device.
        """
        # Imported here: detlib.layers needs the compiled extension, and the rest of the structures
        # must stay usable (e.g. in data loading) where it is not built.
        from detlib.layers.roi_align import ROIAlign

        if len(boxes) != len(self):
            raise ValueError(f"crop_and_resize: {len(boxes)} boxes for {len(self)} masks")
        if isinstance(boxes, Boxes):
            boxes = boxes.tensor
        device = self.tensor.device
        boxes = boxes.to(device=device, dtype=torch.float32)
        batch_index = torch.arange(len(boxes), device=device, dtype=boxes.dtype)[:, None]
        rois = torch.cat([batch_index, boxes], dim=1)
        masks = self.tensor.to(torch.float32)[:, None]
        pooled = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True)(masks, rois)
        return pooled.squeeze(1) >= 0.5

    @staticmethod
    def from_polygon_masks(
        polygon_masks: Union["PolygonMasks", List[List[np.ndarray]]], height: int, width: int
    ) -> "BitMasks":
        """Rasterize polygon masks into (N, height, width) bit masks."""
        if isinstance(polygon_masks, PolygonMasks):
            polygon_masks = polygon_masks.polygons
        masks = [torch.from_numpy(polygons_to_bitmask(p, height, width)) for p in polygon_masks]
        if not masks:
            return BitMasks(torch.empty(0, height, width, dtype=torch.bool))
        return BitMasks(torch.stack(masks))

    @classmethod
    def cat(cls, bitmasks_list: List["BitMasks"]) -> "BitMasks":
        """Concatenate BitMasks of the same image size."""
        if not bitmasks_list or not all(isinstance(m, BitMasks) for m in bitmasks_list):
            raise TypeError("BitMasks.cat takes a non-empty list of BitMasks")
        return cls(torch.cat([m.tensor for m in bitmasks_list], dim=0))


class PolygonMasks:
    """
    N instance masks, each the union of one or more polygons.

    Attributes:
        polygons: list (one per instance) of lists of flat float64 numpy arrays
            [x0, y0, x1, y1, ...], in image pixels, each with at least 3 points.
    """

    def __init__(self, polygons: List[List[Union[torch.Tensor, np.ndarray, List[float]]]]):
        if not isinstance(polygons, list):
            raise TypeError(f"PolygonMasks take a list (instances) of lists (polygons), got {type(polygons).__name__}")
        self.polygons: List[List[np.ndarray]] = []
        for i, instance in enumerate(polygons):
            if not isinstance(instance, (list, tuple)):
                raise TypeError(f"PolygonMasks: instance {i} must be a list of polygons, got {type(instance).__name__}")
            self.polygons.append([self._as_polygon(p, i, j) for j, p in enumerate(instance)])

    @staticmethod
    def _as_polygon(poly: Any, instance: int, index: int) -> np.ndarray:
        if isinstance(poly, torch.Tensor):
            poly = poly.cpu().numpy()
        if np.ndim(poly) == 0:
            raise TypeError(
                f"PolygonMasks: instance {instance} must be a list of polygons (flat coordinate lists), "
                f"but its element {index} is a number"
            )
        # A copy: polygons are transformed in place (`scale`), which must not reach the caller's data.
        arr = np.array(poly, dtype=np.float64).reshape(-1)
        if len(arr) % 2 != 0 or len(arr) < 6:
            raise ValueError(
                f"PolygonMasks: polygon {index} of instance {instance} has {len(arr)} coordinates; "
                "a polygon needs an even number, at least 6 (3 points)"
            )
        return arr

    def to(self, *args: Any, **kwargs: Any) -> "PolygonMasks":
        """Polygons stay in host memory as numpy arrays; this is a no-op kept for the common API."""
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __len__(self) -> int:
        return len(self.polygons)

    def __iter__(self) -> Iterator[List[np.ndarray]]:
        return iter(self.polygons)

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self)})"

    def __getitem__(self, item) -> "PolygonMasks":
        """Select instances by an int, a slice, a list of ints, a bool mask or an index tensor."""
        # Shares the arrays, like tensor indexing shares storage.
        return self._wrap(index_list(self.polygons, item))

    def get_bounding_boxes(self) -> Boxes:
        """The tightest XYXY box around each instance's polygons (no pixel-edge adjustment)."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        for i, instance in enumerate(self.polygons):
            if not instance:
                continue
            coords = np.concatenate(instance).reshape(-1, 2)
            boxes[i, :2] = torch.from_numpy(coords.min(axis=0))
            boxes[i, 2:] = torch.from_numpy(coords.max(axis=0))
        return Boxes(boxes)

    def nonempty(self) -> torch.Tensor:
        """Bool (N,): True for instances with at least one polygon."""
        return torch.tensor([len(p) > 0 for p in self.polygons], dtype=torch.bool)

    def area(self) -> torch.Tensor:
        """Area per instance: the sum of its polygons' areas (overlaps counted twice), (N,)."""
        areas = [sum(_polygon_area(p[0::2], p[1::2]) for p in instance) for instance in self.polygons]
        return torch.tensor(areas, dtype=torch.float64)

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale all polygons in place (e.g. after resizing the image)."""
        for instance in self.polygons:
            for p in instance:
                p[0::2] *= scale_x
                p[1::2] *= scale_y

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """
        Crop instance i's polygons to `boxes[i]` (XYXY pixels, Nx4), scale them to
        `mask_size` x `mask_size` and rasterize with pycocotools.

        Returns:
            (N, mask_size, mask_size) bool tensor on the device of `boxes`.
        """
        if isinstance(boxes, Boxes):
            boxes = boxes.tensor
        if len(boxes) != len(self):
            raise ValueError(f"crop_and_resize: {len(boxes)} boxes for {len(self)} polygon masks")
        device = boxes.device
        if len(boxes) == 0:
            return torch.empty(0, mask_size, mask_size, dtype=torch.bool, device=device)
        boxes_np = boxes.detach().cpu().numpy()
        masks = [
            _rasterize_polygons_within_box(instance, box, mask_size) for instance, box in zip(self.polygons, boxes_np)
        ]
        return torch.stack(masks).to(device=device)

    @classmethod
    def cat(cls, polymasks_list: List["PolygonMasks"]) -> "PolygonMasks":
        """Concatenate PolygonMasks (the arrays are shared, not copied)."""
        if not polymasks_list or not all(isinstance(m, PolygonMasks) for m in polymasks_list):
            raise TypeError("PolygonMasks.cat takes a non-empty list of PolygonMasks")
        return cls._wrap(list(itertools.chain.from_iterable(m.polygons for m in polymasks_list)))

    @classmethod
    def _wrap(cls, polygons: List[List[np.ndarray]]) -> "PolygonMasks":
        """A PolygonMasks around already validated arrays, without copying them."""
        out = cls([])
        out.polygons = polygons
        return out

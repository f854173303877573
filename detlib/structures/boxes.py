"""Axis-aligned boxes: the `BoxMode` conventions, the `Boxes` container and pairwise overlap measures."""

import math
from enum import IntEnum, unique
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["BoxMode", "Boxes", "pairwise_intersection", "pairwise_iou", "pairwise_ioa", "matched_pairwise_iou"]

_RawBoxType = Union[List[float], Tuple[float, ...], torch.Tensor, np.ndarray]


@unique
class BoxMode(IntEnum):
    """
    How the 4 (or 5) numbers of a box are to be read. The integer values are part of the dataset
    dict format (`"bbox_mode"`), so they never change.
    """

    XYXY_ABS = 0
    """(x0, y0, x1, y1) in pixels: top-left and bottom-right corners."""
    XYWH_ABS = 1
    """(x0, y0, w, h) in pixels: top-left corner and size (COCO's `bbox`)."""
    XYXY_REL = 2
    """(x0, y0, x1, y1) as fractions of the image size. Not convertible: the size is unknown here."""
    XYWH_REL = 3
    """(x0, y0, w, h) as fractions of the image size. Not convertible: the size is unknown here."""
    XYWHA_ABS = 4
    """(xc, yc, w, h, a) in pixels: center, size and counter-clockwise rotation in degrees."""

    @staticmethod
    def convert(box: _RawBoxType, from_mode: "BoxMode", to_mode: "BoxMode") -> _RawBoxType:
        """
        Convert one box (4 or 5 numbers) or an Nx4 / Nx5 array of boxes between absolute modes.

        The result has the type of `box` (list, tuple, numpy array or tensor); arrays and tensors keep
        their dtype, lists and tuples of floats are computed in float32 (as in Detectron2; pass a
        float64 array for full precision). XYWHA -> XYXY gives the axis-aligned box enclosing the
        rotated one; XYXY -> XYWHA gives angle 0.
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        relative = (BoxMode.XYXY_REL, BoxMode.XYWH_REL)
        if from_mode in relative or to_mode in relative:
            raise NotImplementedError(
                f"Cannot convert {from_mode.name} -> {to_mode.name}: relative modes need the image size"
            )

        original_type = type(box)
        single = isinstance(box, (list, tuple))
        if single:
            expected = 5 if from_mode == BoxMode.XYWHA_ABS else 4
            if len(box) != expected:
                raise ValueError(f"A {from_mode.name} box has {expected} numbers, got {len(box)}: {box}")
            # dtype inferred as torch does (float32 for floats), so results equal Detectron2's.
            arr = torch.tensor([list(box)])
        elif isinstance(box, np.ndarray):
            arr = torch.from_numpy(np.asarray(box))
        elif isinstance(box, torch.Tensor):
            arr = box
        else:
            raise TypeError(f"Cannot convert a box of type {original_type.__name__}")

        out = _convert_tensor(arr, from_mode, to_mode)

        if single:
            values = out.flatten().tolist()
            return original_type(values)
        if isinstance(box, np.ndarray):
            return out.numpy()
        return out


def _convert_tensor(arr: torch.Tensor, from_mode: BoxMode, to_mode: BoxMode) -> torch.Tensor:
    """Convert an (..., 4 or 5) tensor between absolute modes, returning a new tensor of the same dtype."""
    # Every mode goes through XYXY, the one all others know how to reach.
    if from_mode == BoxMode.XYWHA_ABS:
        xyxy = _xywha_to_xyxy(arr)
    elif from_mode == BoxMode.XYWH_ABS:
        xyxy = torch.cat([arr[..., :2], arr[..., :2] + arr[..., 2:4]], dim=-1)
    else:
        xyxy = arr.clone()

    if to_mode == BoxMode.XYXY_ABS:
        return xyxy
    if to_mode == BoxMode.XYWH_ABS:
        return torch.cat([xyxy[..., :2], xyxy[..., 2:4] - xyxy[..., :2]], dim=-1)
    center = (xyxy[..., :2] + xyxy[..., 2:4]) / 2
    size = xyxy[..., 2:4] - xyxy[..., :2]
    return torch.cat([center, size, torch.zeros_like(size[..., :1])], dim=-1).to(arr.dtype)


def _xywha_to_xyxy(arr: torch.Tensor) -> torch.Tensor:
    # Double precision: cos/sin of degrees lose too much in float32 for large boxes.
    boxes = arr.to(torch.float64)
    theta = boxes[..., 4] * (math.pi / 180.0)
    c, s = theta.cos().abs(), theta.sin().abs()
    w, h = boxes[..., 2], boxes[..., 3]
    half_w = (c * w + s * h) / 2
    half_h = (s * w + c * h) / 2
    cx, cy = boxes[..., 0], boxes[..., 1]
    xyxy = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    return xyxy.to(arr.dtype)


class Boxes:
    """
    N axis-aligned boxes as an Nx4 float tensor `tensor` in XYXY_ABS mode (pixels, x1 >= x0 expected
    but not enforced). Behaves like a tensor of boxes: indexing, `len`, `to`, iteration.
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray, Sequence]):
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        else:
            tensor = tensor.to(torch.float32)
        if tensor.dim() != 2 or tensor.shape[-1] != 4:
            # Empty input of any other shape (e.g. [] or (0,)) becomes 0x4, keeping dtype and device.
            # Checked only then: an Nx4 tensor's N may be data-dependent while exporting.
            if tensor.numel() != 0:
                raise ValueError(f"Boxes need an Nx4 tensor, got shape {tuple(tensor.shape)}")
            tensor = tensor.reshape((-1, 4))
        self.tensor = tensor

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def to(self, *args, **kwargs) -> "Boxes":
        """`Tensor.to` on the underlying tensor (e.g. a device)."""
        return Boxes(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """Area of each box, shape (N,)."""
        box = self.tensor
        return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

    def clip(self, box_size: Tuple[int, int]) -> None:
        """Clip the boxes in place to an image of `box_size` = (height, width)."""
        # A traced program cannot raise on values; the inference paths drop non-finite boxes before clipping.
        if not torch.compiler.is_compiling() and not torch.isfinite(self.tensor).all():
            raise ValueError("Boxes.clip: the boxes contain infinite or NaN coordinates")
        h, w = box_size
        x0 = self.tensor[:, 0].clamp(min=0, max=w)
        y0 = self.tensor[:, 1].clamp(min=0, max=h)
        x1 = self.tensor[:, 2].clamp(min=0, max=w)
        y1 = self.tensor[:, 3].clamp(min=0, max=h)
        self.tensor = torch.stack((x0, y0, x1, y1), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """Bool mask (N,): True where both the width and the height exceed `threshold`."""
        box = self.tensor
        widths = box[:, 2] - box[:, 0]
        heights = box[:, 3] - box[:, 1]
        return (widths > threshold) & (heights > threshold)

    def inside_box(self, box_size: Tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """
        Bool mask (N,): True where the box lies within an image of `box_size` = (height, width),
        allowed to stick out by at most `boundary_threshold` pixels on each side.
        """
        h, w = box_size
        t = boundary_threshold
        return (
            (self.tensor[:, 0] >= -t)
            & (self.tensor[:, 1] >= -t)
            & (self.tensor[:, 2] < w + t)
            & (self.tensor[:, 3] < h + t)
        )

    def get_centers(self) -> torch.Tensor:
        """Box centers (x, y), shape (N, 2)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale the x and y coordinates in place (e.g. after resizing the image)."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    @classmethod
    def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
        """Concatenate a list of `Boxes` into one."""
        if not isinstance(boxes_list, (list, tuple)):
            raise TypeError(f"Boxes.cat takes a list of Boxes, got {type(boxes_list).__name__}")
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        if not all(isinstance(b, Boxes) for b in boxes_list):
            raise TypeError("Boxes.cat: every element must be a Boxes")
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))

    def __getitem__(self, item) -> "Boxes":
        """
        `boxes[i]` is a Boxes of one box; `boxes[a:b]`, `boxes[bool_mask]` and `boxes[index_tensor]`
        select several. The result may share memory with this one.
        """
        selected = self.tensor[item]
        if selected.dim() == 1:  # a single integer index
            selected = selected.view(1, -1)
        if selected.dim() != 2:
            raise IndexError(f"Indexing Boxes with {item} did not give an Nx4 tensor")
        return Boxes(selected)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Each box as a tensor of 4 numbers."""
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"


def pairwise_intersection(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection areas between every box of `boxes1` (N) and every box of `boxes2` (M): NxM."""
    a, b = boxes1.tensor, boxes2.tensor
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """
    Intersection over union between every box of `boxes1` (N) and of `boxes2` (M): NxM.
    Pairs whose intersection is empty get 0, also when a box has zero area.
    """
    inter = pairwise_intersection(boxes1, boxes2)
    union = boxes1.area()[:, None] + boxes2.area()[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros(1, dtype=inter.dtype, device=inter.device))


def pairwise_ioa(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """
    Intersection over the area of the box in `boxes2`, for every pair: NxM. Useful to ask how much of
    a (crowd) region a box covers.
    """
    inter = pairwise_intersection(boxes1, boxes2)
    area2 = boxes2.area()[None, :]
    return torch.where(inter > 0, inter / area2, torch.zeros(1, dtype=inter.dtype, device=inter.device))


def matched_pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """IoU between `boxes1[i]` and `boxes2[i]` for each i (both of length N): shape (N,)."""
    if len(boxes1) != len(boxes2):
        raise ValueError(f"matched_pairwise_iou needs equal lengths, got {len(boxes1)} and {len(boxes2)}")
    a, b = boxes1.tensor, boxes2.tensor
    top_left = torch.max(a[:, :2], b[:, :2])
    bottom_right = torch.min(a[:, 2:], b[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (boxes1.area() + boxes2.area() - inter)

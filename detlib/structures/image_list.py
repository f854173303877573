"""`ImageList`: images of different sizes padded into one batch tensor, remembering the true sizes."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ImageList"]


class ImageList:
    """
    A batch of images of possibly different sizes, padded at the bottom and right into one tensor.

    Attributes:
        tensor: (N, C, H, W) padded batch (or (N, H, W) for channel-less images).
        image_sizes: the (height, width) of each image before padding.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        if len(image_sizes) != len(tensor):
            raise ValueError(f"ImageList: {len(tensor)} images but {len(image_sizes)} image sizes")
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Image `idx` without its padding, (C, h, w)."""
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args: Any, **kwargs: Any) -> "ImageList":
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: Sequence[torch.Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: Optional[Dict[str, int]] = None,
    ) -> "ImageList":
        """
        Pad a list of (C, H_i, W_i) (or (H_i, W_i)) tensors to a common size and stack them.

        Args:
            tensors: images with equal leading dims; only the last two may differ.
            size_divisibility: if > 1, the padded height and width are rounded up to a multiple of it
                (the backbone's largest stride, so every feature map lines up).
            pad_value: value of the padded pixels.
            padding_constraints: optional `{"square_size": S}` to pad to S x S, and/or
                `{"size_divisibility": D}` which takes precedence over the argument.
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        leading = tuple(tensors[0].shape[:-2])
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ImageList.from_tensors: image {i} is a {type(t).__name__}, not a tensor")
            if tuple(t.shape[:-2]) != leading:
                raise ValueError(
                    f"ImageList.from_tensors: image {i} has shape {tuple(t.shape)}, whose leading dims differ "
                    f"from image 0's {tuple(tensors[0].shape)}"
                )

        # Sizes as the shapes give them: ints, or symbolic sizes while exporting with dynamic height and width.
        image_sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
        max_h = max(h for h, _ in image_sizes)
        max_w = max(w for _, w in image_sizes)
        if padding_constraints is not None:
            square_size = padding_constraints.get("square_size", 0)
            if square_size > 0:
                if square_size < max(max_h, max_w):
                    raise ValueError(
                        f"padding_constraints square_size {square_size} is smaller than an image ({max_h}x{max_w})"
                    )
                max_h = max_w = square_size
            size_divisibility = padding_constraints.get("size_divisibility", size_divisibility)
        if size_divisibility > 1:
            # Rounded up without floor division of negatives, which ONNX's integer Div (truncating) gets wrong.
            max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
            max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility

        if len(tensors) == 1:
            # One image: a single pad op, no need for an intermediate full-size buffer.
            h, w = image_sizes[0]
            batched = F.pad(tensors[0], [0, max_w - w, 0, max_h - h], value=pad_value).unsqueeze(0)
        else:
            batched = tensors[0].new_full((len(tensors),) + leading + (max_h, max_w), pad_value)
            for i, t in enumerate(tensors):
                batched[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
        return ImageList(batched.contiguous(), image_sizes)

"""torch.export of a detector's inference, with the image's height and width dynamic."""

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from .wrapper import ExportableDetector

__all__ = ["export_program", "min_image_side", "MAX_IMAGE_SIDE"]

# Upper bound of the exported program's image height and width.
MAX_IMAGE_SIDE = 8192


def _check_sample(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        dtype = image.dtype if isinstance(image, torch.Tensor) else None
        raise ValueError(f"The sample image must be a uint8 (C, H, W) tensor, got {shape} {dtype}")


def min_image_side(model: nn.Module) -> int:
    """The smallest height / width the exported program takes: the coarsest feature map (e.g. FPN's p6, or
    RetinaNet's p7) must have at least two rows and columns, or shapes specialize."""
    return max(shape.stride for shape in model.backbone.output_shape().values()) + 1


def export_program(model: nn.Module, sample_image: torch.Tensor) -> ExportedProgram:
    """
    Export `ExportableDetector(model)` with torch.export: one uint8 (C, H, W) image in, (boxes, scores, classes
    [, masks]) out. `sample_image` only drives the tracing; any height and width in
    [`min_image_side(model)`, `MAX_IMAGE_SIDE`] run, and so do images with no detection.
    """
    _check_sample(sample_image)
    wrapper = ExportableDetector(model)
    low = min_image_side(model)
    if min(sample_image.shape[1:]) < low:
        raise ValueError(f"The sample image is {tuple(sample_image.shape[1:])}; export needs sides of at least {low}")
    height = Dim("height", min=low, max=MAX_IMAGE_SIDE)
    width = Dim("width", min=low, max=MAX_IMAGE_SIDE)
    with torch.no_grad():
        # strict=False: Instances and Boxes are traced through as the Python objects they are.
        return torch.export.export(
            wrapper, (sample_image.to(model.device),), dynamic_shapes=({1: height, 2: width},), strict=False
        )

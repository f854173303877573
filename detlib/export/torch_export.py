"""torch.export of a detector's inference, with the image's height and width dynamic."""

from typing import Tuple

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from .wrapper import ExportableDetector

__all__ = ["export_program", "image_size_range", "min_image_side", "MAX_IMAGE_SIDE"]

# Upper bound of the exported program's image height and width.
MAX_IMAGE_SIDE = 8192


def _check_sample(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        dtype = image.dtype if isinstance(image, torch.Tensor) else None
        raise ValueError(f"The sample image must be a uint8 (C, H, W) tensor, got {shape} {dtype}")


def min_image_side(model: nn.Module) -> int:
    """The smallest height / width export asks the program to take: the coarsest feature map (e.g. FPN's p6, or
    RetinaNet's p7) must have at least two rows and columns, or shapes specialize. A backbone that does not pad
    its input to that stride may need more (see `image_size_range`)."""
    return max(shape.stride for shape in model.backbone.output_shape().values()) + 1


def image_size_range(program: ExportedProgram) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """((min, max) height, (min, max) width) of the images `program` (from `export_program`) takes."""
    image = next(node for node in program.graph.nodes if node.op == "placeholder" and node.name == "image")
    ranges = []
    for size in image.meta["val"].shape[1:]:
        value_range = program.range_constraints[size.node.expr]
        ranges.append((int(value_range.lower), int(value_range.upper)))
    return tuple(ranges)


def export_program(model: nn.Module, sample_image: torch.Tensor) -> ExportedProgram:
    """
    Export `ExportableDetector(model)` with torch.export: one uint8 (C, H, W) image in, (boxes, scores, classes
    [, masks]) out. `sample_image` only drives the tracing; any height and width in `image_size_range(program)`
    run, and so do images with no detection. That range is [`min_image_side(model)`, `MAX_IMAGE_SIDE`], its
    minimum raised where the model's shapes need more (ViTDet's pyramid, on an unpadded image: 96 for its p6).
    """
    _check_sample(sample_image)
    wrapper = ExportableDetector(model)
    low = min_image_side(model)
    if min(sample_image.shape[1:]) < low:
        raise ValueError(f"The sample image is {tuple(sample_image.shape[1:])}; export needs sides of at least {low}")
    # DYNAMIC, not a named Dim: the model's own shape guards may raise the minimum (read it back with
    # `image_size_range`), where a named Dim would fail with the solver's suggested fix; a size fixed by a
    # guard still fails.
    height = Dim.DYNAMIC(min=low, max=MAX_IMAGE_SIDE)
    width = Dim.DYNAMIC(min=low, max=MAX_IMAGE_SIDE)
    with torch.no_grad():
        # strict=False: Instances and Boxes are traced through as the Python objects they are. Deferred
        # asserts: BatchNorm on channels_last maps guards that strides (multiples of the padded width) are
        # not 1, true for every allowed size but beyond what the constraint solver proves.
        return torch.export.export(
            wrapper,
            (sample_image.to(model.device),),
            dynamic_shapes=({1: height, 2: width},),
            strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )

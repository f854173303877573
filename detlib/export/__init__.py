"""Exporting a detector's inference (the model's own code) with torch.export and to ONNX."""

from .torch_export import MAX_IMAGE_SIDE, export_program, image_size_range, min_image_side
from .wrapper import ExportableDetector, output_names

__all__ = [
    "ExportableDetector",
    "output_names",
    "export_program",
    "image_size_range",
    "min_image_side",
    "MAX_IMAGE_SIDE",
]

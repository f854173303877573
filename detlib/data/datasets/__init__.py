"""Dataset loaders and the built-in registrations (COCO 2017, synthetic shapes and keypoint shapes)."""

from . import builtin  # noqa: F401  registers the built-in datasets
from .coco import convert_to_coco_dict, convert_to_coco_json, load_coco_json, register_coco_instances
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes
from .shapes_keypoints import (
    KEYPOINT_FLIP_MAP,
    KEYPOINT_NAMES,
    KEYPOINT_SHAPES_CLASSES,
    KeypointShapesSpec,
    generate_keypoint_shapes,
)

__all__ = [
    "load_coco_json",
    "register_coco_instances",
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "SHAPES_CLASSES",
    "ShapesSpec",
    "generate_shapes",
    "KEYPOINT_SHAPES_CLASSES",
    "KEYPOINT_NAMES",
    "KEYPOINT_FLIP_MAP",
    "KeypointShapesSpec",
    "generate_keypoint_shapes",
]

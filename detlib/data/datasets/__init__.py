"""Dataset loaders and the builtin registrations (COCO, LVIS, COCO panoptic, Cityscapes, Pascal VOC,
ADE20K, and the synthetic shapes datasets)."""

from . import builtin  # noqa: F401  registers the builtin datasets
from .builtin import datasets_root
from .cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from .coco import convert_to_coco_dict, convert_to_coco_json, load_coco_json, register_coco_instances
from .coco_panoptic import (
    load_coco_panoptic_json,
    merge_to_panoptic,
    register_coco_panoptic,
    register_coco_panoptic_separated,
)
from .lvis import get_lvis_instances_meta, load_lvis_json, register_lvis_instances
from .pascal_voc import load_voc_instances, register_pascal_voc
from .sem_seg import load_sem_seg, register_sem_seg
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes
from .shapes_keypoints import (
    KEYPOINT_FLIP_MAP,
    KEYPOINT_NAMES,
    KEYPOINT_SHAPES_CLASSES,
    KeypointShapesSpec,
    generate_keypoint_shapes,
)

__all__ = [k for k in globals() if not k.startswith("_") and k != "builtin"]

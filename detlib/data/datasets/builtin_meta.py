"""
Metadata of the builtin datasets, as Detectron2 names it: the classes, their colours and the id maps
a model and an evaluator need, available without the annotation files.
"""

from typing import Any, Dict

from .coco_categories import COCO_PANOPTIC_CATEGORIES
from .dataset_classes import ADE20K_SEM_SEG_CLASSES, CITYSCAPES_CATEGORIES, PASCAL_VOC_CLASSES
from .lvis_v0_5_categories import LVIS_V0_5_CATEGORIES
from .lvis_v1_categories import LVIS_V1_CATEGORIES

__all__ = [
    "COCO_CATEGORIES",
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_KEYPOINT_FLIP_MAP",
    "coco_instances_metadata",
    "coco_person_metadata",
    "coco_panoptic_separated_metadata",
    "coco_panoptic_standard_metadata",
    "lvis_metadata",
    "cityscapes_metadata",
    "ade20k_metadata",
    "pascal_voc_metadata",
]

# (COCO category id, name) of the 80 thing classes; ids are not contiguous.
COCO_CATEGORIES = tuple((cat_id, name) for cat_id, name, isthing, _ in COCO_PANOPTIC_CATEGORIES if isthing)

# The 17 keypoints of a COCO person, in the annotation files' order; a horizontal flip swaps each
# left_* keypoint with its right_* one.
COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_PERSON_KEYPOINT_FLIP_MAP = tuple(
    (name, "right_" + name[len("left_") :]) for name in COCO_PERSON_KEYPOINT_NAMES if name.startswith("left_")
)

# Colour of the extra "things" class of the separated panoptic layout (stuff id 0).
_THINGS_STUFF_COLOR = (82, 18, 128)


def coco_instances_metadata() -> Dict[str, Any]:
    """COCO's 80 instance classes: names, colours, dataset id -> contiguous id in [0, 80)."""
    things = [c for c in COCO_PANOPTIC_CATEGORIES if c[2]]
    return {
        "thing_classes": [name for _, name, _, _ in things],
        "thing_colors": [list(color) for *_, color in things],
        "thing_dataset_id_to_contiguous_id": {cat_id: i for i, (cat_id, *_) in enumerate(things)},
    }


def coco_person_metadata() -> Dict[str, Any]:
    """The single person class of COCO keypoints and its 17 keypoints."""
    return {
        "thing_classes": ["person"],
        "thing_dataset_id_to_contiguous_id": {1: 0},
        "keypoint_names": list(COCO_PERSON_KEYPOINT_NAMES),
        "keypoint_flip_map": list(COCO_PERSON_KEYPOINT_FLIP_MAP),
    }


def coco_panoptic_separated_metadata() -> Dict[str, Any]:
    """
    Panoptic FPN's layout: the 80 things as instances, and a semantic map whose class 0 is every
    thing pixel ("things") and classes 1..53 are the stuff categories (suffixes "-other" and
    "-merged" dropped from their names).
    """
    stuff = [c for c in COCO_PANOPTIC_CATEGORIES if not c[2]]
    stuff_ids = {cat_id: i + 1 for i, (cat_id, *_) in enumerate(stuff)}
    stuff_ids[0] = 0
    names = [name.replace("-other", "").replace("-merged", "") for _, name, _, _ in stuff]
    return {
        **coco_instances_metadata(),
        "stuff_classes": ["things"] + names,
        "stuff_colors": [list(_THINGS_STUFF_COLOR)] + [list(color) for *_, color in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_ids,
    }


def coco_panoptic_standard_metadata() -> Dict[str, Any]:
    """
    The standard panoptic layout: one contiguous id per category (things and stuff, 133 in id
    order); `thing_*` and `stuff_*` both list all of them, as Detectron2 does for its visualizer.
    """
    names = [name for _, name, _, _ in COCO_PANOPTIC_CATEGORIES]
    colors = [list(color) for *_, color in COCO_PANOPTIC_CATEGORIES]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {
            cat_id: i for i, (cat_id, _, isthing, _) in enumerate(COCO_PANOPTIC_CATEGORIES) if isthing
        },
        "stuff_dataset_id_to_contiguous_id": {
            cat_id: i for i, (cat_id, _, isthing, _) in enumerate(COCO_PANOPTIC_CATEGORIES) if not isthing
        },
    }


def lvis_metadata(version: str) -> Dict[str, Any]:
    """
    LVIS classes of `version` ("v0.5", "v1", or "v0.5_cocofied": COCO's 80 classes). Contiguous id
    = LVIS id - 1. `class_frequency` holds each class's frequency group ("r", "c", "f"); for v1,
    `class_image_count` holds the training images per class as Detectron2 stores it
    (`[{"id": lvis_id, "image_count": n}, ...]`), which the federated loss and repeat-factor
    sampling read.
    """
    if version == "v0.5_cocofied":
        return coco_instances_metadata()
    if version == "v0.5":
        return {
            "thing_classes": [name for name, _ in LVIS_V0_5_CATEGORIES],
            "class_frequency": [freq for _, freq in LVIS_V0_5_CATEGORIES],
        }
    if version == "v1":
        return {
            "thing_classes": [name for name, _, _ in LVIS_V1_CATEGORIES],
            "class_frequency": [freq for _, freq, _ in LVIS_V1_CATEGORIES],
            "class_image_count": [
                {"id": i + 1, "image_count": count} for i, (_, _, count) in enumerate(LVIS_V1_CATEGORIES)
            ],
        }
    raise ValueError(f"No builtin LVIS metadata for version '{version}'; known: v0.5, v0.5_cocofied, v1.")


def cityscapes_metadata() -> Dict[str, Any]:
    """Cityscapes' 8 instance classes (things) and 19 semantic classes (train ids 0..18)."""
    return {
        "thing_classes": [name for _, _, name, isthing, _ in CITYSCAPES_CATEGORIES if isthing],
        "thing_colors": [list(color) for *_, isthing, color in CITYSCAPES_CATEGORIES if isthing],
        "stuff_classes": [name for _, _, name, _, _ in CITYSCAPES_CATEGORIES],
        "stuff_colors": [list(color) for *_, color in CITYSCAPES_CATEGORIES],
    }


def ade20k_metadata() -> Dict[str, Any]:
    return {"stuff_classes": list(ADE20K_SEM_SEG_CLASSES)}


def pascal_voc_metadata() -> Dict[str, Any]:
    return {"thing_classes": list(PASCAL_VOC_CLASSES)}

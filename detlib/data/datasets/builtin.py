"""
Datasets every detlib user can name without registering them.

They live under `$DETLIB_DATASETS` (default `./datasets`):
    coco/annotations/instances_{train,val}2017.json, coco/{train,val,test}2017/   (COCO 2017)
    coco/annotations/person_keypoints_{train,val}2017.json                      (COCO 2017 keypoints)
    shapes/{train,val}/, shapes_kp/{train,val}/                                 (generated on first use)
"""

import os
from typing import Callable

from ..catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json, register_coco_instances
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes
from .shapes_keypoints import (
    KEYPOINT_FLIP_MAP,
    KEYPOINT_NAMES,
    KEYPOINT_SHAPES_CLASSES,
    KeypointShapesSpec,
    generate_keypoint_shapes,
)

__all__ = [
    "COCO_CATEGORIES",
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_KEYPOINT_FLIP_MAP",
    "SHAPES_SPLITS",
    "KEYPOINT_SHAPES_SPLITS",
    "register_all_coco",
    "register_shapes",
    "register_keypoint_shapes",
    "register_all_shapes",
]

# (COCO category id, name) of the 80 thing classes; ids are not contiguous.
COCO_CATEGORIES = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)

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

# name -> (image directory, annotation file), relative to the datasets root.
_COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}

# name -> (sub-directory, parameters). Sized so that a Mask R-CNN trains on them on a laptop CPU.
SHAPES_SPLITS = {
    "shapes_train": ("shapes/train", ShapesSpec(num_images=2000, seed=0)),
    "shapes_val": ("shapes/val", ShapesSpec(num_images=200, seed=1)),
}

# Visualization colours of the shape classes (RGB), one per entry of SHAPES_CLASSES.
_SHAPES_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]


_COCO_KEYPOINT_SPLITS = {
    "keypoints_coco_2017_train": ("coco/train2017", "coco/annotations/person_keypoints_train2017.json"),
    "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
    "keypoints_coco_2017_val_100": ("coco/val2017", "coco/annotations/person_keypoints_val2017_100.json"),
}

# Sized so that a Keypoint R-CNN trains on them on a CPU in minutes.
KEYPOINT_SHAPES_SPLITS = {
    "shapes_kp_train": ("shapes_kp/train", KeypointShapesSpec(num_images=1000, seed=0)),
    "shapes_kp_val": ("shapes_kp/val", KeypointShapesSpec(num_images=200, seed=1)),
}


def _coco_metadata() -> dict:
    return {
        "thing_classes": [name for _, name in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {cid: i for i, (cid, _) in enumerate(COCO_CATEGORIES)},
    }


def register_all_coco(root: str) -> None:
    for name, (image_dir, json_file) in _COCO_SPLITS.items():
        register_coco_instances(name, _coco_metadata(), os.path.join(root, json_file), os.path.join(root, image_dir))
    person = {
        "thing_classes": ["person"],
        "thing_dataset_id_to_contiguous_id": {1: 0},
        "keypoint_names": list(COCO_PERSON_KEYPOINT_NAMES),
        "keypoint_flip_map": list(COCO_PERSON_KEYPOINT_FLIP_MAP),
    }
    for name, (image_dir, json_file) in _COCO_KEYPOINT_SPLITS.items():
        register_coco_instances(name, person, os.path.join(root, json_file), os.path.join(root, image_dir))


class _ShapesMetadata(Metadata):
    """
    Metadata of a synthetic split whose `json_file` is written on first access: an evaluator may
    open the annotation file before anything has loaded the dataset.
    """

    def __init__(self, name: str, split_dir: str, spec, generate: Callable[..., str] = generate_shapes):
        super().__init__(name=name, image_root=os.path.join(split_dir, "images"))
        self._split = (split_dir, spec, generate)

    @property
    def json_file(self) -> str:
        if "_json_file" not in self.__dict__:  # checked (and generated if needed) once per process
            split_dir, spec, generate = self._split
            self._json_file = generate(spec, split_dir)
        return self._json_file


def register_shapes(name: str, split_dir: str, spec: ShapesSpec) -> None:
    """
    Registers a synthetic shapes split: its first use (`DatasetCatalog.get(name)` or reading the
    metadata's `json_file`) writes it to `split_dir`; later uses read it from there.
    """
    metadata = _ShapesMetadata(name, split_dir, spec)
    DatasetCatalog.register(name, lambda: load_coco_json(metadata.json_file, metadata.image_root, name))
    MetadataCatalog[name] = metadata.set(
        evaluator_type="coco",
        thing_classes=list(SHAPES_CLASSES),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
        thing_colors=list(_SHAPES_COLORS),
    )


def register_keypoint_shapes(name: str, split_dir: str, spec: KeypointShapesSpec) -> None:
    """Registers a synthetic keypoint shapes split, written to `split_dir` on first use (as `register_shapes`)."""
    metadata = _ShapesMetadata(name, split_dir, spec, generate_keypoint_shapes)
    DatasetCatalog.register(name, lambda: load_coco_json(metadata.json_file, metadata.image_root, name))
    MetadataCatalog[name] = metadata.set(
        evaluator_type="coco",
        thing_classes=list(KEYPOINT_SHAPES_CLASSES),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(KEYPOINT_SHAPES_CLASSES))},
        thing_colors=[_SHAPES_COLORS[SHAPES_CLASSES.index(c)] for c in KEYPOINT_SHAPES_CLASSES],
        keypoint_names=list(KEYPOINT_NAMES),
        keypoint_flip_map=list(KEYPOINT_FLIP_MAP),
    )


def register_all_shapes(root: str) -> None:
    for name, (subdir, spec) in SHAPES_SPLITS.items():
        register_shapes(name, os.path.join(root, subdir), spec)
    for name, (subdir, spec) in KEYPOINT_SHAPES_SPLITS.items():
        register_keypoint_shapes(name, os.path.join(root, subdir), spec)


_root = os.path.expanduser(os.getenv("DETLIB_DATASETS", "datasets"))
register_all_coco(_root)
register_all_shapes(_root)

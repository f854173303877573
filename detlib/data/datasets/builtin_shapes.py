"""The synthetic shapes datasets, generated under the datasets root on first use."""

import os
from typing import Callable

from ..catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes
from .shapes_keypoints import (
    KEYPOINT_FLIP_MAP,
    KEYPOINT_NAMES,
    KEYPOINT_SHAPES_CLASSES,
    KeypointShapesSpec,
    generate_keypoint_shapes,
)

__all__ = [
    "SHAPES_SPLITS",
    "KEYPOINT_SHAPES_SPLITS",
    "register_shapes",
    "register_keypoint_shapes",
    "register_all_shapes",
]

# name -> (sub-directory, parameters). Sized so that a Mask R-CNN trains on them on a laptop CPU.
SHAPES_SPLITS = {
    "shapes_train": ("shapes/train", ShapesSpec(num_images=2000, seed=0)),
    "shapes_val": ("shapes/val", ShapesSpec(num_images=200, seed=1)),
}

# Visualization colours of the shape classes (RGB), one per entry of SHAPES_CLASSES.
_SHAPES_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]


# Sized so that a Keypoint R-CNN trains on them on a CPU in minutes.
KEYPOINT_SHAPES_SPLITS = {
    "shapes_kp_train": ("shapes_kp/train", KeypointShapesSpec(num_images=1000, seed=0)),
    "shapes_kp_val": ("shapes_kp/val", KeypointShapesSpec(num_images=200, seed=1)),
}


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

"""The synthetic shapes datasets (also as LVIS and Pascal VOC files), generated under the datasets root on first use."""

import os
from typing import Callable, List

from ..catalog import DatasetCatalog, Metadata, MetadataCatalog
from .coco import load_coco_json
from .coco_panoptic import merge_to_panoptic
from .lvis import load_lvis_json
from .pascal_voc import load_voc_instances
from .sem_seg import load_sem_seg
from .shapes import SHAPES_CLASSES, ShapesSpec, generate_shapes
from .shapes_formats import SHAPES_STUFF_CLASSES, ensure_shapes_formats
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
    "register_shapes_lvis_and_voc",
    "register_shapes_panoptic",
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


class _ShapesFormatMetadata(Metadata):
    """Metadata of a shapes split in another format (shapes_formats.py), whose files are written on
    the first read of `json_file` or `dirname` (what the LVIS and VOC evaluators open)."""

    def __init__(self, name: str, out_dir: str, spec: ShapesSpec):
        super().__init__(name=name)
        self._split = (out_dir, spec)

    def _paths(self) -> dict:
        if "_written" not in self.__dict__:  # checked (and written if needed) once per process
            self._written = ensure_shapes_formats(self._split[1], self._split[0])
        return self._written

    @property
    def json_file(self) -> str:
        return self._paths()["lvis_json"]

    @property
    def dirname(self) -> str:
        return self._paths()["voc"]

    @property
    def panoptic_json(self) -> str:
        return self._paths()["panoptic_json"]

    @property
    def panoptic_root(self) -> str:
        return self._paths()["panoptic"]


def register_shapes_lvis_and_voc(prefix: str, out_dir: str, spec: ShapesSpec) -> None:
    """
    Registers `{prefix}_lvis` (LVIS json: federated negative and not-exhaustive categories, frequency
    groups) and `{prefix}_voc` (VOC XML, 2007 metric) made from the shapes split of `spec`, written
    to `out_dir` on first use.
    """
    lvis, voc = f"{prefix}_lvis", f"{prefix}_voc"
    lvis_meta, voc_meta = _ShapesFormatMetadata(lvis, out_dir, spec), _ShapesFormatMetadata(voc, out_dir, spec)
    DatasetCatalog.register(lvis, lambda: load_lvis_json(lvis_meta.json_file, out_dir, lvis))
    MetadataCatalog[lvis] = lvis_meta.set(
        evaluator_type="lvis", image_root=out_dir, thing_classes=list(SHAPES_CLASSES), thing_colors=list(_SHAPES_COLORS)
    )
    DatasetCatalog.register(voc, lambda: load_voc_instances(voc_meta.dirname, "val", SHAPES_CLASSES))
    MetadataCatalog[voc] = voc_meta.set(
        evaluator_type="pascal_voc", split="val", year=2007, thing_classes=list(SHAPES_CLASSES)
    )


class _ShapesPanopticMetadata(_ShapesFormatMetadata):
    """As `_ShapesFormatMetadata`, with `json_file` the COCO instances json (what COCOEvaluator reads)."""

    @property
    def json_file(self) -> str:
        return self._paths()["instances_json"]


def register_shapes_panoptic(prefix: str, out_dir: str, spec: ShapesSpec) -> None:
    """
    Registers `{prefix}_panoptic_separated` (Panoptic FPN's layout: the shapes as instances, a
    semantic map with class 0 for every shape pixel and 1 for the background; scored by COCO AP,
    mIoU and PQ) and `{prefix}_sem_seg` (background + the 4 shapes as semantic classes), made from
    the shapes split of `spec` and written to `out_dir` on first use.
    """
    separated, semantic = f"{prefix}_panoptic_separated", f"{prefix}_sem_seg"
    meta = _ShapesPanopticMetadata(separated, out_dir, spec)
    semantic_meta = _ShapesFormatMetadata(semantic, out_dir, spec)

    def load_separated() -> List[dict]:
        paths = meta._paths()
        instances = load_coco_json(paths["instances_json"], paths["images"], separated)
        return merge_to_panoptic(instances, load_sem_seg(paths["panoptic_stuff"], paths["images"]))

    def load_semantic() -> List[dict]:
        paths = semantic_meta._paths()
        return load_sem_seg(paths["sem_seg"], paths["images"])

    DatasetCatalog.register(separated, load_separated)
    MetadataCatalog[separated] = meta.set(
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        thing_classes=list(SHAPES_CLASSES),
        thing_colors=list(_SHAPES_COLORS),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
        stuff_classes=["things", "background"],
        stuff_colors=[(82, 18, 128), (128, 128, 128)],
        stuff_dataset_id_to_contiguous_id={0: 0, len(SHAPES_CLASSES) + 1: 1},
    )
    DatasetCatalog.register(semantic, load_semantic)
    MetadataCatalog[semantic] = semantic_meta.set(
        evaluator_type="sem_seg", ignore_label=255, stuff_classes=list(SHAPES_STUFF_CLASSES)
    )


def register_all_shapes(root: str) -> None:
    for name, (subdir, spec) in SHAPES_SPLITS.items():
        register_shapes(name, os.path.join(root, subdir), spec)
        split = name[len("shapes_") :]
        register_shapes_lvis_and_voc(f"shapes_{split}", os.path.join(root, "shapes_formats", split), spec)
        register_shapes_panoptic(f"shapes_{split}", os.path.join(root, "shapes_formats", split), spec)
    for name, (subdir, spec) in KEYPOINT_SHAPES_SPLITS.items():
        register_keypoint_shapes(name, os.path.join(root, subdir), spec)

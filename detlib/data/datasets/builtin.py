"""
Datasets every detlib user can name without registering them, with Detectron2's names and on-disk
layout (docs/datasets.md lists them), under the datasets root: `$DETLIB_DATASETS`, else
`$DETECTRON2_DATASETS` (so an existing Detectron2 tree is found), else `./datasets`.

Registering reads nothing: a dataset whose files are missing fails when it is used, with an error
naming the dataset, the missing path and the variables that set the root.
"""

import os
from typing import Callable, List, Sequence

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import (
    COCO_CATEGORIES,
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    ade20k_metadata,
    cityscapes_metadata,
    coco_instances_metadata,
    coco_panoptic_separated_metadata,
    coco_panoptic_standard_metadata,
    coco_person_metadata,
)
from .builtin_shapes import (
    KEYPOINT_SHAPES_SPLITS,
    SHAPES_SPLITS,
    register_all_shapes,
    register_keypoint_shapes,
    register_shapes,
)
from .cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from .coco import register_coco_instances
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated
from .lvis import get_lvis_instances_meta, register_lvis_instances
from .pascal_voc import register_pascal_voc
from .sem_seg import register_sem_seg

__all__ = [
    "COCO_CATEGORIES",
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_KEYPOINT_FLIP_MAP",
    "DATASETS_ROOT_VARIABLES",
    "SHAPES_SPLITS",
    "KEYPOINT_SHAPES_SPLITS",
    "datasets_root",
    "register_all_coco",
    "register_all_lvis",
    "register_all_cityscapes",
    "register_all_pascal_voc",
    "register_all_ade20k",
    "register_all_shapes",
    "register_shapes",
    "register_keypoint_shapes",
]

# The environment variables naming the datasets root, the first set one wins.
DATASETS_ROOT_VARIABLES = ("DETLIB_DATASETS", "DETECTRON2_DATASETS")


def datasets_root() -> str:
    """The directory the builtin datasets live in (see the module's docstring)."""
    for variable in DATASETS_ROOT_VARIABLES:
        if os.getenv(variable):
            return os.path.expanduser(os.environ[variable])
    return "datasets"


def _require_paths(name: str, paths: Sequence[str]) -> None:
    """Makes dataset `name`'s loader check that `paths` exist before it loads anything."""
    load = DatasetCatalog[name]

    def checked_load() -> List[dict]:
        for path in paths:
            if not os.path.exists(path):
                set_by = [v for v in DATASETS_ROOT_VARIABLES if os.getenv(v)]
                source = f"from ${set_by[0]}" if set_by else "the default: neither variable is set"
                raise FileNotFoundError(
                    f"Dataset '{name}' needs {path}, which does not exist. The datasets root is "
                    f"'{datasets_root()}' ({source}); put the dataset under it as docs/datasets.md shows, or set "
                    f"{DATASETS_ROOT_VARIABLES[0]} (or {DATASETS_ROOT_VARIABLES[1]}) to the directory that holds it."
                )
        return load()

    DatasetCatalog[name] = checked_load


# name -> (image directory, annotation file), relative to the datasets root.
_COCO_SPLITS = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": ("coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}

_COCO_KEYPOINT_SPLITS = {
    "keypoints_coco_2014_train": ("coco/train2014", "coco/annotations/person_keypoints_train2014.json"),
    "keypoints_coco_2014_val": ("coco/val2014", "coco/annotations/person_keypoints_val2014.json"),
    "keypoints_coco_2014_minival": ("coco/val2014", "coco/annotations/person_keypoints_minival2014.json"),
    "keypoints_coco_2014_valminusminival": (
        "coco/val2014",
        "coco/annotations/person_keypoints_valminusminival2014.json",
    ),
    "keypoints_coco_2017_train": ("coco/train2017", "coco/annotations/person_keypoints_train2017.json"),
    "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
    "keypoints_coco_2017_val_100": ("coco/val2017", "coco/annotations/person_keypoints_val2017_100.json"),
}

# prefix -> (panoptic PNG directory, panoptic json, semantic PNG directory for the separated layout).
# The instances split is the prefix without "_panoptic".
_COCO_PANOPTIC_SPLITS = {
    f"coco_2017_{split}_panoptic": (
        f"coco/panoptic_{files}",
        f"coco/annotations/panoptic_{files}.json",
        f"coco/panoptic_stuff_{files}",
    )
    for split, files in (("train", "train2017"), ("val", "val2017"), ("val_100", "val2017_100"))
}


def register_all_coco(root: str) -> None:
    """COCO 2014 / 2017 instances and person keypoints, and COCO 2017 panoptic in its three layouts."""
    for name, (image_dir, json_file) in _COCO_SPLITS.items():
        paths = (os.path.join(root, json_file), os.path.join(root, image_dir))
        register_coco_instances(name, coco_instances_metadata(), paths[0], paths[1])
        _require_paths(name, paths)
    for name, (image_dir, json_file) in _COCO_KEYPOINT_SPLITS.items():
        paths = (os.path.join(root, json_file), os.path.join(root, image_dir))
        register_coco_instances(name, coco_person_metadata(), paths[0], paths[1])
        _require_paths(name, paths)
    for prefix, (panoptic_dir, panoptic_json, semantic_dir) in _COCO_PANOPTIC_SPLITS.items():
        image_dir, instances_json = (os.path.join(root, p) for p in _COCO_SPLITS[prefix[: -len("_panoptic")]])
        panoptic_dir, panoptic_json, semantic_dir = (
            os.path.join(root, p) for p in (panoptic_dir, panoptic_json, semantic_dir)
        )
        register_coco_panoptic_separated(
            prefix,
            coco_panoptic_separated_metadata(),
            image_dir,
            panoptic_dir,
            panoptic_json,
            semantic_dir,
            instances_json,
        )
        _require_paths(prefix + "_separated", (instances_json, image_dir, semantic_dir))
        _require_paths(prefix + "_stuffonly", (image_dir, semantic_dir))
        register_coco_panoptic(
            prefix, coco_panoptic_standard_metadata(), image_dir, panoptic_dir, panoptic_json, instances_json
        )
        _require_paths(prefix, (panoptic_json, image_dir, panoptic_dir))


# name -> annotation file; the images are COCO's, under coco/.
_LVIS_SPLITS = {
    "lvis_v1_train": "lvis/lvis_v1_train.json",
    "lvis_v1_val": "lvis/lvis_v1_val.json",
    "lvis_v1_test_dev": "lvis/lvis_v1_image_info_test_dev.json",
    "lvis_v1_test_challenge": "lvis/lvis_v1_image_info_test_challenge.json",
    "lvis_v0.5_train": "lvis/lvis_v0.5_train.json",
    "lvis_v0.5_val": "lvis/lvis_v0.5_val.json",
    "lvis_v0.5_val_rand_100": "lvis/lvis_v0.5_val_rand_100.json",
    "lvis_v0.5_test": "lvis/lvis_v0.5_image_info_test.json",
    "lvis_v0.5_train_cocofied": "lvis/lvis_v0.5_train_cocofied.json",
    "lvis_v0.5_val_cocofied": "lvis/lvis_v0.5_val_cocofied.json",
}


def register_all_lvis(root: str) -> None:
    for name, json_file in _LVIS_SPLITS.items():
        paths = (os.path.join(root, json_file), os.path.join(root, "coco"))
        register_lvis_instances(name, get_lvis_instances_meta(name), paths[0], paths[1])
        _require_paths(name, paths)


def _register_lazy(name: str, loader: Callable[[], List[dict]], paths: Sequence[str], **metadata) -> None:
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    _require_paths(name, paths)


def register_all_cityscapes(root: str) -> None:
    """`cityscapes_fine_{instance_seg,sem_seg}_{train,val,test}` over leftImg8bit/ and gtFine/."""
    for split in ("train", "val", "test"):
        image_dir = os.path.join(root, "cityscapes", "leftImg8bit", split)
        gt_dir = os.path.join(root, "cityscapes", "gtFine", split)
        common = dict(image_dir=image_dir, gt_dir=gt_dir, **cityscapes_metadata())
        _register_lazy(
            f"cityscapes_fine_instance_seg_{split}",
            lambda x=image_dir, y=gt_dir: load_cityscapes_instances(x, y),
            (image_dir, gt_dir),
            evaluator_type="cityscapes_instance",
            **common,
        )
        _register_lazy(
            f"cityscapes_fine_sem_seg_{split}",
            lambda x=image_dir, y=gt_dir: load_cityscapes_semantic(x, y),
            (image_dir, gt_dir),
            evaluator_type="cityscapes_sem_seg",
            ignore_label=255,
            **common,
        )


_PASCAL_VOC_SPLITS = (
    ("voc_2007_trainval", "VOC2007", "trainval"),
    ("voc_2007_train", "VOC2007", "train"),
    ("voc_2007_val", "VOC2007", "val"),
    ("voc_2007_test", "VOC2007", "test"),
    ("voc_2012_trainval", "VOC2012", "trainval"),
    ("voc_2012_train", "VOC2012", "train"),
    ("voc_2012_val", "VOC2012", "val"),
)


def register_all_pascal_voc(root: str) -> None:
    for name, directory, split in _PASCAL_VOC_SPLITS:
        dirname = os.path.join(root, directory)
        register_pascal_voc(name, dirname, split, int(directory[-4:]))
        _require_paths(name, (os.path.join(dirname, "ImageSets", "Main", split + ".txt"),))


def register_all_ade20k(root: str) -> None:
    """`ade20k_sem_seg_{train,val}`: ADEChallengeData2016 with labels as written by Detectron2's
    prepare_ade20k_sem_seg.py (annotations_detectron2/: class ids 0..149, 255 ignored)."""
    base = os.path.join(root, "ADEChallengeData2016")
    for split, directory in (("train", "training"), ("val", "validation")):
        name = f"ade20k_sem_seg_{split}"
        image_dir = os.path.join(base, "images", directory)
        gt_dir = os.path.join(base, "annotations_detectron2", directory)
        register_sem_seg(name, ade20k_metadata(), gt_dir, image_dir, gt_ext="png", image_ext="jpg")
        _require_paths(name, (gt_dir, image_dir))


def register_all(root: str) -> None:
    register_all_coco(root)
    register_all_lvis(root)
    register_all_cityscapes(root)
    register_all_pascal_voc(root)
    register_all_ade20k(root)
    register_all_shapes(root)


register_all(datasets_root())

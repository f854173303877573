import hashlib
import json
import os

import cv2
import numpy as np
from pycocotools.coco import COCO

from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.datasets import SHAPES_CLASSES, ShapesSpec, generate_shapes, load_coco_json
from detlib.data.datasets.builtin import register_shapes

SPEC = ShapesSpec(num_images=24, seed=5)


def _digest(directory):
    """sha256 of every file under `directory`, by relative path."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate_shapes(SPEC, str(tmp_path / "a"))
    generate_shapes(SPEC, str(tmp_path / "b"))
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert len(a) == SPEC.num_images + 1 and a == b
    generate_shapes(ShapesSpec(num_images=24, seed=6), str(tmp_path / "c"))
    c = _digest(tmp_path / "c")
    assert c.keys() == a.keys() and all(c[k] != a[k] for k in a)


def test_existing_split_is_reused_and_changed_parameters_regenerate(tmp_path):
    split = str(tmp_path / "s")
    json_file = generate_shapes(SPEC, split)
    stamp = os.stat(json_file).st_mtime_ns
    generate_shapes(SPEC, split)
    assert os.stat(json_file).st_mtime_ns == stamp
    generate_shapes(ShapesSpec(num_images=3, seed=5), split)
    assert len(json.load(open(json_file))["images"]) == 3
    assert len(os.listdir(os.path.join(split, "images"))) == 3


def test_masks_match_boxes_and_painted_pixels(tmp_path):
    json_file = generate_shapes(SPEC, str(tmp_path / "s"))
    api = COCO(json_file)
    kinds = set()
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(SHAPES_CLASSES)
    for img in api.loadImgs(api.getImgIds()):
        image = cv2.imread(str(tmp_path / "s" / "images" / img["file_name"]))
        assert image.shape == (img["height"], img["width"], 3)
        anns = api.loadAnns(api.getAnnIds(imgIds=[img["id"]]))
        assert 1 <= len(anns) <= SPEC.max_objects
        union = np.zeros(image.shape[:2], bool)
        for ann in anns:
            kinds.add(type(ann["segmentation"]).__name__)
            mask = api.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == mask.sum()
            # the mask is exactly the object's pixels: one solid colour, unlike the pixels around it
            colours = np.unique(image[mask], axis=0)
            assert len(colours) == 1, (img["id"], ann["id"])
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
            assert (image[ring] != colours[0]).any(axis=1).mean() > 0.9
            assert not (union & mask).any(), "visible masks of one image must not overlap"
            union |= mask
            if ann["category_id"] == SHAPES_CLASSES.index("ring") + 1:
                assert isinstance(ann["segmentation"], dict)  # a hole: RLE, never a polygon
    assert kinds == {"list", "dict"}


def test_registered_split_generates_on_first_use(tmp_path):
    name = "shapes_test_tmp"
    register_shapes(name, str(tmp_path / "split"), ShapesSpec(num_images=4, seed=1))
    try:
        meta = MetadataCatalog.get(name)
        assert not os.path.exists(tmp_path / "split")
        records = DatasetCatalog.get(name)
        assert len(records) == 4 and os.path.exists(tmp_path / "split" / "annotations.json")
        assert meta.thing_classes == list(SHAPES_CLASSES) and meta.evaluator_type == "coco"
        assert records == load_coco_json(meta.json_file, meta.image_root)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_reading_json_file_metadata_generates_the_split(tmp_path):
    """An evaluator may open the COCO json before the dataset was ever loaded."""
    name = "shapes_test_json_first"
    register_shapes(name, str(tmp_path / "split"), ShapesSpec(num_images=2, seed=1))
    try:
        json_file = MetadataCatalog.get(name).json_file
        assert len(COCO(json_file).getImgIds()) == 2
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_builtin_shapes_splits_are_registered():
    assert {"shapes_train", "shapes_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("shapes_val").thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}

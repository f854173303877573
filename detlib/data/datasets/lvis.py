"""LVIS instances JSON -> detlib dataset records."""

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from detlib.structures import BoxMode

from ..bad_samples import BadSampleError
from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import lvis_metadata
from .coco import _check_bbox, _check_segmentation, _read_json, _require

__all__ = ["load_lvis_json", "register_lvis_instances", "get_lvis_instances_meta"]

logger = logging.getLogger(__name__)


def get_lvis_instances_meta(dataset_name: str) -> Dict[str, Any]:
    """The builtin metadata of an LVIS dataset from its name ("lvis_v1_val", "lvis_v0.5_train_cocofied", ...)."""
    if "cocofied" in dataset_name:
        return lvis_metadata("v0.5_cocofied")
    if "v0.5" in dataset_name:
        return lvis_metadata("v0.5")
    if "v1" in dataset_name:
        return lvis_metadata("v1")
    raise ValueError(f"No builtin LVIS metadata for dataset '{dataset_name}' (its name names no LVIS version).")


def _image_file(image_root: str, image: dict) -> str:
    """LVIS images are COCO's: the split directory ("train2017", "val2017") is read off `coco_url`."""
    if "coco_url" in image:
        split_dir, file_name = image["coco_url"].split("/")[-2:]
        return os.path.join(image_root, split_dir, file_name)
    return os.path.join(image_root, image["file_name"])


def _metadata_from_categories(categories: List[dict], json_file: str) -> Dict[str, Any]:
    categories = sorted(categories, key=lambda c: c["id"])
    for cat in categories:
        _require(cat, ("name", "frequency"), f"{json_file}, category id {cat['id']}")
    metadata = {
        "thing_classes": [(cat.get("synonyms") or [cat["name"]])[0] for cat in categories],
        "class_frequency": [cat["frequency"] for cat in categories],
    }
    if all("image_count" in cat for cat in categories):
        metadata["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]} for c in categories]
    return metadata


def load_lvis_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[Sequence[str]] = None,
) -> List[dict]:
    """
    Loads an LVIS json file into detlib's record format, one record per image in increasing id order.

    Records hold `file_name` (under `image_root`, in the split directory named by the image's
    `coco_url`), `height`, `width`, `image_id`, the image's `neg_category_ids` and
    `not_exhaustive_category_ids` (LVIS ids, as in the file) and `annotations` with `bbox`
    (XYWH_ABS), `bbox_mode`, `category_id` (contiguous: LVIS id - 1, or through the dataset's
    `thing_dataset_id_to_contiguous_id` for the cocofied subsets) and `segmentation` (polygons).

    With `dataset_name`, the dataset's builtin metadata (when it has one) is set. Bad content
    raises `BadSampleError` naming the file, the image or annotation and the field.
    """
    data = _read_json(json_file)
    categories = data["categories"]
    for i, cat in enumerate(categories):
        _require(cat, ("id",), f"{json_file}, categories[{i}]")
    category_ids = {cat["id"] for cat in categories}

    id_map = None
    if dataset_name is not None:
        metadata = MetadataCatalog.get(dataset_name)
        try:
            metadata.set(**get_lvis_instances_meta(dataset_name))
        except ValueError:  # not a builtin name: the classes come from the file
            metadata.set(**_metadata_from_categories(categories, json_file))
        id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is None:
        if category_ids != set(range(1, len(categories) + 1)):
            raise BadSampleError(f"{json_file}: LVIS category ids must be 1..{len(categories)}.")
        id_map = {cat_id: cat_id - 1 for cat_id in category_ids}

    records: Dict[Any, dict] = {}
    for i, img in enumerate(data["images"]):
        where = f"{json_file}, images[{i}]"
        _require(img, ("id", "height", "width"), where)
        if "coco_url" not in img and "file_name" not in img:
            raise BadSampleError(f"{where}: field 'coco_url' (or 'file_name') is missing.")
        if img["id"] in records:
            raise BadSampleError(f"{json_file}, image id {img['id']}: field 'id' is duplicated.")
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            unknown = set(img.get(key, ())) - category_ids
            if unknown:
                raise BadSampleError(
                    f"{json_file}, image id {img['id']}: field '{key}' has unknown ids {sorted(unknown)}."
                )
        records[img["id"]] = {
            "file_name": _image_file(image_root, img),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "not_exhaustive_category_ids": list(img.get("not_exhaustive_category_ids", [])),
            "neg_category_ids": list(img.get("neg_category_ids", [])),
            "annotations": [],
        }

    seen_ids = set()
    extra_keys = tuple(extra_annotation_keys or ())
    for i, ann in enumerate(data.get("annotations", [])):
        where = f"{json_file}, annotation id {ann.get('id', f'<none, index {i}>')}"
        _require(ann, ("id", "image_id", "bbox", "category_id", "segmentation") + extra_keys, where)
        if ann["id"] in seen_ids:
            raise BadSampleError(f"{where}: field 'id' is duplicated.")
        seen_ids.add(ann["id"])
        record = records.get(ann["image_id"])
        if record is None:
            raise BadSampleError(f"{where}: field 'image_id' is {ann['image_id']!r}, which is not in 'images'.")
        if ann["category_id"] not in id_map:
            raise BadSampleError(f"{where}: field 'category_id' is {ann['category_id']!r}, an unknown category.")
        segmentation = _check_segmentation(ann["segmentation"], record["height"], record["width"], where)
        if not isinstance(segmentation, list) or len(segmentation) != len(ann["segmentation"]):
            raise BadSampleError(f"{where}: field 'segmentation' must be polygons of at least 3 points each.")
        obj = {
            "bbox": _check_bbox(ann["bbox"], where),
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": id_map[ann["category_id"]],
            "segmentation": segmentation,
        }
        obj.update({key: ann[key] for key in extra_keys})
        record["annotations"].append(obj)
    logger.info("Loaded %d images in the LVIS format from %s.", len(records), json_file)
    return [records[image_id] for image_id in sorted(records)]


def register_lvis_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """
    Registers an LVIS-format dataset under `name`, loaded by `load_lvis_json` when used; its
    metadata gets `metadata`, `json_file`, `image_root` and `evaluator_type="lvis"`.
    """
    DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis", **metadata)

"""COCO instances JSON <-> detlib dataset records."""

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

from detlib.structures import BoxMode
from detlib.utils.atomic_write import atomic_write

from ..bad_samples import BadSampleError, SkipCounter, skipping_bad_samples
from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_coco_json", "register_coco_instances", "convert_to_coco_dict", "convert_to_coco_json"]

logger = logging.getLogger(__name__)

# Annotation fields copied into every record's annotations, besides those the loader computes.
_ANNOTATION_KEYS = ("iscrowd", "bbox", "category_id")


def _read_json(json_file: str) -> Dict[str, Any]:
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BadSampleError(f"{json_file}: not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise BadSampleError(f"{json_file}: not a COCO instances file (top level is a {kind}, not an object).")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise BadSampleError(f"{json_file}: not a COCO instances file (field '{key}' missing or not a list).")
    if not isinstance(data.get("annotations", []), list):
        raise BadSampleError(f"{json_file}: not a COCO instances file (field 'annotations' is not a list).")
    return data


def _require(entry: dict, keys: Sequence[str], where: str) -> None:
    for key in keys:
        if key not in entry:
            raise BadSampleError(f"{where}: field '{key}' is missing.")


def _check_bbox(bbox: Any, where: str) -> List[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise BadSampleError(f"{where}: field 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}.")
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError) as e:
        raise BadSampleError(f"{where}: field 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}.") from e
    if not all(math.isfinite(v) for v in values):
        raise BadSampleError(f"{where}: field 'bbox' has a non-finite value: {bbox!r}.")
    if values[2] < 0 or values[3] < 0:
        raise BadSampleError(f"{where}: field 'bbox' has a negative width or height: {bbox!r}.")
    return values


def _check_segmentation(segm: Any, height: int, width: int, where: str) -> Any:
    """
    Returns the segmentation as polygons (list of flat float lists) or compressed RLE. Polygons with
    fewer than 3 points enclose no area and are left out (real COCO files have a few); None means
    no polygon was left.
    """
    if isinstance(segm, dict):
        _require(segm, ("size", "counts"), f"{where}, field 'segmentation'")
        if list(segm["size"]) != [height, width]:
            raise BadSampleError(
                f"{where}: field 'segmentation.size' is {segm['size']} but the image is {[height, width]} (h, w)."
            )
        if isinstance(segm["counts"], list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, height, width)
        return segm
    if isinstance(segm, list):
        if not all(isinstance(p, list) and len(p) % 2 == 0 for p in segm):
            raise BadSampleError(
                f"{where}: field 'segmentation' has a polygon that is not an even-length list of numbers."
            )
        polygons = [p for p in segm if len(p) >= 6]
        if not all(np.isfinite(np.asarray(p, dtype=np.float64)).all() for p in polygons):
            raise BadSampleError(f"{where}: field 'segmentation' has a non-finite polygon coordinate.")
        return polygons or None
    raise BadSampleError(
        f"{where}: field 'segmentation' must be a list of polygons or an RLE dict, got {type(segm).__name__}."
    )


def _check_keypoints(keypoints: Any, num_keypoints: Optional[int], where: str) -> List[float]:
    """
    COCO keypoints [x1, y1, v1, ...] -> the same list with x, y moved to pixel centers (+0.5).
    COCO writes keypoints as integer pixel indices in [0, W - 1], while boxes and polygons are
    continuous coordinates in [0, W]; the half-pixel shift puts both in the same frame.
    """
    if not isinstance(keypoints, list) or len(keypoints) % 3 != 0:
        raise BadSampleError(f"{where}: field 'keypoints' must be a flat list of (x, y, v) triples, got {keypoints!r}.")
    if num_keypoints is not None and len(keypoints) != 3 * num_keypoints:
        raise BadSampleError(
            f"{where}: field 'keypoints' has {len(keypoints) // 3} keypoints, but its category names {num_keypoints}."
        )
    try:
        values = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError) as e:
        raise BadSampleError(f"{where}: field 'keypoints' must hold numbers only.") from e
    if not np.isfinite(values).all():
        raise BadSampleError(f"{where}: field 'keypoints' has a non-finite value.")
    if not np.isin(values[:, 2], (0, 1, 2)).all():
        raise BadSampleError(
            f"{where}: field 'keypoints' has a visibility that is not 0, 1 or 2: {values[:, 2].tolist()}."
        )
    values[:, :2] += 0.5
    return values.ravel().tolist()


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[Sequence[str]] = None,
) -> List[dict]:
    """
    Loads a COCO instances JSON file into detlib's record format.

    Each record has `file_name` (joined with `image_root`), `height`, `width`, `image_id` and
    `annotations`: dicts with `bbox` (XYWH absolute pixels), `bbox_mode` (`BoxMode.XYWH_ABS`),
    `category_id` (contiguous 0..K-1, in increasing order of the file's category ids), `iscrowd`
    and, if present, `segmentation` (polygons, or compressed RLE; uncompressed RLE is compressed)
    and `keypoints` (flat [x, y, v, ...] with x, y moved by +0.5 from COCO's integer pixel indices
    to pixel centers; their number must match the category's `keypoints` names when it has them).

    With `dataset_name`, sets that dataset's `thing_classes` and
    `thing_dataset_id_to_contiguous_id` metadata.

    Bad content raises `BadSampleError` naming the file, the image or annotation id and the field;
    inside `skip_bad_samples()`, a bad annotation (bad box, unknown category, missing image id,
    malformed segmentation) is dropped with a warning instead. A file that is not COCO always raises.
    """
    data = _read_json(json_file)

    categories = data["categories"]
    for i, cat in enumerate(categories):
        _require(cat, ("id", "name"), f"{json_file}, categories[{i}]")
    categories = sorted(categories, key=lambda c: c["id"])
    id_map = {cat["id"]: i for i, cat in enumerate(categories)}
    keypoint_counts = {cat["id"]: len(cat["keypoints"]) for cat in categories if isinstance(cat.get("keypoints"), list)}
    if len(id_map) != len(categories):
        raise BadSampleError(f"{json_file}: field 'categories' has duplicate ids.")
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=[c["name"] for c in categories], thing_dataset_id_to_contiguous_id=id_map
        )

    records: Dict[Any, dict] = {}
    for i, img in enumerate(data["images"]):
        _require(img, ("id", "file_name", "height", "width"), f"{json_file}, images[{i}]")
        if img["id"] in records:
            raise BadSampleError(f"{json_file}, image id {img['id']}: field 'id' is duplicated.")
        records[img["id"]] = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "annotations": [],
        }

    skip = skipping_bad_samples()
    skipped = SkipCounter(f"annotation in {json_file}")
    without_area = []
    extra_keys = tuple(extra_annotation_keys or ())
    for i, ann in enumerate(data.get("annotations", [])):
        where = f"{json_file}, annotation id {ann.get('id', f'<none, index {i}>')}"
        try:
            obj = _parse_annotation(ann, records, id_map, extra_keys, where)
            if ann.get("keypoints"):  # an empty list is COCO's "no keypoints"
                obj["keypoints"] = _check_keypoints(ann["keypoints"], keypoint_counts.get(ann["category_id"]), where)
        except BadSampleError as e:
            if not skip:
                raise
            skipped.skip(e)
            continue
        if "segmentation" in obj and obj["segmentation"] is None:
            without_area.append(ann.get("id"))
            continue
        records[ann["image_id"]]["annotations"].append(obj)
    if skipped.count:
        logger.warning("Skipped %d bad annotations in total while loading %s.", skipped.count, json_file)
    if without_area:
        logger.warning(
            "Left out %d annotations of %s whose polygons all have fewer than 3 points (no area); ids: %s",
            len(without_area),
            json_file,
            without_area[:10],
        )
    logger.info("Loaded %d images from %s.", len(records), json_file)
    return list(records.values())


def _parse_annotation(ann: dict, records: Dict[Any, dict], id_map: Dict[int, int], extra_keys, where: str) -> dict:
    _require(ann, ("image_id", "bbox", "category_id"), where)
    record = records.get(ann["image_id"])
    if record is None:
        raise BadSampleError(f"{where}: field 'image_id' is {ann['image_id']!r}, which is not in 'images'.")
    if ann["category_id"] not in id_map:
        raise BadSampleError(
            f"{where}: field 'category_id' is {ann['category_id']!r}, which is not in 'categories' {sorted(id_map)}."
        )
    obj = {key: ann[key] for key in _ANNOTATION_KEYS + tuple(extra_keys) if key in ann}
    obj["bbox"] = _check_bbox(ann["bbox"], where)
    obj["bbox_mode"] = BoxMode.XYWH_ABS
    obj["category_id"] = id_map[ann["category_id"]]
    obj.setdefault("iscrowd", 0)
    if "segmentation" in ann:
        obj["segmentation"] = _check_segmentation(ann["segmentation"], record["height"], record["width"], where)
    return obj


def register_coco_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """
    Registers a COCO-format instances dataset under `name`: records come from
    `load_coco_json(json_file, image_root, name)` when the dataset is used; `metadata` (for example
    `thing_colors`) goes to `MetadataCatalog.get(name)` together with `json_file`, `image_root` and
    `evaluator_type="coco"`.
    """
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)


def _polygon_area(polygons: List[List[float]]) -> float:
    """Sum of the shoelace areas of the polygons (flat [x0, y0, x1, y1, ...] lists)."""
    area = 0.0
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        area += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return area


def convert_to_coco_dict(dataset_name: str) -> dict:
    """
    The registered dataset `dataset_name` as a COCO instances dict: boxes in XYWH absolute pixels,
    keypoints (with `num_keypoints`) shifted back to COCO's integer pixel indices,
    category ids mapped back to the dataset's own ids when its metadata has
    `thing_dataset_id_to_contiguous_id` (else the contiguous id is used as is),
    RLE counts as str, `area` from the mask when there is one, else from the box.
    """
    records = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    to_dataset_id = {v: k for k, v in id_map.items()} if id_map else None
    classes = metadata.get("thing_classes")
    if classes is None:
        raise ValueError(f"Dataset '{dataset_name}' has no 'thing_classes' metadata; cannot write COCO categories.")
    categories = [{"id": to_dataset_id[i] if to_dataset_id else i, "name": name} for i, name in enumerate(classes)]

    images, annotations = [], []
    for record in records:
        images.append({key: record[key] for key in ("width", "height", "file_name")} | {"id": record["image_id"]})
        for obj in record.get("annotations", []):
            bbox = BoxMode.convert(list(obj["bbox"]), obj["bbox_mode"], BoxMode.XYWH_ABS)
            ann = {
                "id": len(annotations) + 1,
                "image_id": record["image_id"],
                "bbox": [float(v) for v in bbox],
                "category_id": to_dataset_id[obj["category_id"]] if to_dataset_id else obj["category_id"],
                "iscrowd": int(obj.get("iscrowd", 0)),
            }
            segm = obj.get("segmentation")
            if isinstance(segm, list):
                ann["segmentation"] = segm
                ann["area"] = _polygon_area(segm)
            elif isinstance(segm, dict):
                if isinstance(segm["counts"], list):
                    segm = mask_util.frPyObjects(segm, *segm["size"])
                counts = segm["counts"]
                counts = counts.decode() if isinstance(counts, bytes) else counts
                ann["segmentation"] = {"size": list(segm["size"]), "counts": counts}
                ann["area"] = float(mask_util.area(segm))
            else:
                ann["area"] = float(bbox[2] * bbox[3])
            if obj.get("keypoints"):
                # Back from pixel centers to COCO's integer pixel indices; unlabeled points stay 0.
                keypoints = np.asarray(obj["keypoints"], dtype=np.float64).reshape(-1, 3)
                labeled = keypoints[:, 2] > 0
                keypoints[:, :2] = np.where(labeled[:, None], keypoints[:, :2] - 0.5, 0.0)
                ann["keypoints"] = keypoints.ravel().tolist()
                ann["num_keypoints"] = int(labeled.sum())
            annotations.append(ann)

    return {
        "info": {"description": f"detlib conversion of dataset '{dataset_name}'"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
        "licenses": [],
    }


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> None:
    """
    Writes `convert_to_coco_dict(dataset_name)` to `output_file` (atomically: a reader never sees a
    partial file). With `allow_cached`, an existing file is reused as is.
    """
    if allow_cached and os.path.exists(output_file):
        logger.info("Reusing the cached COCO json of '%s' at %s.", dataset_name, output_file)
        return
    coco_dict = convert_to_coco_dict(dataset_name)
    with atomic_write(output_file, "w") as f:
        json.dump(coco_dict, f)
    logger.info("Wrote the COCO json of '%s' (%d images) to %s.", dataset_name, len(coco_dict["images"]), output_file)

"""COCO panoptic segmentation: the standard layout (PNG + segments_info) and Panoptic FPN's separated one."""

import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..bad_samples import BadSampleError
from ..catalog import DatasetCatalog, MetadataCatalog
from .coco import _require, load_coco_json
from .sem_seg import load_sem_seg

__all__ = [
    "rgb2id",
    "id2rgb",
    "load_coco_panoptic_json",
    "register_coco_panoptic",
    "register_coco_panoptic_separated",
    "merge_to_panoptic",
]

logger = logging.getLogger(__name__)


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Segment ids of an H x W x 3 RGB panoptic PNG: R + 256 G + 256^2 B (COCO panoptic's encoding)."""
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """The H x W x 3 uint8 RGB encoding of segment ids (inverse of `rgb2id`)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


def load_coco_panoptic_json(json_file: str, image_dir: str, gt_dir: str, meta: Dict[str, Any]) -> List[dict]:
    """
    Loads a COCO panoptic json file: one record per annotation with `file_name` (the image: the PNG's
    stem with ".jpg" under `image_dir`), `image_id`, `pan_seg_file_name` (the PNG under `gt_dir`)
    and `segments_info`, whose `category_id` is made contiguous through `meta`'s
    `thing_dataset_id_to_contiguous_id` / `stuff_dataset_id_to_contiguous_id` and which gains
    `isthing`. A category in neither map is an error naming the file, the image and the segment.
    """
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BadSampleError(f"{json_file}: not valid JSON ({e}).") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise BadSampleError(f"{json_file}: not a COCO panoptic file (field 'annotations' missing or not a list).")
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    records = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{json_file}, annotations[{i}]"
        _require(ann, ("image_id", "file_name", "segments_info"), where)
        segments = []
        for segment in ann["segments_info"]:
            _require(segment, ("id", "category_id"), f"{where} (image id {ann['image_id']}), a segment")
            category = segment["category_id"]
            if category not in things and category not in stuff:
                raise BadSampleError(
                    f"{where} (image id {ann['image_id']}), segment id {segment['id']}: "
                    f"field 'category_id' is {category!r}, which is neither a thing nor a stuff category."
                )
            isthing = category in things
            segments.append({**segment, "category_id": (things if isthing else stuff)[category], "isthing": isthing})
        records.append(
            {
                "file_name": os.path.join(image_dir, os.path.splitext(ann["file_name"])[0] + ".jpg"),
                "image_id": ann["image_id"],
                "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
                "segments_info": segments,
            }
        )
    if not records:
        raise BadSampleError(f"{json_file}: no annotations.")
    logger.info("Loaded %d panoptic annotations from %s.", len(records), json_file)
    return records


def register_coco_panoptic(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    instances_json: Optional[str] = None,
) -> None:
    """
    Registers the standard COCO panoptic layout under `name` (`load_coco_panoptic_json`), with
    `evaluator_type="coco_panoptic_seg"`, `ignore_label=255` and `label_divisor=1000`.
    """
    DatasetCatalog.register(name, lambda: load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata))
    paths = dict(
        image_root=image_root, panoptic_root=panoptic_root, panoptic_json=panoptic_json, json_file=instances_json
    )
    MetadataCatalog.get(name).set(
        evaluator_type="coco_panoptic_seg", label_divisor=1000, ignore_label=255, **paths, **metadata
    )


def merge_to_panoptic(detection_dicts: List[dict], sem_seg_dicts: List[dict]) -> List[dict]:
    """Each detection record extended with the semantic record of the same `file_name`."""
    semantic = {record["file_name"]: record for record in sem_seg_dicts}
    merged = []
    for record in detection_dicts:
        if record["file_name"] not in semantic:
            raise BadSampleError(f"Image {record['file_name']} (id {record.get('image_id')}) has no semantic label.")
        merged.append({**record, **semantic[record["file_name"]]})
    return merged


def register_coco_panoptic_separated(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str,
    instances_json: str,
) -> None:
    """
    Registers Panoptic FPN's layout as `name + "_separated"`: instances from the COCO instances
    json, merged per image with the semantic PNG under `sem_seg_root` (stuff classes 1..53, every
    thing pixel 0); and the semantic part alone as `name + "_stuffonly"` (`evaluator_type="sem_seg"`).
    """
    separated = name + "_separated"
    DatasetCatalog.register(
        separated,
        lambda: merge_to_panoptic(
            load_coco_json(instances_json, image_root, separated), load_sem_seg(sem_seg_root, image_root)
        ),
    )
    MetadataCatalog.get(separated).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        **metadata,
    )
    stuff_only = name + "_stuffonly"
    DatasetCatalog.register(stuff_only, lambda: load_sem_seg(sem_seg_root, image_root))
    MetadataCatalog.get(stuff_only).set(
        sem_seg_root=sem_seg_root, image_root=image_root, evaluator_type="sem_seg", ignore_label=255, **metadata
    )

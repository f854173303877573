"""Cityscapes fine annotations (leftImg8bit/ + gtFine/) -> detlib dataset records."""

import logging
import os
from typing import List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detlib.structures import BoxMode

from ..bad_samples import BadSampleError
from .dataset_classes import CITYSCAPES_CATEGORIES

__all__ = ["load_cityscapes_instances", "load_cityscapes_semantic"]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIX = "leftImg8bit.png"
# Cityscapes label id of each instance class -> contiguous id (the 8 things, in label-id order).
_THING_IDS = {label_id: i for i, (label_id, *_) in enumerate(c for c in CITYSCAPES_CATEGORIES if c[3])}


def _city_files(image_dir: str, gt_dir: str) -> List[Tuple[str, str]]:
    """(image file, gtFine file prefix) of every image under `image_dir/<city>/`."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Cityscapes image directory {image_dir} does not exist.")
    files = []
    for city in sorted(os.listdir(image_dir)):
        for name in sorted(os.listdir(os.path.join(image_dir, city))):
            if name.endswith(_IMAGE_SUFFIX):
                prefix = os.path.join(gt_dir, city, name[: -len(_IMAGE_SUFFIX)] + "gtFine_")
                files.append((os.path.join(image_dir, city, name), prefix))
    if not files:
        raise BadSampleError(f"No '*{_IMAGE_SUFFIX}' images under {image_dir}/<city>/.")
    return files


def load_cityscapes_semantic(image_dir: str, gt_dir: str) -> List[dict]:
    """Records with `file_name` and `sem_seg_file_name` (the `*_gtFine_labelTrainIds.png` made by
    cityscapesscripts' createTrainIdLabelImgs: train ids 0..18, 255 ignored)."""
    records = []
    for image_file, prefix in _city_files(image_dir, gt_dir):
        label_file = prefix + "labelTrainIds.png"
        if not os.path.isfile(label_file):
            raise BadSampleError(
                f"{label_file} (the label of {image_file}) does not exist; "
                "cityscapesscripts' createTrainIdLabelImgs writes it."
            )
        records.append({"file_name": image_file, "sem_seg_file_name": label_file})
    return records


def load_cityscapes_instances(image_dir: str, gt_dir: str) -> List[dict]:
    """
    Records with `file_name`, `image_id` (the file's stem), `height`, `width` and one annotation per
    instance of `*_gtFine_instanceIds.png`: a pixel value v >= 1000 is instance v of class v // 1000;
    a value < 1000 that is a thing class is a group of such objects (`iscrowd=1`). Masks are RLE,
    boxes their extent (XYXY_ABS); `category_id` is the contiguous thing id (0..7).
    """
    records = []
    for image_file, prefix in _city_files(image_dir, gt_dir):
        instance_file = prefix + "instanceIds.png"
        if not os.path.isfile(instance_file):
            raise BadSampleError(f"{instance_file} (the instances of {image_file}) does not exist.")
        ids = np.asarray(Image.open(instance_file))
        annotations = []
        for value in np.unique(ids):
            label_id = int(value) // 1000 if value >= 1000 else int(value)
            if label_id not in _THING_IDS:
                continue
            mask = np.asfortranarray((ids == value).astype(np.uint8))
            rows, cols = np.nonzero(mask)
            annotations.append(
                {
                    "category_id": _THING_IDS[label_id],
                    "iscrowd": int(value < 1000),
                    "bbox": [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "segmentation": mask_util.encode(mask),
                }
            )
        records.append(
            {
                "file_name": image_file,
                "image_id": os.path.basename(image_file)[: -len(_IMAGE_SUFFIX) - 1],
                "height": ids.shape[0],
                "width": ids.shape[1],
                "annotations": annotations,
            }
        )
    logger.info("Loaded %d Cityscapes images from %s.", len(records), image_dir)
    return records

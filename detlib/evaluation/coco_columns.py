"""One image's COCO results as columns (arrays and RLE strings), and the one-line text that a PredictionStream holds.

COCOEvaluator streams each image's results to disk and reads them back in `evaluate()`. Read back as JSON, every
number costs a float parse (56 per keypoint result, five per box); as columns, each array is one base64 string, so
reading an image back costs one `frombuffer` per array, and the result dicts hold exactly the values that
`process()` had.
"""

import base64
import json
from typing import Dict, List, Union

import numpy as np
import pycocotools.mask as mask_util

from detlib.structures import BoxMode, Instances

from .coco_results import rle_areas

# The columns that are arrays, one row per result; the others ("segmentation": RLE counts, "size") are JSON.
_ARRAYS = ("category_id", "bbox", "score", "area", "keypoints")

Columns = Dict[str, Union[np.ndarray, list]]


def instances_to_columns(instances: Instances) -> Columns:
    """
    One image's predictions as COCO result columns: "category_id" (the contiguous class), "bbox" (N x 4, XYWH),
    "score"; with `pred_masks`, "segmentation" (compressed RLE counts, str), "size" ([H, W]) and "area" (each
    mask's pixel count); with `pred_keypoints` (N x K x 3: x, y, score), "keypoints" (N x 3K, in COCO's
    pixel-index convention: x, y - 0.5, the inverse of the loader's shift).
    """
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    columns: Columns = {"category_id": instances.pred_classes.numpy(), "bbox": boxes, "score": instances.scores.numpy()}
    if instances.has("pred_masks"):
        height, width = instances.pred_masks.shape[1:]
        masks = np.asfortranarray(instances.pred_masks.numpy().astype(np.uint8).transpose(1, 2, 0))
        rles = mask_util.encode(masks) if len(instances) else []
        # json cannot hold bytes; COCO tools accept the counts as a str.
        columns["segmentation"] = [rle["counts"].decode("utf-8") for rle in rles]
        columns["size"] = [int(height), int(width)]
        # Computed here, in one call per image, so that evaluation need not decode every RLE again for it.
        columns["area"] = np.asarray(rle_areas(rles), dtype=np.int64)
    if instances.has("pred_keypoints"):
        keypoints = instances.pred_keypoints.clone()
        keypoints[..., :2] -= 0.5
        columns["keypoints"] = keypoints.flatten(1).numpy()
    return columns


def columns_to_results(image_id: int, columns: Columns) -> List[dict]:
    """COCO result dicts (image_id, category_id, bbox, score and segmentation, area, keypoints where present)."""
    results = [
        {"image_id": image_id, "category_id": category, "bbox": box, "score": score}
        for category, box, score in zip(
            columns["category_id"].tolist(), columns["bbox"].tolist(), columns["score"].tolist()
        )
    ]
    if "segmentation" in columns:
        size = columns["size"]
        for result, counts, area in zip(results, columns["segmentation"], columns["area"].tolist()):
            result["segmentation"] = {"size": size, "counts": counts}
            result["area"] = area
    if "keypoints" in columns:
        for result, keypoints in zip(results, columns["keypoints"].tolist()):
            result["keypoints"] = keypoints
    return results


def encode_columns(columns: Columns) -> str:
    """`columns` on one line: each array as [dtype, shape of a row, base64 of its bytes]."""
    line = {}
    for name, value in columns.items():
        if name in _ARRAYS:
            data = base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")
            value = [value.dtype.str, list(value.shape[1:]), data]
        line[name] = value
    return json.dumps(line)


def decode_columns(line: str) -> Columns:
    """The columns that `encode_columns` gave `line` for, with the same values and dtypes."""
    columns = json.loads(line)
    for name in _ARRAYS:
        if name in columns:
            dtype, row_shape, data = columns[name]
            columns[name] = np.frombuffer(base64.b64decode(data), dtype=dtype).reshape(-1, *row_shape)
    return columns

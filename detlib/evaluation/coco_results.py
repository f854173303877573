"""COCO result sets built directly from result dicts: what COCO's `loadRes` builds, without its per-result work.

`loadRes` gives each result an id, `iscrowd = 0` and the area that COCOeval uses to ignore unmatched detections
outside an area range: the box's for "bbox" (and keypoints with a box), the mask's for "segm", the keypoints'
extent otherwise. It computes a mask's area and box one RLE at a time; here a mask's area comes with the result
when `process()` computed it (vectorised, on the RLEs it had just encoded), and no field that COCOeval does not
read for the task is added (a segm result's box, a box result's polygon).
"""

from typing import TYPE_CHECKING, List, Sequence

import numpy as np
import pycocotools.mask as mask_util

if TYPE_CHECKING:
    from .cocoeval_backend import COCOApi

# pycocotools' area() (2.0.11) sizes its output array through a uint8 and fails on more than 255 RLEs per call.
_AREA_CHUNK = 255


def rle_areas(rles: Sequence[dict]) -> List[int]:
    """The pixel count of each compressed RLE (counts as bytes or str), as pycocotools' `area` computes it."""
    areas: List[int] = []
    for start in range(0, len(rles), _AREA_CHUNK):
        areas += mask_util.area(list(rles[start : start + _AREA_CHUNK])).tolist()
    return areas


def load_results(coco_gt: "COCOApi", results: List[dict], iou_type: str) -> "COCOApi":
    """
    The results COCO object that `coco_gt.loadRes(results)` gives for COCOeval of `iou_type` ("bbox", "segm",
    "keypoints"), of the same class as `coco_gt`. `results` are COCO result dicts with dataset category ids; they
    become the result set's annotations and are modified in place. A "segm" result's "area", when present, must
    be its mask's pixel count (`rle_areas`); otherwise it is computed.
    """
    unknown = {r["image_id"] for r in results} - set(coco_gt.imgs)
    if unknown:
        raise ValueError(
            f"{len(unknown)} image ids of the results are not in the ground truth, e.g. {sorted(unknown)[:5]}"
        )
    if iou_type == "segm":
        missing = [r for r in results if "area" not in r]
        for result, area in zip(missing, rle_areas([r["segmentation"] for r in missing])):
            result["area"] = area
    elif iou_type not in ("bbox", "keypoints"):
        raise ValueError(f"Unknown iou_type {iou_type!r}; expected 'bbox', 'segm' or 'keypoints'.")
    elif iou_type == "bbox" or (results and results[0].get("bbox")):
        # loadRes takes its branch from the first result: keypoints that come with a box get the box's area.
        for result in results:
            _, _, w, h = result["bbox"]
            result["area"] = w * h
    else:
        for result in results:
            _keypoint_extent(result)
    for index, result in enumerate(results, start=1):
        result["id"] = index
        result["iscrowd"] = 0

    coco_dt = type(coco_gt)()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": [dict(c) for c in coco_gt.dataset["categories"]],
        "annotations": results,
    }
    if hasattr(coco_dt, "print_function"):  # faster-coco-eval's COCO reports its progress through it
        coco_dt.print_function = coco_gt.print_function
    coco_dt.createIndex()
    return coco_dt


def _keypoint_extent(result: dict) -> None:
    """A box and area from the extent of the keypoints, as loadRes sets them for keypoints without a box."""
    keypoints = np.asarray(result["keypoints"])
    x, y = keypoints[0::3], keypoints[1::3]
    x0, x1, y0, y1 = np.min(x), np.max(x), np.min(y), np.max(y)
    result["area"] = (x1 - x0) * (y1 - y0)
    result["bbox"] = [x0, y0, x1 - x0, y1 - y0]

"""LVIS AP with its federated rules, computed by faster-coco-eval's LVIS mode.

The `lvis` package (0.5.3) defines the metric; its code no longer imports on NumPy 2. Its rules:
each image keeps its `max_dets` highest-scoring detections (over all categories); a detection whose
category is neither annotated in the image nor listed in its `neg_category_ids` is not evaluated;
an unmatched detection of a category in the image's `not_exhaustive_category_ids` is ignored, not
a false positive; there are no crowd regions. APr / APc / APf average AP over the categories of each
frequency group. tests/evaluation/test_lvis_evaluation.py holds this module to the package's numbers.
"""

import contextlib
import copy
import io
import logging
from collections import defaultdict
from typing import Dict, List, Optional, Set

import faster_coco_eval
import numpy as np

__all__ = ["LVIS_METRICS", "load_lvis_gt", "limit_detections_per_image", "evaluate_predictions_on_lvis"]

logger = logging.getLogger(__name__)

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_AREAS = ("all", "s", "m", "l")
_FREQUENCIES = ("r", "c", "f")


def load_lvis_gt(json_file: str) -> faster_coco_eval.COCO:
    """The ground truth of an LVIS json file; every category must have its `frequency` group."""
    gt = faster_coco_eval.COCO(json_file, print_function=logger.debug)
    no_frequency = [cat["id"] for cat in gt.dataset["categories"] if cat.get("frequency") not in _FREQUENCIES]
    if no_frequency:
        raise ValueError(
            f"{json_file}: categories {no_frequency[:10]} have no 'frequency' of 'r', 'c' or 'f' "
            "(LVIS's APr / APc / APf need it)."
        )
    return gt


def limit_detections_per_image(results: List[dict], max_dets: int) -> List[dict]:
    """One image's results cut to the `max_dets` highest scores; equal scores keep their order."""
    if len(results) <= max_dets:
        return results
    return sorted(results, key=lambda r: r["score"], reverse=True)[:max_dets]


def _evaluated_categories(gt: faster_coco_eval.COCO) -> Dict[int, Set[int]]:
    """Per image, the categories LVIS evaluates detections of: the annotated and the negative ones."""
    categories: Dict[int, Set[int]] = defaultdict(set)
    for image in gt.dataset["images"]:
        categories[image["id"]].update(image.get("neg_category_ids", ()))
    for ann in gt.dataset["annotations"]:
        categories[ann["image_id"]].add(ann["category_id"])
    return categories


def evaluate_predictions_on_lvis(
    gt: faster_coco_eval.COCO, results: List[dict], iou_type: str, max_dets: int = 300
) -> Dict[str, float]:
    """
    LVIS metrics (percent; NaN where no category has ground truth) of `results` (COCO-style result
    dicts with LVIS category ids, already at most `max_dets` per image) for `iou_type` ("bbox" or
    "segm"), over every image of `gt`: the AP metrics of `LVIS_METRICS` and AR@max_dets by area.
    """
    known_images = set(gt.imgs)
    stray = {r["image_id"] for r in results} - known_images
    if stray:
        raise ValueError(f"Results for images {sorted(stray)[:10]} that are not in the LVIS ground truth.")
    evaluated = _evaluated_categories(gt)
    results = [copy.copy(r) for r in results if r["category_id"] in evaluated[r["image_id"]]]
    metric_names = list(LVIS_METRICS) + [f"AR{a if a != 'all' else ''}@{max_dets}" for a in _AREAS]
    if not results:
        logger.warning("No LVIS detection to evaluate for %s: every metric is NaN.", iou_type)
        return {name: float("nan") for name in metric_names}
    if iou_type == "segm":
        # Mask AP: areas (for the area ranges) come from the masks, not the boxes.
        for r in results:
            r.pop("bbox", None)
    messages: List[str] = []
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        coco_eval = faster_coco_eval.COCOeval_faster(gt, dt, iou_type, lvis_style=True, print_function=messages.append)
        coco_eval.params.maxDets = [max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
    return _lvis_metrics(coco_eval, gt, max_dets)


def _mean(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid) * 100) if valid.size else float("nan")


def _lvis_metrics(coco_eval, gt: faster_coco_eval.COCO, max_dets: int) -> Dict[str, float]:
    # precision: [IoU thresholds, recall thresholds, categories, areas, max dets]; recall: no recall axis.
    precision = coco_eval.eval["precision"][..., -1]
    recall = coco_eval.eval["recall"][..., -1]
    iou = list(np.round(coco_eval.params.iouThrs, 2))
    frequency = np.array([gt.cats[c]["frequency"] for c in coco_eval.params.catIds])
    metrics = {
        "AP": _mean(precision[..., 0]),
        "AP50": _mean(precision[iou.index(0.5), ..., 0]),
        "AP75": _mean(precision[iou.index(0.75), ..., 0]),
    }
    for index, area in enumerate(_AREAS[1:], start=1):
        metrics[f"AP{area}"] = _mean(precision[..., index])
    for group in _FREQUENCIES:
        metrics[f"AP{group}"] = _mean(precision[:, :, frequency == group, 0])
    for index, area in enumerate(_AREAS):
        metrics[f"AR{area if area != 'all' else ''}@{max_dets}"] = _mean(recall[..., index])
    return metrics


def lvis_ids_of_classes(num_classes: int, mapping: Optional[Dict[int, int]]) -> np.ndarray:
    """LVIS category id of each contiguous class id: the inverse of `mapping` when given, else id + 1."""
    if mapping is None:
        return np.arange(1, num_classes + 1)
    ids = np.full(max(mapping.values(), default=-1) + 1, -1, dtype=np.int64)
    for dataset_id, contiguous in mapping.items():
        ids[contiguous] = dataset_id
    return ids

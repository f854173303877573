"""COCOeval, either pycocotools' reference Python implementation or faster-coco-eval's C++ one.

faster-coco-eval descends from Detectron2's C++ COCOeval and keeps pycocotools' semantics (crowd
regions, area ranges, max detections); tests/evaluation holds both to the same numbers.
"""
import contextlib
import copy
import io
import logging
from typing import List, Optional, Union

import faster_coco_eval
import pycocotools.coco
import pycocotools.cocoeval

logger = logging.getLogger(__name__)

COCOApi = Union[pycocotools.coco.COCO, faster_coco_eval.COCO]


def load_coco_json(json_file: str, use_fast_impl: bool = True) -> COCOApi:
    """The ground truth of a COCO json file, as the COCO API object the chosen backend evaluates."""
    if use_fast_impl:
        return faster_coco_eval.COCO(json_file, print_function=logger.debug)
    with contextlib.redirect_stdout(io.StringIO()):
        return pycocotools.coco.COCO(json_file)


def evaluate_predictions_on_coco(
    coco_gt: COCOApi,
    coco_results: List[dict],
    iou_type: str,
    image_ids: Optional[List[int]] = None,
    max_dets: int = 100,
    use_fast_impl: bool = True,
):
    """
    Runs COCOeval for `iou_type` ("bbox" or "segm") and returns it after `summarize()`.

    `coco_results` (COCO result dicts with dataset category ids) is consumed: the COCO API adds
    fields to the dicts. `coco_gt` must come from `load_coco_json` with the same `use_fast_impl`.
    An empty result list scores 0 AP.
    """
    if iou_type == "segm":
        # Segmentation AP scores masks only; COCO's loadRes would otherwise take areas from the boxes.
        for result in coco_results:
            result.pop("bbox", None)
    # Both libraries print progress: pycocotools to stdout, faster-coco-eval to `print_function`.
    messages: List[str] = []
    with contextlib.redirect_stdout(io.StringIO()):
        if use_fast_impl:
            coco_dt = coco_gt.loadRes(coco_results)
            coco_eval = faster_coco_eval.COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=messages.append)
        else:
            coco_dt = coco_gt.loadRes(coco_results) if coco_results else _empty_results(coco_gt)
            coco_eval = pycocotools.cocoeval.COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.maxDets = [1, 10, max_dets]
        if image_ids is not None:
            coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
    messages.clear()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    summary_text = summary.getvalue() + "\n".join(messages)
    logger.info("COCOeval %s (%s):\n%s", iou_type, "fast" if use_fast_impl else "pycocotools", summary_text)
    return coco_eval


def _empty_results(coco_gt: pycocotools.coco.COCO) -> pycocotools.coco.COCO:
    """A results COCO object with no detections (pycocotools' loadRes rejects an empty list)."""
    coco_dt = pycocotools.coco.COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt

"""COCOeval, either pycocotools' reference Python implementation or faster-coco-eval's C++ one.

faster-coco-eval descends from Detectron2's C++ COCOeval and keeps pycocotools' semantics (crowd
regions, area ranges, max detections); tests/evaluation holds both to the same numbers.
"""

import contextlib
import io
import logging
from typing import Dict, List, Optional, Sequence, Union

import faster_coco_eval
import numpy as np
import pycocotools.coco
import pycocotools.cocoeval

from .coco_results import load_results
from .keypoint_oks import COCOevalFasterOks

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
    kpt_oks_sigmas: Sequence[float] = (),
):
    """
    Runs COCOeval for `iou_type` ("bbox", "segm" or "keypoints") and returns it after `summarize()`.

    Keypoints are scored by OKS with `kpt_oks_sigmas`, one per keypoint (empty: COCO's 17 person
    sigmas), over COCO's keypoint detection limit (20 per image) and area ranges (all, medium,
    large); `max_dets` applies to boxes and masks.

    `coco_results` (COCO result dicts with dataset category ids) is consumed: the result set is built
    from the dicts themselves (`load_results`), and COCOeval adds fields to them. `coco_gt` must come from `load_coco_json` with the same `use_fast_impl`.
    An empty result list scores 0 AP.
    """
    if iou_type == "segm":
        # Segmentation AP scores masks only; COCO's loadRes would otherwise take areas from the boxes.
        for result in coco_results:
            result.pop("bbox", None)
    # Both libraries print progress: pycocotools to stdout, faster-coco-eval to `print_function`.
    messages: List[str] = []
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = load_results(coco_gt, coco_results, iou_type)
        if use_fast_impl:
            evaluator = COCOevalFasterOks if iou_type == "keypoints" else faster_coco_eval.COCOeval_faster
            coco_eval = evaluator(coco_gt, coco_dt, iou_type, print_function=messages.append)
        else:
            coco_eval = pycocotools.cocoeval.COCOeval(coco_gt, coco_dt, iou_type)
        if iou_type == "keypoints":
            _set_oks_sigmas(coco_eval, coco_gt, coco_results, kpt_oks_sigmas)
        else:
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


def _set_oks_sigmas(coco_eval, coco_gt: COCOApi, coco_results: List[dict], sigmas: Sequence[float]) -> None:
    """Use `sigmas` (if given) for OKS, after checking that they, the predictions and the ground
    truth count the same keypoints: COCOeval would otherwise broadcast or fail obscurely."""
    if len(sigmas):
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    expected = len(coco_eval.params.kpt_oks_sigmas)
    gt_with_keypoints = next((a for a in coco_gt.anns.values() if "keypoints" in a), None)
    counts = {"ground truth": len(gt_with_keypoints["keypoints"]) // 3 if gt_with_keypoints else expected}
    if coco_results:
        counts["predictions"] = len(coco_results[0]["keypoints"]) // 3
    wrong = {name: count for name, count in counts.items() if count != expected}
    if wrong:
        raise ValueError(
            f"Keypoint evaluation has {expected} OKS sigmas (TEST.KEYPOINT_OKS_SIGMAS), but the keypoints per "
            f"instance are {wrong}; set one sigma per keypoint."
        )


def evaluate_box_proposals(
    coco_gt: COCOApi,
    proposals: List[dict],
    image_ids: Optional[List[int]] = None,
    limits: Sequence[int] = (100, 1000),
    use_fast_impl: bool = True,
) -> Dict[str, float]:
    """
    Average recall (percent, over IoU 0.50:0.95) of class-agnostic proposals (COCO result dicts:
    `image_id`, `bbox` XYWH, `score`; the category is ignored) at each of `limits` proposals per
    image, for all areas and small / medium / large objects: COCOeval "bbox" with `useCats=0`.
    Keys: "AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", ... `proposals` is consumed.
    """
    category = min(coco_gt.getCatIds())  # any valid id: with useCats=0 COCOeval ignores it
    for proposal in proposals:
        proposal["category_id"] = category
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = load_results(coco_gt, proposals, "bbox")
        if use_fast_impl:
            coco_eval = faster_coco_eval.COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=logger.debug)
        else:
            coco_eval = pycocotools.cocoeval.COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = sorted(limits)
        if image_ids is not None:
            coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
    # recall: [IoU thresholds, categories (one), area ranges, max dets]; -1 where no ground truth.
    recall = coco_eval.eval["recall"][:, 0]
    results = {}
    for m, limit in enumerate(sorted(limits)):
        for a, area in enumerate(("", "s", "m", "l")):
            values = recall[:, a, m]
            values = values[values > -1]
            results[f"AR{area}@{limit}"] = float(np.mean(values) * 100) if values.size else float("nan")
    logger.info("Box proposal recall: %s", ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    return results

"""COCO-style box and mask AP with pycocotools."""
import contextlib
import copy
import io
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from detlib.data import MetadataCatalog
from detlib.data.datasets.coco import convert_to_coco_json
from detlib.structures import BoxMode, Instances
from detlib.utils import comm

from .evaluator import DatasetEvaluator

logger = logging.getLogger(__name__)

_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_SUPPORTED_TASKS = ("bbox", "segm")


class COCOEvaluator(DatasetEvaluator):
    """
    Evaluates instance detection ("bbox") and segmentation ("segm") with pycocotools' COCOeval.

    Predictions are converted to COCO results (XYWH boxes, RLE masks, the dataset's own category
    ids), written to `output_dir/coco_instances_results.json`, and scored against the dataset's
    COCO json (`MetadataCatalog.get(name).json_file`; for a dataset registered without one, a COCO
    json is written from its records into `output_dir`). Metrics are in percent.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: int = 100,
    ):
        """
        Args:
            dataset_name: a name registered in DatasetCatalog / MetadataCatalog.
            tasks: subset of ("bbox", "segm"); by default inferred from the predictions.
            distributed: gather predictions from all ranks and evaluate on the main process.
            output_dir: where results (and a generated COCO json) are written; None writes nothing
                but a generated json, which then goes to a temporary file.
            max_dets_per_image: detections per image that COCOeval considers (COCO's is 100).
        """
        unknown = set(tasks or ()) - set(_SUPPORTED_TASKS)
        if unknown:
            raise ValueError(f"COCOEvaluator tasks {sorted(unknown)} unsupported; choose from {_SUPPORTED_TASKS}.")
        self._tasks = tuple(tasks) if tasks else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = max_dets_per_image
        self._metadata = MetadataCatalog.get(dataset_name)

        json_file = getattr(self._metadata, "json_file", None)
        if not json_file:
            base_dir = output_dir or tempfile.mkdtemp(prefix="detlib_coco_")
            json_file = os.path.join(base_dir, f"{dataset_name}_coco_format.json")
            logger.info("Dataset '%s' has no COCO json; writing one to %s", dataset_name, json_file)
            convert_to_coco_json(dataset_name, json_file)
            self._metadata.json_file = json_file
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_api = COCO(json_file)
        self.reset()

    def reset(self) -> None:
        self._predictions: List[dict] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            prediction = {"image_id": inp["image_id"]}
            if "instances" in out:
                instances = out["instances"].to("cpu")
                prediction["instances"] = instances_to_coco_json(instances, inp["image_id"])
            self._predictions.append(prediction)

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return None
        if not predictions:
            logger.warning("COCOEvaluator received no predictions: was the dataset empty?")

        coco_results = list(itertools.chain(*[p.get("instances", []) for p in predictions]))
        self._map_to_dataset_ids(coco_results)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info("Saving results to %s", path)
            with open(path, "w") as f:
                json.dump(coco_results, f)

        tasks = self._tasks or _tasks_from_results(coco_results)
        image_ids = sorted({p["image_id"] for p in predictions}) or None
        results: Dict[str, Dict[str, float]] = OrderedDict()
        for task in tasks:
            coco_eval = evaluate_predictions_on_coco(
                self._coco_api, coco_results, task, image_ids=image_ids, max_dets=self._max_dets
            )
            results[task] = self._derive_metrics(coco_eval, task)
        return copy.deepcopy(results)

    def _map_to_dataset_ids(self, coco_results: List[dict]) -> None:
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is None:
            # The dataset was not loaded in this process; the loader's rule is category-id order.
            mapping = {cat_id: k for k, cat_id in enumerate(sorted(self._coco_api.getCatIds()))}
        reverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        for result in coco_results:
            category = result["category_id"]
            if category not in reverse:
                raise ValueError(
                    f"A prediction has class {category}, but dataset '{self._metadata.name}' has only "
                    f"{len(reverse)} classes (contiguous ids 0..{len(reverse) - 1})."
                )
            result["category_id"] = reverse[category]

    def _derive_metrics(self, coco_eval: COCOeval, task: str) -> Dict[str, float]:
        """AP metrics in percent (NaN where COCOeval has no ground truth), plus AP per category."""
        stats = coco_eval.stats[: len(_METRIC_NAMES)]
        metrics = {name: float(s * 100) if s >= 0 else float("nan") for name, s in zip(_METRIC_NAMES, stats)}
        logger.info("Evaluation results for %s:\n%s", task, _table(metrics.items(), ["metric", "value"]))

        # precision: [IoU thresholds, recall thresholds, categories, area ranges, max dets]
        precision = coco_eval.eval["precision"]
        per_category = []
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            ap = float(np.mean(p) * 100) if p.size else float("nan")
            per_category.append((self._coco_api.cats[cat_id]["name"], ap))
        logger.info("Per-category %s AP:\n%s", task, _table(per_category, ["category", "AP"]))
        metrics.update({f"AP-{name}": ap for name, ap in per_category})
        return metrics


def instances_to_coco_json(instances: Instances, image_id: int) -> List[dict]:
    """
    Converts one image's predictions to COCO result dicts.

    `instances` holds `pred_boxes` (XYXY absolute), `scores`, `pred_classes` (contiguous ids) and,
    optionally, `pred_masks` (N x H x W, bool or 0/1). Boxes become XYWH, masks compressed RLE.
    """
    num = len(instances)
    if num == 0:
        return []
    boxes = instances.pred_boxes.tensor.numpy()
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()

    rles = None
    if instances.has("pred_masks"):
        masks = np.asfortranarray(instances.pred_masks.numpy().astype(np.uint8).transpose(1, 2, 0))
        rles = mask_util.encode(masks)
        for rle in rles:
            # json cannot hold bytes; COCO tools accept the counts as a str.
            rle["counts"] = rle["counts"].decode("utf-8")

    results = []
    for k in range(num):
        result = {"image_id": image_id, "category_id": classes[k], "bbox": boxes[k], "score": scores[k]}
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


def evaluate_predictions_on_coco(
    coco_gt: COCO,
    coco_results: List[dict],
    iou_type: str,
    image_ids: Optional[List[int]] = None,
    max_dets: int = 100,
) -> COCOeval:
    """Runs COCOeval for `iou_type` ("bbox" or "segm"); an empty result list scores 0 AP."""
    coco_results = copy.deepcopy(coco_results)
    if iou_type == "segm":
        # Segmentation AP scores masks only; COCOeval would otherwise take bbox areas from results.
        for result in coco_results:
            result.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(coco_results) if coco_results else _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.maxDets = [1, 10, max_dets]
        if image_ids is not None:
            coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    logger.info("COCOeval %s:\n%s", iou_type, summary.getvalue())
    return coco_eval


def _empty_results(coco_gt: COCO) -> COCO:
    """A results COCO object with no detections (pycocotools' loadRes rejects an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _tasks_from_results(coco_results: List[dict]) -> tuple:
    if any("segmentation" in r for r in coco_results):
        return ("bbox", "segm")
    return ("bbox",)


def _table(rows, headers) -> str:
    return tabulate(list(rows), headers=headers, tablefmt="pipe", floatfmt=".3f", numalign="left")

"""COCO-style box, mask and keypoint AP, with predictions streamed to disk."""

import contextlib
import gc
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from tabulate import tabulate

from detlib.data import MetadataCatalog
from detlib.data.datasets.coco import convert_to_coco_json
from detlib.structures import BoxMode, Instances

from .coco_columns import columns_to_results, decode_columns, encode_columns, instances_to_columns
from .cocoeval_backend import evaluate_box_proposals, evaluate_predictions_on_coco, load_coco_json
from .evaluator import DatasetEvaluator
from .prediction_stream import PredictionStream

logger = logging.getLogger(__name__)

_SUPPORTED_TASKS = ("bbox", "segm", "keypoints")
# COCOeval's area ranges, as indexed in its precision array: keypoints have no "small" range.
_AREA_RANGES = {"keypoints": ("all", "m", "l")}
_DEFAULT_AREA_RANGES = ("all", "s", "m", "l")
# Proposals per image at which the "box_proposals" task reports average recall.
_PROPOSAL_LIMITS = (100, 1000)


class COCOEvaluator(DatasetEvaluator):
    """
    Evaluates instance detection ("bbox"), segmentation ("segm") and keypoints ("keypoints", by
    OKS) with COCOeval.

    `process()` converts each image's predictions to COCO results (XYWH boxes, RLE masks with their
    areas, keypoints, the dataset's own category ids) and appends them to this rank's files under
    `output_dir`, as columns (`coco_columns`) and, for the result file, as JSON, so memory stays flat
    however many images are processed. `evaluate()` merges the ranks' files on the main process,
    writes `output_dir/coco_instances_results.json` (atomically), builds the result set from the
    columns (`coco_results.load_results`) and scores it against the dataset's COCO json
    (`MetadataCatalog.get(name).json_file`; for a dataset registered without one, a COCO json is
    written from its records into `output_dir`). Metrics are in percent.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: int = 100,
        use_fast_impl: bool = True,
        kpt_oks_sigmas: Sequence[float] = (),
    ):
        """
        Args:
            dataset_name: a name registered in DatasetCatalog / MetadataCatalog.
            tasks: subset of ("bbox", "segm", "keypoints"); by default inferred from the predictions.
            distributed: merge predictions from all ranks and evaluate on the main process.
            output_dir: where results (and a generated COCO json) are written; None writes
                predictions to a temporary directory and keeps no result file.
            max_dets_per_image: detections per image that COCOeval considers (COCO's is 100).
            use_fast_impl: faster-coco-eval's C++ COCOeval; False: pycocotools' reference one.
                Both give the same numbers.
            kpt_oks_sigmas: the OKS sigma of each keypoint (TEST.KEYPOINT_OKS_SIGMAS); empty: COCO's
                17 person keypoints'.
        """
        unknown = set(tasks or ()) - set(_SUPPORTED_TASKS)
        if unknown:
            raise ValueError(f"COCOEvaluator tasks {sorted(unknown)} unsupported; choose from {_SUPPORTED_TASKS}.")
        self._tasks = tuple(tasks) if tasks else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = max_dets_per_image
        self._use_fast_impl = use_fast_impl
        self._kpt_oks_sigmas = tuple(kpt_oks_sigmas)
        self._metadata = MetadataCatalog.get(dataset_name)

        json_file = getattr(self._metadata, "json_file", None)
        if not json_file:
            base_dir = output_dir or tempfile.mkdtemp(prefix="detlib_coco_")
            json_file = os.path.join(base_dir, f"{dataset_name}_coco_format.json")
            logger.info("Dataset '%s' has no COCO json; writing one to %s", dataset_name, json_file)
            convert_to_coco_json(dataset_name, json_file)
            self._metadata.json_file = json_file
        self._coco_api = load_coco_json(json_file, use_fast_impl)
        self._dataset_ids = self._contiguous_to_dataset_ids()
        # Results as columns, read back by evaluate(); as JSON only for the result file of an output_dir.
        self._columns = PredictionStream(output_dir, "coco_columns")
        self._stream = PredictionStream(output_dir, "coco_predictions") if output_dir else None
        self._proposal_stream = PredictionStream(output_dir, "coco_proposals")
        self.reset()

    def _contiguous_to_dataset_ids(self) -> np.ndarray:
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is None:
            # The dataset was not loaded in this process; the loader's rule is category-id order.
            mapping = {cat_id: k for k, cat_id in enumerate(sorted(self._coco_api.getCatIds()))}
        dataset_ids = np.full(max(mapping.values(), default=-1) + 1, -1, dtype=np.int64)
        for dataset_id, contiguous in mapping.items():
            dataset_ids[contiguous] = dataset_id
        return dataset_ids

    def reset(self) -> None:
        self._columns.reset()
        if self._stream is not None:
            self._stream.reset()
        self._proposal_stream.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" in out:
                columns = instances_to_columns(out["instances"].to("cpu"))
                columns["category_id"] = self._map_to_dataset_ids(columns["category_id"], inp["image_id"])
                self._columns.append(inp["image_id"], encode_columns(columns))
                if self._stream is not None:
                    self._stream.append(inp["image_id"], json.dumps(columns_to_results(inp["image_id"], columns)))
            if "proposals" in out:
                proposals = proposals_to_coco_json(out["proposals"].to("cpu"), inp["image_id"], max(_PROPOSAL_LIMITS))
                self._proposal_stream.append(inp["image_id"], json.dumps(proposals))

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        merged = self._columns.merge_payloads(self._distributed)
        if self._stream is not None:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info("Saving results to %s", path)
            self._stream.write_merged(path, self._distributed)
        proposals = self._proposal_stream.merge(self._distributed)
        if merged is None:
            return None
        results: Dict[str, Dict[str, float]] = OrderedDict()
        if proposals[0]:
            results["box_proposals"] = evaluate_box_proposals(
                self._coco_api,
                json.loads(proposals[1]),
                sorted(proposals[0]),
                limits=_PROPOSAL_LIMITS,
                use_fast_impl=self._use_fast_impl,
            )
        image_ids, payloads = merged
        if not image_ids:
            if not results:
                logger.warning("COCOEvaluator received no predictions: was the dataset empty?")
            return results
        with _cyclic_gc_paused():
            coco_results = _decode_results(image_ids, payloads)
            tasks = self._tasks or _tasks_from_results(coco_results)
            for index, task in enumerate(tasks):
                if index > 0:  # the result set takes over the dicts and COCOeval adds fields; start afresh
                    coco_results = _decode_results(image_ids, payloads)
                coco_eval = evaluate_predictions_on_coco(
                    self._coco_api,
                    coco_results,
                    task,
                    image_ids=sorted(image_ids) or None,
                    max_dets=self._max_dets,
                    use_fast_impl=self._use_fast_impl,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                )
                results[task] = self._derive_metrics(coco_eval, task)
        return results

    def _map_to_dataset_ids(self, classes: np.ndarray, image_id: int) -> np.ndarray:
        """The dataset's category ids of contiguous `classes`."""
        known = (classes >= 0) & (classes < len(self._dataset_ids))
        known[known] = self._dataset_ids[classes[known]] >= 0
        if not known.all():
            raise ValueError(
                f"A prediction for image {image_id} has class {classes[~known][0]}, but dataset "
                f"'{self._metadata.name}' has only {len(self._dataset_ids)} classes "
                f"(contiguous ids 0..{len(self._dataset_ids) - 1})."
            )
        return self._dataset_ids[classes]

    def _derive_metrics(self, coco_eval, task: str) -> Dict[str, float]:
        """AP metrics in percent (NaN where there is no ground truth), plus AP per category, all at
        the largest max-detections (pycocotools' summary reads AP at 100 detections only)."""
        # precision: [IoU thresholds, recall thresholds, categories, area ranges, max dets]
        precision = coco_eval.eval["precision"][..., -1]
        iou_thresholds = list(np.round(coco_eval.params.iouThrs, 2))
        overall = {
            "AP": precision[..., 0],
            "AP50": precision[iou_thresholds.index(0.5), ..., 0],
            "AP75": precision[iou_thresholds.index(0.75), ..., 0],
        }
        for index, area in enumerate(_AREA_RANGES.get(task, _DEFAULT_AREA_RANGES)[1:], start=1):
            overall[f"AP{area}"] = precision[..., index]
        metrics = {name: _mean_precision(p) for name, p in overall.items()}
        logger.info("Evaluation results for %s:\n%s", task, _table(metrics.items(), ["metric", "value"]))

        per_category = [
            (self._coco_api.cats[cat_id]["name"], _mean_precision(precision[:, :, k, 0]))
            for k, cat_id in enumerate(coco_eval.params.catIds)
        ]
        logger.info("Per-category %s AP:\n%s", task, _table(per_category, ["category", "AP"]))
        metrics.update({f"AP-{name}": ap for name, ap in per_category})
        return metrics


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector. COCOeval builds hundreds of thousands of dicts and lists that
    hold no reference cycles; each collection the allocations trigger would traverse all of them again (a
    quarter of segm evaluate()'s time at 500 images). Reference counting still frees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _mean_precision(precision: np.ndarray) -> float:
    """Mean precision in percent over the entries COCOeval filled (-1 marks no ground truth)."""
    valid = precision[precision > -1]
    return float(np.mean(valid) * 100) if valid.size else float("nan")


def instances_to_coco_json(instances: Instances, image_id: int) -> List[dict]:
    """
    Converts one image's predictions to COCO result dicts.

    `instances` holds `pred_boxes` (XYXY absolute), `scores`, `pred_classes` (contiguous ids) and,
    optionally, `pred_masks` (N x H x W, bool or 0/1) and `pred_keypoints` (N x K x 3: x, y,
    score). Boxes become XYWH, masks compressed RLE with their pixel count as "area", keypoints flat
    [x, y, score, ...] lists in COCO's pixel-index convention (x, y - 0.5, the inverse of the loader's
    shift).
    """
    return columns_to_results(image_id, instances_to_columns(instances))


def _decode_results(image_ids: List[int], payloads: List[str]) -> List[dict]:
    """Every image's result dicts, from the payloads of `encode_columns`."""
    results: List[dict] = []
    for image_id, payload in zip(image_ids, payloads):
        results += columns_to_results(image_id, decode_columns(payload))
    return results


def proposals_to_coco_json(proposals: Instances, image_id: int, limit: int) -> List[dict]:
    """One image's `limit` highest-objectness proposals (`proposal_boxes`, `objectness_logits`) as
    class-agnostic COCO result dicts (XYWH boxes, the logit as score)."""
    scores = proposals.objectness_logits
    order = torch.argsort(scores, descending=True, stable=True)[:limit]
    boxes = BoxMode.convert(proposals.proposal_boxes.tensor[order].numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    return [
        {"image_id": image_id, "bbox": box, "score": score}
        for box, score in zip(boxes.tolist(), scores[order].tolist())
    ]


def _tasks_from_results(coco_results: List[dict]) -> tuple:
    tasks = ["bbox"]
    if any("segmentation" in r for r in coco_results):
        tasks.append("segm")
    if any("keypoints" in r for r in coco_results):
        tasks.append("keypoints")
    return tuple(tasks)


def _table(rows, headers) -> str:
    return tabulate(list(rows), headers=headers, tablefmt="pipe", floatfmt=".3f", numalign="left")

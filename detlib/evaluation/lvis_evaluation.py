"""LVIS box and mask AP (federated), with predictions streamed to disk."""

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from detlib.data import MetadataCatalog
from detlib.utils.atomic_write import atomic_write

from .coco_evaluation import _table, instances_to_coco_json
from .evaluator import DatasetEvaluator
from .lvis_backend import evaluate_predictions_on_lvis, limit_detections_per_image, load_lvis_gt, lvis_ids_of_classes
from .prediction_stream import PredictionStream

__all__ = ["LVISEvaluator"]

logger = logging.getLogger(__name__)

_SUPPORTED_TASKS = ("bbox", "segm")


class LVISEvaluator(DatasetEvaluator):
    """
    Evaluates instance detection ("bbox") and segmentation ("segm") with LVIS's metric: AP, AP50,
    AP75, APs/m/l, APr/c/f and AR@max_dets by area, in percent (lvis_backend.py states the rules).

    `process()` keeps each image's `max_dets_per_image` highest-scoring predictions (all LVIS
    scores) as LVIS result dicts in this rank's file under `output_dir`; `evaluate()` merges the
    ranks' files on the main process, writes `output_dir/lvis_instances_results.json` and scores it
    against `MetadataCatalog.get(dataset_name).json_file`, over every image of that file.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: a dataset registered with an LVIS json (`register_lvis_instances`).
            tasks: subset of ("bbox", "segm"); by default inferred from the predictions.
            distributed: merge predictions from all ranks and evaluate on the main process.
            output_dir: where the results file is written; None keeps none.
            max_dets_per_image: detections per image evaluated; None: LVIS's 300.
        """
        unknown = set(tasks or ()) - set(_SUPPORTED_TASKS)
        if unknown:
            raise ValueError(f"LVISEvaluator tasks {sorted(unknown)} unsupported; choose from {_SUPPORTED_TASKS}.")
        self._tasks = tuple(tasks) if tasks else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = 300 if max_dets_per_image is None else int(max_dets_per_image)
        self._metadata = MetadataCatalog.get(dataset_name)
        json_file = getattr(self._metadata, "json_file", None)  # may be a property (synthetic data written on use)
        if not json_file:
            raise ValueError(f"LVISEvaluator needs the LVIS json of dataset '{dataset_name}' (metadata 'json_file').")
        self._lvis_gt = load_lvis_gt(json_file)
        self._lvis_ids = lvis_ids_of_classes(
            len(self._lvis_gt.dataset["categories"]), self._metadata.get("thing_dataset_id_to_contiguous_id")
        )
        self._stream = PredictionStream(output_dir, "lvis_predictions")
        self.reset()

    def reset(self) -> None:
        self._stream.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            results = []
            if "instances" in out:
                results = instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"])
                results = limit_detections_per_image(results, self._max_dets)
                for result in results:
                    result["category_id"] = self._lvis_id(result["category_id"], inp["image_id"])
            self._stream.append(inp["image_id"], json.dumps(results))

    def _lvis_id(self, category: int, image_id: int) -> int:
        if not 0 <= category < len(self._lvis_ids) or self._lvis_ids[category] < 0:
            raise ValueError(
                f"A prediction for image {image_id} has class {category}, but dataset '{self._metadata.name}' "
                f"has {len(self._lvis_ids)} classes."
            )
        return int(self._lvis_ids[category])

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        merged = self._stream.merge(self._distributed)
        if merged is None:
            return None
        image_ids, results_json = merged
        if not image_ids:
            logger.warning("LVISEvaluator received no predictions: was the dataset empty?")
        if self._output_dir:
            path = os.path.join(self._output_dir, "lvis_instances_results.json")
            logger.info("Saving results to %s", path)
            with atomic_write(path, "w", encoding="utf-8") as f:
                f.write(results_json)
        lvis_results = json.loads(results_json)
        tasks = self._tasks or (("bbox", "segm") if any("segmentation" in r for r in lvis_results) else ("bbox",))
        results: Dict[str, Dict[str, float]] = OrderedDict()
        for task in tasks:
            metrics = evaluate_predictions_on_lvis(self._lvis_gt, lvis_results, task, self._max_dets)
            logger.info("LVIS evaluation results for %s:\n%s", task, _table(metrics.items(), ["metric", "value"]))
            results[task] = metrics
        return results

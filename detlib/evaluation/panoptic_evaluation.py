"""COCO panoptic quality (PQ, SQ, RQ) of `panoptic_seg` outputs, scored image by image."""

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from detlib.data import MetadataCatalog
from detlib.utils import comm
from detlib.utils.atomic_write import atomic_write

from .coco_evaluation import _table
from .evaluator import DatasetEvaluator
from .panoptic_quality import PQStat, id2rgb, pq_image_stats, pq_summary, read_segment_ids
from .prediction_stream import PredictionStream

__all__ = ["COCOPanopticEvaluator"]

logger = logging.getLogger(__name__)


class COCOPanopticEvaluator(DatasetEvaluator):
    """
    Scores `panoptic_seg` outputs against a COCO panoptic dataset (metadata `panoptic_json`,
    `panoptic_root`) with panopticapi's rules (panoptic_quality.py).

    `process()` scores each image against its ground-truth PNG at once and keeps only per-category
    sums; with `output_dir`, it also writes the prediction as a COCO panoptic PNG
    (`output_dir/panoptic_predictions/<image>.png`) and its `segments_info` (dataset category ids)
    to a stream that `evaluate()` turns into `output_dir/panoptic_predictions.json`. `evaluate()`
    sums the ranks' statistics and returns `{"panoptic_seg": {PQ, SQ, RQ, PQ_th, ..., RQ_st,
    PQ-<category>, ...}}` in percent.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, *, distributed: bool = True):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._output_dir = output_dir
        self._distributed = distributed
        for key in ("panoptic_json", "panoptic_root"):
            if not getattr(self._metadata, key, None):  # may be properties (synthetic data written on use)
                raise ValueError(f"COCOPanopticEvaluator needs the metadata '{key}' of dataset '{dataset_name}'.")
        with open(self._metadata.panoptic_json) as f:
            gt = json.load(f)
        self._gt_json = self._metadata.panoptic_json
        self._gt_by_image = {ann["image_id"]: ann for ann in gt["annotations"]}
        self._categories = {c["id"]: bool(c["isthing"]) for c in gt["categories"]}
        self._category_names = {c["id"]: c["name"] for c in gt["categories"]}
        self._thing_ids = _inverse(self._metadata.get("thing_dataset_id_to_contiguous_id") or {})
        self._stuff_ids = _inverse(self._metadata.get("stuff_dataset_id_to_contiguous_id") or {})
        self._stream = PredictionStream(output_dir, "panoptic_predictions")
        self.reset()

    def reset(self) -> None:
        self._stat = PQStat()
        self._stream.reset()

    def _to_dataset_ids(self, ids: np.ndarray, segments: Optional[List[dict]]) -> Tuple[np.ndarray, List[dict]]:
        """(segment-id map with VOID = 0, segments with dataset category ids) from a model's output."""
        if segments is None:
            # Semantic ids as class * label_divisor + instance, -1 for void (Panoptic-DeepLab style).
            divisor = self._metadata.label_divisor
            things = set(self._thing_ids)
            segments = [
                {"id": int(v) + 1, "category_id": int(v) // divisor, "isthing": int(v) // divisor in things}
                for v in np.unique(ids)
                if v != -1
            ]
            ids = ids + 1
        converted = []
        for segment in segments:
            table = self._thing_ids if segment["isthing"] else self._stuff_ids
            if segment["category_id"] not in table:
                kind = "thing" if segment["isthing"] else "stuff"
                raise ValueError(
                    f"Predicted segment {segment['id']} has {kind} class {segment['category_id']}, unknown."
                )
            converted.append({**segment, "category_id": table[segment["category_id"]]})
        return ids, converted

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            ids, segments = out["panoptic_seg"]
            ids, segments = self._to_dataset_ids(ids.cpu().numpy().astype(np.int64), segments)
            gt = self._gt_by_image.get(inp["image_id"])
            if gt is None:
                raise ValueError(f"Image {inp['image_id']} is not in the panoptic ground truth {self._gt_json}.")
            gt_file = os.path.join(self._metadata.panoptic_root, gt["file_name"])
            self._stat += pq_image_stats(
                read_segment_ids(gt_file),
                gt["segments_info"],
                ids,
                segments,
                self._categories,
                where=f"image {inp['image_id']} ({gt_file})",
            )
            file_name = os.path.splitext(os.path.basename(inp["file_name"]))[0] + ".png"
            if self._output_dir:
                png_dir = os.path.join(self._output_dir, "panoptic_predictions")
                os.makedirs(png_dir, exist_ok=True)
                Image.fromarray(id2rgb(ids)).save(os.path.join(png_dir, file_name))
            segments = [{k: v for k, v in s.items() if k in ("id", "category_id", "isthing")} for s in segments]
            entry = {"image_id": inp["image_id"], "file_name": file_name, "segments_info": segments}
            self._stream.append(inp["image_id"], json.dumps([entry]))

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        stat = PQStat()
        if self._distributed and comm.get_world_size() > 1:
            for stats in comm.all_gather(self._stat.stats):
                stat += PQStat(stats)
        else:
            stat = self._stat
        merged = self._stream.merge(self._distributed)
        if not comm.is_main_process() and self._distributed:
            return None
        if self._output_dir and merged is not None:
            path = os.path.join(self._output_dir, "panoptic_predictions.json")
            content = '{"annotations": ' + merged[1] + ', "categories": ' + json.dumps(self._category_list()) + "}"
            with atomic_write(path, "w", encoding="utf-8") as f:
                f.write(content)
        summary = pq_summary(stat, self._categories)
        results = OrderedDict()
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                results[metric.upper() + suffix] = 100 * summary[name][metric]
        rows = [(name, *(results[m + s] for m in ("PQ", "SQ", "RQ")), summary[n]["n"]) for n, name, s in _ROWS]
        logger.info("Panoptic evaluation results:\n%s", _table(rows, ["", "PQ", "SQ", "RQ", "#categories"]))
        for category, values in summary["per_class"].items():
            if values["pq"] is not None:
                for metric in ("pq", "sq", "rq"):
                    results[f"{metric.upper()}-{self._category_names[category]}"] = 100 * values[metric]
        return OrderedDict(panoptic_seg=results)

    def _category_list(self) -> List[dict]:
        return [{"id": c, "name": self._category_names[c], "isthing": int(t)} for c, t in self._categories.items()]


_ROWS = (("All", "All", ""), ("Things", "Things", "_th"), ("Stuff", "Stuff", "_st"))


def _inverse(mapping: Dict[int, int]) -> Dict[int, int]:
    return {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}

"""
Panoptic quality (PQ = SQ x RQ) with the rules of COCO's panopticapi `pq_compute`:

* Segment ids are read from RGB PNGs as R + 256 G + 256^2 B; id 0 is VOID (unlabeled).
* A ground-truth and a predicted segment of the same category match when their IoU exceeds 0.5,
  where the predicted segment's VOID pixels are left out of the union. Ground-truth crowd segments
  never match. Ground-truth areas are the json's `area` (the PNG's count when it has none).
* An unmatched ground-truth segment that is not a crowd is a false negative. An unmatched
  prediction is a false positive unless more than half of it lies on VOID plus the crowd segment of
  its category in that image (the last one listed, if several).
* Per category PQ = sum IoU / (TP + FP / 2 + FN / 2), SQ = sum IoU / TP, RQ = TP / (TP + FP / 2 +
  FN / 2); the averages are over categories with any TP, FP or FN, for all, things and stuff.

panopticapi is not on PyPI: tests/evaluation/test_panoptic_evaluation.py checks these rules on hand-computed
cases, and test_panoptic_vs_torchmetrics.py against torchmetrics' PanopticQuality where their conventions agree.
"""

import json
import os
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np
from PIL import Image

from detlib.data.bad_samples import BadSampleError
from detlib.data.datasets.coco_panoptic import id2rgb, rgb2id

__all__ = ["VOID", "rgb2id", "id2rgb", "PQStat", "pq_image_stats", "pq_compute"]

VOID = 0
_OFFSET = 256**3  # pairs (gt id, pred id) are counted as gt * _OFFSET + pred


def read_segment_ids(png_file: str) -> np.ndarray:
    with Image.open(png_file) as image:
        return rgb2id(np.asarray(image.convert("RGB")))


class PQStat:
    """Per category: summed IoU of the matches, TP, FP, FN. Stats of separate images add up."""

    def __init__(self, stats: Optional[Mapping[int, List[float]]] = None):
        self.stats: Dict[int, List[float]] = {int(k): list(v) for k, v in (stats or {}).items()}

    def _of(self, category: int) -> List[float]:
        return self.stats.setdefault(int(category), [0.0, 0, 0, 0])

    def __iadd__(self, other: "PQStat") -> "PQStat":
        for category, values in other.stats.items():
            mine = self._of(category)
            for k in range(4):
                mine[k] += values[k]
        return self

    def per_category(self, category: int) -> Dict[str, float]:
        """PQ, SQ, RQ (fractions) of one category; None where it has no TP, FP or FN."""
        iou, tp, fp, fn = self.stats.get(category, (0.0, 0, 0, 0))
        if tp + fp + fn == 0:
            return {"pq": None, "sq": None, "rq": None}
        denominator = tp + 0.5 * fp + 0.5 * fn
        return {"pq": iou / denominator, "sq": iou / tp if tp else 0.0, "rq": tp / denominator}

    def average(self, categories: Mapping[int, bool], isthing: Optional[bool] = None) -> Dict[str, float]:
        """Mean PQ / SQ / RQ over `categories` (id -> is a thing), restricted to things or stuff by
        `isthing`, counting only categories with any TP, FP or FN (`n` of them)."""
        values = [self.per_category(c) for c, thing in categories.items() if isthing is None or thing == isthing]
        values = [v for v in values if v["pq"] is not None]
        n = len(values)
        mean = {key: sum(v[key] for v in values) / n if n else 0.0 for key in ("pq", "sq", "rq")}
        return {**mean, "n": n}


def _check_ids(ids: np.ndarray, segments: Dict[int, dict], where: str) -> Dict[int, int]:
    """Pixel count of each segment of `segments`; errors for ids found only in the PNG or only in the json."""
    labels, counts = np.unique(ids, return_counts=True)
    areas = {int(label): int(count) for label, count in zip(labels, counts) if label != VOID}
    only_png = sorted(set(areas) - set(segments))
    if only_png:
        raise BadSampleError(f"{where}: segment ids {only_png[:10]} are in the PNG but not in 'segments_info'.")
    only_json = sorted(set(segments) - set(areas))
    if only_json:
        raise BadSampleError(f"{where}: segment ids {only_json[:10]} are in 'segments_info' but not in the PNG.")
    return areas


def pq_image_stats(
    gt_ids: np.ndarray,
    gt_segments: Iterable[dict],
    pred_ids: np.ndarray,
    pred_segments: Iterable[dict],
    categories: Mapping[int, bool],
    where: str = "image",
) -> PQStat:
    """The PQ statistics of one image from its ground-truth and predicted segment-id maps and
    `segments_info` lists (`id`, `category_id`; ground truth also `iscrowd` and `area`)."""
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"{where}: the prediction is {pred_ids.shape} (H, W), the ground truth {gt_ids.shape}.")
    gt = {int(s["id"]): s for s in gt_segments}
    pred = {int(s["id"]): s for s in pred_segments}
    for segment_id, segment in pred.items():
        if segment["category_id"] not in categories:
            raise BadSampleError(
                f"{where}: predicted segment {segment_id} has unknown category_id {segment['category_id']}."
            )
    gt_png_areas = _check_ids(gt_ids, gt, f"{where} (ground truth)")
    pred_areas = _check_ids(pred_ids, pred, f"{where} (prediction)")
    gt_areas = {k: s.get("area", gt_png_areas[k]) for k, s in gt.items()}

    pairs, counts = np.unique(gt_ids.astype(np.uint64) * _OFFSET + pred_ids.astype(np.uint64), return_counts=True)
    overlap = {(int(p // _OFFSET), int(p % _OFFSET)): int(c) for p, c in zip(pairs, counts)}

    stat = PQStat()
    gt_matched, pred_matched = set(), set()
    for (g, p), intersection in overlap.items():
        if g not in gt or p not in pred or gt[g].get("iscrowd", 0) == 1:
            continue
        if gt[g]["category_id"] != pred[p]["category_id"]:
            continue
        union = pred_areas[p] + gt_areas[g] - intersection - overlap.get((VOID, p), 0)
        iou = intersection / union
        if iou > 0.5:
            entry = stat._of(gt[g]["category_id"])
            entry[0] += iou
            entry[1] += 1
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of_category = {}
    for g, segment in gt.items():
        if g in gt_matched:
            continue
        if segment.get("iscrowd", 0) == 1:
            crowd_of_category[segment["category_id"]] = g
            continue
        stat._of(segment["category_id"])[3] += 1
    for p, segment in pred.items():
        if p in pred_matched:
            continue
        ignored = overlap.get((VOID, p), 0)
        if segment["category_id"] in crowd_of_category:
            ignored += overlap.get((crowd_of_category[segment["category_id"]], p), 0)
        if ignored / pred_areas[p] > 0.5:
            continue
        stat._of(segment["category_id"])[2] += 1
    return stat


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: str, pred_folder: str) -> Dict[str, dict]:
    """
    PQ of COCO panoptic predictions (a json with `annotations`, one per image, and their PNGs in
    `pred_folder`) against the ground truth; returns, as panopticapi does, {"All" | "Things" |
    "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category id: {"pq", "sq", "rq"}}} in fractions.
    """
    with open(gt_json_file) as f:
        gt_data = json.load(f)
    with open(pred_json_file) as f:
        predictions = {ann["image_id"]: ann for ann in json.load(f)["annotations"]}
    categories = {c["id"]: bool(c["isthing"]) for c in gt_data["categories"]}
    stat = PQStat()
    for gt_ann in gt_data["annotations"]:
        pred_ann = predictions.get(gt_ann["image_id"])
        if pred_ann is None:
            raise BadSampleError(f"{pred_json_file}: no prediction for image {gt_ann['image_id']}.")
        stat += pq_image_stats(
            read_segment_ids(os.path.join(gt_folder, gt_ann["file_name"])),
            gt_ann["segments_info"],
            read_segment_ids(os.path.join(pred_folder, pred_ann["file_name"])),
            pred_ann["segments_info"],
            categories,
            where=f"image {gt_ann['image_id']} ({gt_ann['file_name']})",
        )
    return pq_summary(stat, categories)


def pq_summary(stat: PQStat, categories: Mapping[int, bool]) -> Dict[str, dict]:
    results = {
        name: stat.average(categories, isthing) for name, isthing in (("All", None), ("Things", True), ("Stuff", False))
    }
    results["per_class"] = {c: stat.per_category(c) for c in categories}
    return results

"""
Pascal VOC detection AP, with the devkit's rules (VOCevaldet / py-faster-rcnn's voc_eval):

* Boxes are compared in the devkit's 1-based inclusive pixel frame: a box's width is
  xmax - xmin + 1 (predictions, continuous XYXY, are shifted by +1 at xmin and ymin).
* Detections of a class, over all images, are taken in decreasing score order; each one matches the
  ground-truth box of its image with the largest IoU. IoU > threshold on a box not yet taken is a
  TP, on one already taken a FP; on a "difficult" box it counts as neither. IoU <= threshold is a FP.
  Recall is over the non-difficult boxes.
* AP: VOC2007's 11-point metric (mean over recall 0, 0.1, ..., 1 of the best precision at that
  recall or more) for the 2007 sets, the area under the monotone precision envelope otherwise.
"""

import json
import logging
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from detlib.data import MetadataCatalog
from detlib.data.datasets.pascal_voc import load_voc_instances

from .evaluator import DatasetEvaluator
from .prediction_stream import PredictionStream

__all__ = ["PascalVOCDetectionEvaluator", "voc_ap"]

logger = logging.getLogger(__name__)

_IOU_THRESHOLDS = tuple(t / 100 for t in range(50, 100, 5))


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from the recall / precision after each detection (in score order)."""
    if use_07_metric:
        return sum(float(np.max(precision[recall >= t], initial=0.0)) for t in np.arange(0.0, 1.1, 0.1)) / 11
    recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def _iou_devkit(box: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of one box with each row of `gt`, all XYXY in the devkit's inclusive pixel frame."""
    iw = np.maximum(np.minimum(gt[:, 2], box[2]) - np.maximum(gt[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], box[3]) - np.maximum(gt[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    return inter / (area + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inter)


def _class_ap(
    detections: List[Tuple[str, float, List[float]]],
    gt: Dict[str, Tuple[np.ndarray, np.ndarray]],
    threshold: float,
    use_07_metric: bool,
) -> float:
    """AP of one class: `detections` (image id, score, devkit box); `gt` image id -> (boxes, difficult)."""
    num_positives = sum(int((~difficult).sum()) for _, difficult in gt.values())
    if num_positives == 0:
        return float("nan")
    taken = {image_id: np.zeros(len(boxes), dtype=bool) for image_id, (boxes, _) in gt.items()}
    order = np.argsort([-score for _, score, _ in detections], kind="stable")
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, k in enumerate(order):
        image_id, _, box = detections[k]
        boxes, difficult = gt.get(image_id, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(boxes):
            ious = _iou_devkit(np.asarray(box), boxes)
            best = int(np.argmax(ious))
            if ious[best] > threshold:
                if difficult[best]:
                    continue
                if not taken[image_id][best]:
                    tp[rank] = 1
                    taken[image_id][best] = True
                else:
                    fp[rank] = 1
                continue
        fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, use_07_metric)


class PascalVOCDetectionEvaluator(DatasetEvaluator):
    """
    Box AP of a Pascal VOC split (metadata `dirname`, `split`, `year`, `thing_classes`), scored against
    its XML annotations with the devkit's rules (module docstring). Returns `{"bbox": {"AP": mean
    over IoU 0.50:0.95, "AP50", "AP75", "AP50-<class>", ...}}` in percent.
    """

    def __init__(self, dataset_name: str, *, distributed: bool = True, output_dir: Optional[str] = None):
        metadata = MetadataCatalog.get(dataset_name)
        self._dirname, self._split = metadata.dirname, metadata.split
        self._classes: Sequence[str] = metadata.thing_classes
        self._use_07_metric = metadata.year == 2007
        self._distributed = distributed
        self._stream = PredictionStream(output_dir, "voc_predictions")
        self.reset()

    def reset(self) -> None:
        self._stream.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            boxes = instances.pred_boxes.tensor.double().numpy().copy()
            boxes[:, :2] += 1.0  # to the devkit's 1-based frame
            rows = [
                [int(c), float(s), *b]
                for c, s, b in zip(instances.pred_classes.tolist(), instances.scores.tolist(), boxes.tolist())
            ]
            self._stream.append(inp["image_id"], json.dumps([{"image_id": inp["image_id"], "detections": rows}]))

    def _ground_truth(self) -> Dict[int, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
        """class -> image id -> (devkit boxes, difficult flags), from the split's XML files."""
        per_class: Dict[int, Dict[str, Tuple[list, list]]] = defaultdict(dict)
        for record in load_voc_instances(self._dirname, self._split, self._classes):
            for c in range(len(self._classes)):
                per_class[c][record["image_id"]] = ([], [])
            for ann in record["annotations"]:
                x0, y0, x1, y1 = ann["bbox"]
                boxes, difficult = per_class[ann["category_id"]][record["image_id"]]
                boxes.append([x0 + 1.0, y0 + 1.0, x1, y1])  # undo the loader's shift: the file's numbers
                difficult.append(bool(ann["difficult"]))
        return {
            c: {
                i: (np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(d, dtype=bool))
                for i, (b, d) in gt.items()
            }
            for c, gt in per_class.items()
        }

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        merged = self._stream.merge(self._distributed)
        if merged is None:
            return None
        detections: Dict[int, List[Tuple[str, float, List[float]]]] = defaultdict(list)
        for entry in json.loads(merged[1]):
            for c, score, *box in entry["detections"]:
                detections[c].append((entry["image_id"], score, box))
        gt = self._ground_truth()
        aps = np.array(
            [
                [_class_ap(detections[c], gt.get(c, {}), t, self._use_07_metric) for c in range(len(self._classes))]
                for t in _IOU_THRESHOLDS
            ]
        )
        metric = "VOC2007 11-point" if self._use_07_metric else "area"
        logger.info("Pascal VOC AP (%s metric) over %d images.", metric, len(merged[0]))
        mean_ap = 100 * np.nanmean(aps, axis=1)
        results = OrderedDict(AP=float(np.mean(mean_ap)), AP50=float(mean_ap[0]), AP75=float(mean_ap[5]))
        results.update({f"AP50-{name}": 100 * float(aps[0, c]) for c, name in enumerate(self._classes)})
        return OrderedDict(bbox=results)

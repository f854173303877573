"""Semantic segmentation metrics (mIoU, fwIoU, mACC, pACC) from a streamed confusion matrix."""

import logging
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import numpy as np

from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.bad_samples import BadSampleError
from detlib.data.detection_utils import read_sem_seg
from detlib.utils import comm

from .evaluator import DatasetEvaluator

__all__ = ["SemSegEvaluator", "segmentation_metrics"]

logger = logging.getLogger(__name__)


def segmentation_metrics(confusion: np.ndarray, class_names: List[str]) -> Dict[str, float]:
    """
    Metrics in percent from `confusion[pred, gt]` ((K + 1) x (K + 1); index K counts the ignored
    ground-truth pixels, which are left out): per class, IoU = TP / (GT + predicted - TP) and
    accuracy = TP / GT; their means over the classes present in the ground truth (mIoU, mACC),
    fwIoU (IoU weighted by each class's share of ground-truth pixels), pACC (TP / GT over all
    pixels), and `IoU-<name>` / `ACC-<name>` (NaN for a class absent from the ground truth).
    """
    counts = confusion[:-1, :-1].astype(np.float64)
    tp = np.diag(counts)
    gt = counts.sum(axis=0)
    pred = counts.sum(axis=1)
    present = gt > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(present, tp / gt, np.nan)
        iou = np.where(present, tp / (gt + pred - tp), np.nan)
    total = gt.sum()
    metrics = {
        "mIoU": 100 * float(np.mean(iou[present])) if present.any() else float("nan"),
        "fwIoU": 100 * float(np.sum(iou[present] * gt[present] / total)) if total else float("nan"),
    }
    metrics.update({f"IoU-{name}": 100 * float(v) for name, v in zip(class_names, iou)})
    metrics["mACC"] = 100 * float(np.mean(acc[present])) if present.any() else float("nan")
    metrics["pACC"] = 100 * float(tp.sum() / total) if total else float("nan")
    metrics.update({f"ACC-{name}": 100 * float(v) for name, v in zip(class_names, acc)})
    return metrics


class SemSegEvaluator(DatasetEvaluator):
    """
    Scores `sem_seg` outputs (K x H x W scores per image, argmax taken) against the dataset's label
    PNGs, where `ignore_label` marks pixels left out. Only a (K + 1)^2 confusion matrix is kept,
    summed over ranks in `evaluate`. Returns `{"sem_seg": segmentation_metrics(...)}`.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        sem_seg_loading_fn: Callable[..., np.ndarray] = read_sem_seg,
        num_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset whose records have `sem_seg_file_name`.
            distributed: sum the confusion matrices of all ranks.
            output_dir: unused (kept for Detectron2's signature); the metrics are returned.
            sem_seg_loading_fn: reads a label file into an H x W integer array.
            num_classes: default: the number of the metadata's `stuff_classes`.
            ignore_label: default: the metadata's `ignore_label` (255 if it has none).
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._load = sem_seg_loading_fn
        metadata = MetadataCatalog.get(dataset_name)
        self._class_names = list(metadata.get("stuff_classes") or [])
        self._num_classes = num_classes if num_classes is not None else len(self._class_names)
        if not self._num_classes:
            raise ValueError(f"Dataset '{dataset_name}' has no 'stuff_classes' metadata; pass num_classes.")
        if len(self._class_names) != self._num_classes:
            self._class_names = [str(k) for k in range(self._num_classes)]
        self._ignore_label = ignore_label if ignore_label is not None else metadata.get("ignore_label", 255)
        self._gt_files: Optional[Dict[str, str]] = None
        self.reset()

    def reset(self) -> None:
        self._confusion = np.zeros((self._num_classes + 1,) * 2, dtype=np.int64)

    def _gt_file(self, inp: dict) -> str:
        if "sem_seg_file_name" in inp:
            return inp["sem_seg_file_name"]
        if self._gt_files is None:  # the test mapper drops the label path: look it up by image
            records = DatasetCatalog.get(self._dataset_name)
            self._gt_files = {r["file_name"]: r["sem_seg_file_name"] for r in records}
        return self._gt_files[inp["file_name"]]

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        k = self._num_classes
        for inp, out in zip(inputs, outputs):
            gt_file = self._gt_file(inp)
            if out["sem_seg"].shape[0] != k:
                raise ValueError(f"The prediction for {gt_file} scores {out['sem_seg'].shape[0]} classes, not {k}.")
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.int64)
            gt = self._load(gt_file, dtype=np.int64)
            if gt.shape != pred.shape:
                raise ValueError(f"{gt_file}: labels are {gt.shape} (H, W) but the prediction is {pred.shape}.")
            ignored = gt == self._ignore_label
            bad = ((gt < 0) | (gt >= k)) & ~ignored
            if bad.any():
                raise BadSampleError(
                    f"{gt_file}: label {int(gt[bad][0])} is neither a class (0..{k - 1}) nor the ignore label "
                    f"{self._ignore_label}."
                )
            gt = np.where(ignored, k, gt)
            self._confusion += np.bincount((k + 1) * pred.ravel() + gt.ravel(), minlength=(k + 1) ** 2).reshape(
                k + 1, k + 1
            )

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        confusion = self._confusion
        if self._distributed and comm.get_world_size() > 1:
            confusion = sum(comm.all_gather(self._confusion))
            if not comm.is_main_process():
                return None
        metrics = segmentation_metrics(confusion, self._class_names)
        logger.info(
            "Semantic segmentation: %s", ", ".join(f"{n} {metrics[n]:.2f}" for n in ("mIoU", "fwIoU", "mACC", "pACC"))
        )
        return OrderedDict(sem_seg=metrics)

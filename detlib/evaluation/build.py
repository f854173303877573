"""The evaluator(s) a dataset's metadata asks for."""

from typing import List, Optional

from detlib.data import MetadataCatalog

from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators
from .lvis_evaluation import LVISEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator
from .pascal_voc_evaluation import PascalVOCDetectionEvaluator
from .sem_seg_evaluation import SemSegEvaluator

__all__ = ["build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """
    The evaluators of `dataset_name`'s `evaluator_type`, as Detectron2's train_net picks them:
    "coco" -> COCO AP (boxes, masks, keypoints, proposal recall); "lvis" -> LVIS AP;
    "sem_seg" -> mIoU & co.; "coco_panoptic_seg" -> COCO AP, mIoU of the semantic part and PQ;
    "pascal_voc" -> VOC AP; "cityscapes_instance" / "cityscapes_sem_seg" -> cityscapesscripts' AP /
    IoU. Results go under `output_folder`.
    """
    metadata = MetadataCatalog.get(dataset_name)
    kind = metadata.get("evaluator_type")
    evaluators: List[DatasetEvaluator] = []
    if kind in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if kind in ("coco", "coco_panoptic_seg"):
        evaluators.append(
            COCOEvaluator(dataset_name, output_dir=output_folder, kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS)
        )
    if kind == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if kind == "lvis":
        evaluators.append(LVISEvaluator(dataset_name, output_dir=output_folder))
    if kind == "pascal_voc":
        evaluators.append(PascalVOCDetectionEvaluator(dataset_name, output_dir=output_folder))
    if kind == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    if kind == "cityscapes_sem_seg":
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset '{dataset_name}' of evaluator_type {kind!r}; supported: coco, lvis, "
            "sem_seg, coco_panoptic_seg, pascal_voc, cityscapes_instance, cityscapes_sem_seg. Pass evaluators to DefaultTrainer.test, or override "
            "build_evaluator."
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

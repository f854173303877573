from .build import build_evaluator
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator, instances_to_coco_json
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .lvis_evaluation import LVISEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator
from .pascal_voc_evaluation import PascalVOCDetectionEvaluator
from .prediction_grid import write_prediction_grid
from .sem_seg_evaluation import SemSegEvaluator
from .validation_loss import build_validation_loader, loss_on_dataset

__all__ = [k for k in globals().keys() if not k.startswith("_")]

from .coco_evaluation import COCOEvaluator, instances_to_coco_json
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .prediction_grid import write_prediction_grid

__all__ = [k for k in globals().keys() if not k.startswith("_")]

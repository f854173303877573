#!/usr/bin/env python
"""Train or evaluate the model a config describes.

    tools/train_net.py --config-file configs/Shapes/mask_rcnn_shapes.yaml
    tools/train_net.py --config-file X.yaml --resume                       # continue a killed run
    tools/train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS model_final.pth
    tools/train_net.py --config-file X.yaml --num-gpus 2                   # DDP (gloo on CPU)
    torchrun --nproc_per_node 8 tools/train_net.py --config-file X.yaml   # or srun: joins their world

A run preempted by SIGTERM/SIGUSR1 saves a checkpoint and exits with code 75 (requeue, then --resume);
see docs/cluster.md.

The evaluators follow each test set's `evaluator_type` (COCO, LVIS, semantic, panoptic, Pascal VOC;
docs/datasets.md). Trailing `KEY VALUE` pairs override the config. Everything a run produces goes to OUTPUT_DIR:
log.txt, config.yaml, checkpoints, metrics.json, TensorBoard events, evaluation results and
training-curve plots.
"""

import datetime
import logging
import math
import os
import sys
from typing import Dict, List

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import get_cfg
from detlib.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detlib.engine.defaults import verify_results
from detlib.evaluation import write_prediction_grid
from detlib.utils import comm

logger = logging.getLogger("detlib.tools.train_net")


def setup(args):
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args, trainer_class=DefaultTrainer):
    """Train (or with --eval-only, evaluate) in this process. Projects reuse this entry point
    with their own `DefaultTrainer` subclass as `trainer_class`."""
    cfg = setup(args)
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer_class.test(cfg, model)
        if comm.is_main_process():
            log_final_results(cfg, results)
            if cfg.TEST.EXPECTED_RESULTS:
                verify_results(cfg, results)
        return results

    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process():
        for path in write_training_report(cfg, trainer.model):
            logger.info("Training report: %s", path)
        if results:
            log_final_results(cfg, results)
    return results


def write_training_report(cfg, model: nn.Module) -> List[str]:
    """Loss, lr and AP curves from OUTPUT_DIR/metrics.json, and the model's detections on the first
    images of the first test set (`predictions.png`). Returns the paths written."""
    # Imported here: matplotlib takes a second to import, in every process, and only the main
    # process needs it, once training is over.
    from detlib.visualization.training_report import write_training_curves

    written = []
    metrics_file = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if os.path.exists(metrics_file):
        written += write_training_curves(metrics_file, cfg.OUTPUT_DIR)
    if cfg.DATASETS.TEST:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        path = os.path.join(cfg.OUTPUT_DIR, "predictions.png")
        written.append(write_prediction_grid(model, cfg, cfg.DATASETS.TEST[0], path))
    return written


_HEADLINE_METRICS = (
    *("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"),
    *("AR@100", "AR@1000", "PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "fwIoU", "mACC", "pACC"),
)


def log_final_results(cfg, results: Dict) -> None:
    """One line per test set and task with its headline metrics (percent): AP for boxes, masks,
    keypoints (COCO, LVIS, VOC), AR for proposals, PQ for panoptic, mIoU for semantic segmentation."""
    per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
    for dataset_name, tasks in per_dataset.items():
        for task, metrics in tasks.items():
            headline = "  ".join(
                f"{name} {metrics[name]:.2f}"
                for name in _HEADLINE_METRICS
                if name in metrics and math.isfinite(metrics[name])
            )
            logger.info("Final %s %s: %s", dataset_name, task, headline)


if __name__ == "__main__":
    args = default_argument_parser().parse_args(sys.argv[1:])
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        timeout=datetime.timedelta(seconds=args.dist_timeout),
        args=(args,),
    )

#!/usr/bin/env python
"""Train or evaluate the model a Python (lazy) config describes, as Detectron2's tool of this name.

    tools/lazyconfig_train_net.py --config-file configs/Shapes/mask_rcnn_shapes.py
    tools/lazyconfig_train_net.py --config-file X.py --resume                  # continue a killed run
    tools/lazyconfig_train_net.py --config-file X.py --eval-only train.init_checkpoint=model_final.pth
    tools/lazyconfig_train_net.py --config-file X.py --num-gpus 2 train.max_iter=1000 optimizer.lr=0.01

The config file is run (it is a program, like this script); a saved `config.yaml` of a run is read
as data, and names callables only from detlib, torch, torchvision, fvcore and timm unless
`--allow-any-target` is given. Trailing `key=value` pairs override the config (values are Python
literals, else strings). Everything a run produces goes to `train.output_dir`: log.txt,
config.yaml, checkpoints, metrics.json, TensorBoard events and evaluation results. A run preempted
by SIGTERM/SIGUSR1 saves a checkpoint and exits with code 75 (requeue, then --resume).
"""

import datetime
import logging
import sys

from detlib.checkpoint import DetectionCheckpointer
from detlib.config import LazyConfig, instantiate
from detlib.engine import create_ddp_model, default_argument_parser, default_setup, launch
from detlib.engine.lazy_trainer import LazyConfigTrainer, train_device
from detlib.utils import comm

logger = logging.getLogger("detlib.tools.lazyconfig_train_net")


def setup(args):
    cfg = LazyConfig.load(args.config_file, allow_any_target=args.allow_any_target)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    """Train (or with --eval-only, evaluate `train.init_checkpoint`) in this process."""
    cfg = setup(args)
    if args.eval_only:
        model = LazyConfigTrainer.build_model(cfg)
        model.to(train_device(cfg.train))
        model = create_ddp_model(model)
        DetectionCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return LazyConfigTrainer.test(cfg, model)
    if "evaluator" in cfg.dataloader:  # fail on a bad evaluator now, not after training
        instantiate(cfg.dataloader.evaluator)
    trainer = LazyConfigTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process() and results:
        logger.info("Final results: %s", dict(results))
    return results


def argument_parser():
    parser = default_argument_parser(
        epilog=(
            "Examples:\n"
            "  train:    tools/lazyconfig_train_net.py --config-file cfg.py\n"
            "  resume:   tools/lazyconfig_train_net.py --config-file cfg.py --resume\n"
            "  evaluate: tools/lazyconfig_train_net.py --config-file cfg.py --eval-only "
            "train.init_checkpoint=model.pth\n"
            "  override: tools/lazyconfig_train_net.py --config-file cfg.py train.max_iter=100 optimizer.lr=0.01\n"
        )
    )
    parser.add_argument(
        "--allow-any-target",
        action="store_true",
        help="let a .yaml config name callables outside detlib/torch/torchvision/fvcore/timm (trusted files only)",
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args(sys.argv[1:])
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        timeout=datetime.timedelta(seconds=args.dist_timeout),
        args=(args,),
    )

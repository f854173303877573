"""Training from a Python (lazy) config: the `DefaultTrainer` loop, hooks, checkpoints and resumption,
with every part instantiated from the config's entries, as Detectron2's `lazyconfig_train_net.py`
reads them:

* `model`, `optimizer` (its `params.model` is set to the model), `lr_multiplier` (a fvcore
  `ParamScheduler` over training progress), `dataloader.train` / `.test` / `.evaluator`;
* `train`: `output_dir`, `init_checkpoint`, `max_iter`, `device`, `amp.enabled` (plus detlib's
  optional `amp.precision`), `ddp` (DistributedDataParallel's arguments and `fp16_compression`),
  `checkpointer` (`period`, `max_to_keep`), `eval_period`, `log_period`, and detlib's optional
  `clip_gradients` (`enabled`, `clip_type`, `clip_value`, `norm_type`) and `model_ema` (`enabled`,
  `decay`: periodic evaluation then uses the averaged weights, which checkpoints also hold).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detlib.config import instantiate
from detlib.evaluation import inference_on_dataset
from detlib.solver import LRMultiplier, add_gradient_clipping
from detlib.utils import comm

from . import hooks
from .defaults import DefaultTrainer, TrainingCheckpointer, amp_precision, create_ddp_model, default_writers
from .model_ema import EMAHook, ModelEMA
from .preemption import PreemptionCheckpointer
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = ["LazyConfigTrainer", "train_device"]

logger = logging.getLogger(__name__)


def train_device(train) -> str:
    """`train.device`, or the CPU (with a warning) when it names CUDA and there is none."""
    device = train.get("device", "cuda")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        logger.warning("train.device is %r but CUDA is not available: running on the CPU", device)
        return "cpu"
    return device


def _wrap_ddp(model: nn.Module, ddp_options) -> nn.Module:
    options = dict(ddp_options or {})
    fp16_compression = options.pop("fp16_compression", False)
    model = create_ddp_model(model, **options)
    if fp16_compression and isinstance(model, DistributedDataParallel):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    return model


class LazyConfigTrainer(DefaultTrainer):
    """`DefaultTrainer` for a Python config (see the module docstring for the entries it reads).

    Typical use::

        trainer = LazyConfigTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        train = cfg.train
        device = train_device(train)
        model = self.build_model(cfg).to(device)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        clip = train.get("clip_gradients")
        if clip is not None and clip.get("enabled", False):
            optimizer.__class__ = add_gradient_clipping(
                type(optimizer), clip.clip_type, clip.clip_value, clip.get("norm_type", 2.0)
            )
        data_loader = instantiate(cfg.dataloader.train)
        ema = train.get("model_ema")
        self.ema = ModelEMA(model, ema.get("decay", 0.999)) if ema is not None and ema.get("enabled", False) else None
        model = _wrap_ddp(model, train.get("ddp"))
        amp = train.get("amp", {})
        default_precision = "float16" if torch.device(device).type == "cuda" else "bfloat16"
        precision = amp_precision(amp.get("enabled", False), amp.get("precision", default_precision), device)
        if precision is not None:
            self._trainer: SimpleTrainer = AMPTrainer(model, data_loader, optimizer, precision=precision)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), max_iter=train.max_iter)
        checkpointables = {"optimizer": optimizer, "scheduler": self.scheduler}
        if getattr(self._trainer, "grad_scaler", None) is not None:
            checkpointables["grad_scaler"] = self._trainer.grad_scaler
        if self.ema is not None:
            checkpointables["model_ema"] = self.ema
        self.checkpointer = TrainingCheckpointer(model, train.output_dir, data_loader=data_loader, **checkpointables)
        self.start_iter = 0
        self.max_iter = train.max_iter
        self.cfg = cfg
        self.initial_weights = train.get("init_checkpoint", "")
        self.eval_results: Optional[Dict] = None
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List[Optional[HookBase]]:
        train = self.cfg.train
        checkpointing = train.get("checkpointer", {})

        def test_and_keep_results():
            if self.ema is None:
                self.eval_results = self.test(self.cfg, self.model)
            else:
                with self.ema.apply_to(self.model):
                    self.eval_results = self.test(self.cfg, self.model)
            return self.eval_results

        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            EMAHook(self.ema, self.model) if self.ema is not None else None,
            # Collective (every rank's random state is saved), so every rank runs it; rank 0 writes.
            hooks.PeriodicCheckpointer(
                self.checkpointer,
                checkpointing.get("period", 5000),
                train.max_iter,
                max_to_keep=checkpointing.get("max_to_keep"),
            ),
            PreemptionCheckpointer(self.checkpointer),
            hooks.EvalHook(train.get("eval_period", 0), test_and_keep_results)
            if "test" in self.cfg.dataloader and "evaluator" in self.cfg.dataloader
            else None,
            hooks.PeriodicWriter(default_writers(train.output_dir, self.max_iter), period=train.get("log_period", 20))
            if comm.is_main_process()
            else None,
        ]

    def train(self) -> Optional[Dict]:
        """Train from `start_iter` to `train.max_iter`; returns the last evaluation's results."""
        TrainerBase.train(self, self.start_iter, self.max_iter)
        return self.eval_results

    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        model = instantiate(cfg.model)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def test(cls, cfg, model: nn.Module, evaluators=None) -> Dict:
        """Evaluate `model` on `dataloader.test` with `dataloader.evaluator` (or `evaluators`)."""
        evaluator = instantiate(cfg.dataloader.evaluator) if evaluators is None else evaluators
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator) or {}
        if comm.is_main_process():
            logger.info("Evaluation results: %s", dict(results))
        return results

"""Hooks: what happens around training iterations besides the step itself."""

from __future__ import annotations

import datetime
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from detlib.checkpoint import DetectionCheckpointer
from detlib.evaluation.validation_loss import loss_on_dataset
from detlib.utils import comm
from detlib.utils.env import get_rng_state, set_rng_state
from detlib.utils.events import EventWriter

from .train_loop import HookBase

__all__ = [
    "CallbackHook",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "EvalHook",
    "PeriodicWriter",
    "BestCheckpointer",
    "ValidationLoss",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """A hook made of plain functions, each called with the trainer."""

    def __init__(
        self,
        *,
        before_train: Optional[Callable] = None,
        after_train: Optional[Callable] = None,
        before_step: Optional[Callable] = None,
        after_step: Optional[Callable] = None,
    ):
        self._callbacks = {
            "before_train": before_train,
            "after_train": after_train,
            "before_step": before_step,
            "after_step": after_step,
        }

    def _call(self, event: str) -> None:
        if self._callbacks[event] is not None:
            self._callbacks[event](self.trainer)

    def before_train(self) -> None:
        self._call("before_train")

    def after_train(self) -> None:
        self._call("after_train")

    def before_step(self) -> None:
        self._call("before_step")

    def after_step(self) -> None:
        self._call("after_step")


class IterationTimer(HookBase):
    """Record each iteration's duration as `time` and log the run's total and per-iteration time.

    The first `warmup_iter` iterations (allocations, cudnn autotuning) are left out of the summary.
    Register it first: the time then spans the other hooks' `before_step` and the step itself.
    """

    def __init__(self, warmup_iter: int = 3):
        self._warmup_iter = warmup_iter
        self._step_start = 0.0
        self._train_start = 0.0
        self._timed_total = 0.0
        self._timed_iters = 0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        elapsed = time.perf_counter() - self._step_start
        if self.trainer.iter - self.trainer.start_iter >= self._warmup_iter:
            self._timed_total += elapsed
            self._timed_iters += 1
        self.trainer.storage.put_scalar("time", elapsed)

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        if self._timed_iters > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                self._timed_iters,
                datetime.timedelta(seconds=int(self._timed_total)),
                self._timed_total / self._timed_iters,
            )
        logger.info("Total training time: %s", datetime.timedelta(seconds=int(total)))


class LRScheduler(HookBase):
    """Record the learning rate as `lr` and step the scheduler after every iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler):
        self._optimizer = optimizer
        self.scheduler = scheduler
        # The lr reported is that of the largest parameter group (the "ordinary" weights).
        groups = optimizer.param_groups
        self._reported_group = max(range(len(groups)), key=lambda i: len(groups[i]["params"]))

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._reported_group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """Save `{file_prefix}_{iteration:07d}` every `period` iterations and `{file_prefix}_final`
    after the last one; keep only the newest `max_to_keep` periodic ones if given."""

    def __init__(
        self,
        checkpointer: DetectionCheckpointer,
        period: int,
        max_iter: Optional[int] = None,
        max_to_keep: Optional[int] = None,
        file_prefix: str = "model",
    ):
        if period <= 0:
            raise ValueError(f"Checkpoint period must be positive, got {period}")
        self.checkpointer = checkpointer
        self.period = period
        self.max_iter = max_iter
        self.max_to_keep = max_to_keep
        self.file_prefix = file_prefix
        self._recent: List[str] = []

    def before_train(self) -> None:
        if self.max_iter is None:
            self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0:
            name = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save(name, iteration=iteration)
            self._forget_old(os.path.join(self.checkpointer.save_dir, name + ".pth"))
        if iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=iteration)

    def _forget_old(self, path: str) -> None:
        if self.max_to_keep is None or not self.checkpointer.save_to_disk:
            return
        self._recent.append(path)
        while len(self._recent) > self.max_to_keep:
            old = self._recent.pop(0)
            if os.path.exists(old):
                os.remove(old)


def _flatten_results(results: Dict[str, Any], prefix: str = "") -> Dict[str, float]:
    """{"bbox": {"AP": 40.1}} -> {"bbox/AP": 40.1}."""
    flat = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_results(value, name + "/"))
        else:
            try:
                flat[name] = float(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"Evaluation result '{name}' = {value!r} is not a number") from error
    return flat


class EvalHook(HookBase):
    """Run `eval_function()` every `eval_period` iterations and after training, and record its
    results (a possibly nested dict of numbers) as scalars named like `bbox/AP`.

    Evaluation leaves the random generators as it found them, so a run's training is the same
    whether or not (and how often) it evaluates, and a resumed run matches an uninterrupted one.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Optional[Dict]], eval_after_train: bool = True):
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self) -> None:
        rng_state = get_rng_state()
        try:
            results = self._func()
        finally:
            set_rng_state(rng_state)
        if results:
            flat = _flatten_results(results)
            for name, value in flat.items():
                if not math.isfinite(value):
                    logger.warning("Evaluation result %s is %s", name, value)
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        # Ranks wait for each other so that none runs ahead into training while others evaluate.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # Only after a completed run; a crash is not followed by a (slow) evaluation.
        if self._eval_after_train and self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()
        del self._func  # evaluation closures often hold loaders with worker processes


class PeriodicWriter(HookBase):
    """Call every writer every `period` iterations, after the last iteration, and at the end."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20):
        for writer in writers:
            if not isinstance(writer, EventWriter):
                raise TypeError(f"{type(writer).__name__} is not an EventWriter")
        self._writers = list(writers)
        self._period = period

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self._period == 0 or iteration == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            writer.write()  # what hooks recorded after the last step (the final evaluation)
            writer.close()


class BestCheckpointer(HookBase):
    """Save `file_prefix.pth` whenever the evaluation metric `val_metric` (e.g. "bbox/AP")
    improves. Register it after the `EvalHook` that produces the metric."""

    def __init__(
        self,
        eval_period: int,
        checkpointer: DetectionCheckpointer,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode must be 'max' or 'min', got '{mode}'")
        self._period = eval_period
        self._checkpointer = checkpointer
        self._val_metric = val_metric
        self._better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        self._file_prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None

    def _check(self) -> None:
        # Evaluators return results on the main process only; every rank must agree on saving,
        # since saving is collective.
        latest = comm.all_gather(self.trainer.storage.latest().get(self._val_metric))[0]
        if latest is None:
            logger.warning("BestCheckpointer: no metric '%s' was recorded; nothing to compare", self._val_metric)
            return
        value, iteration = latest
        if not math.isfinite(value) or iteration == self.best_iter:
            return
        if self.best_metric is None or self._better(value, self.best_metric):
            logger.info(
                "%s improved to %.4f at iteration %d (was %s); saving %s",
                self._val_metric,
                value,
                iteration,
                self.best_metric,
                self._file_prefix,
            )
            self.best_metric, self.best_iter = value, iteration
            self._checkpointer.save(self._file_prefix, iteration=iteration, best_metric=value)

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._check()

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:
            self._check()


class ValidationLoss(HookBase):
    """Every `period` iterations, the model's own losses on a held-out loader, recorded as
    `val/<loss>` scalars (and `val/total_loss`), so that metrics.json and TensorBoard show them
    next to the training losses.

    The model runs in training mode (its own sampling) without gradients; its buffers and the
    random generators are restored afterwards, so training is the same with or without this hook.
    Collective in distributed runs: every rank computes on its shard of the loader.
    """

    def __init__(self, period: int, model: torch.nn.Module, data_loader: Iterable):
        self._period = period
        self._model = model
        self._loader = data_loader

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period <= 0 or next_iter % self._period != 0:
            return
        rng_state = get_rng_state()
        try:
            losses = loss_on_dataset(self._model, self._loader)
        finally:
            set_rng_state(rng_state)
        scalars = {f"val/{name}": value for name, value in losses.items()}
        self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)

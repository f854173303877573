"""The training loop: a model that returns its own losses, summed and minimized.

`TrainerBase` runs iterations and calls hooks around them. `SimpleTrainer` defines one iteration:
next batch -> `model(batch)` -> dict of scalar losses -> sum -> backward -> optimizer step. It never
sees predictions and never calls a loss function, so any model that returns a loss dict trains
with it (a detector, a classifier, `ModelWithLoss(model, loss_fn)`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from typing import Any, ContextManager, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from detlib.utils import comm
from detlib.utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer"]

logger = logging.getLogger(__name__)


class HookBase:
    """Code run around training iterations. `self.trainer` is set when the hook is registered.

    Subclasses override any of `before_train`, `after_train`, `before_step`, `after_step`.
    During a step, `self.trainer.iter` is the iteration being run.
    """

    trainer: TrainerBase

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}


class TrainerBase:
    """Runs `run_step` for iterations [start_iter, max_iter) inside an `EventStorage`, with hooks.

    Attributes:
        iter: the current iteration; equals `max_iter` after a run that finished normally.
        start_iter, max_iter: the range of the current `train` call.
        storage: the `EventStorage` of the current run.
    """

    def __init__(self) -> None:
        self.iter = self.start_iter = self.max_iter = 0
        self._hooks: List[HookBase] = []
        self.storage: EventStorage

    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """Append hooks (None entries are ignored); they run in registration order."""
        for hook in hooks:
            if hook is None:
                continue
            if not isinstance(hook, HookBase):
                raise TypeError(f"Hooks must be HookBase instances, got {type(hook).__name__}")
            # A proxy avoids a trainer <-> hook reference cycle.
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                while self.iter < max_iter:
                    self._one_iteration()
                    self.iter += 1
                # iter >= max_iter tells after_train hooks that training completed.
                self.iter = max(start_iter, max_iter)
            except Exception:
                logger.exception("Exception during training at iteration %d:", self.iter)
                raise
            finally:
                self.after_train()

    def _one_iteration(self) -> None:
        self.before_step()
        self.run_step()
        self.after_step()

    def before_train(self) -> None:
        for hook in self._hooks:
            hook.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for hook in self._hooks:
            hook.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for hook in self._hooks:
            hook.before_step()

    def after_step(self) -> None:
        for hook in self._hooks:
            hook.after_step()

    def run_step(self) -> None:
        raise NotImplementedError


LossOutput = Union[Mapping[str, torch.Tensor], torch.Tensor]


def _as_loss_dict(output: LossOutput) -> Dict[str, torch.Tensor]:
    """Validate what a training-mode model returned: a dict of scalar losses (or one scalar)."""
    if isinstance(output, torch.Tensor) and output.numel() == 1:
        output = {"total_loss": output}
    if not isinstance(output, Mapping):
        what = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise TypeError(
            f"In training mode the model must return a dict of scalar loss tensors (or one scalar "
            f"tensor), got {what}. A model that returns predictions can be trained by wrapping it: "
            f"detlib.engine.ModelWithLoss(model, loss_fn)."
        )
    if not output:
        raise ValueError("The model returned an empty loss dict; there is nothing to minimize")
    for name, value in output.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"Loss '{name}' must be a scalar tensor, got {shape}")
    return dict(output)


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration on the sum of the model's losses.

    Args:
        model: in training mode, `model(batch)` returns `dict[str, scalar Tensor]` (or one scalar,
            recorded as `total_loss`). Everything the model wants recorded beyond its losses it
            puts into `get_event_storage()` itself.
        data_loader: an iterable of batches, endless for iteration-based training.
        optimizer: a torch optimizer over the model's parameters.
        gather_metric_period: gather loss values from all ranks every this many iterations.
        zero_grad_before_forward: zero gradients before the forward instead of after it (for
            models that inspect `.grad` in their forward).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
    ):
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self.model.train()
        self.zero_grad_before_forward = zero_grad_before_forward
        self.gather_metric_period = gather_metric_period
        self.data_loader = data_loader
        self._data_loader_iter_obj = None

    @property
    def _data_loader_iter(self):
        # Created on first use, so that a trainer can be built before its data starts flowing.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def _next_batch(self) -> Tuple[Any, float]:
        """The next batch, and the seconds spent waiting for it."""
        began = time.perf_counter()
        batch = next(self._data_loader_iter)
        return batch, time.perf_counter() - began

    def run_step(self) -> None:
        assert self.model.training, f"{type(self).__name__}: the model was switched to eval mode and not back"
        data, data_time = self._next_batch()
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with self._forward_context():
            loss_dict = _as_loss_dict(self.model(data))
            losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self._backward_and_step(losses, loss_dict, data_time)

    def _forward_context(self) -> ContextManager:
        """The context the forward pass and the loss sum run in (AMPTrainer: autocast)."""
        return contextlib.nullcontext()

    def _backward_and_step(self, losses: torch.Tensor, loss_dict: Dict[str, torch.Tensor], data_time: float) -> None:
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()

    def _write_metrics(self, loss_dict: Dict[str, torch.Tensor], data_time: float) -> None:
        """Check every loss is finite (raising otherwise) and record the losses averaged over ranks.

        Runs between backward and the optimizer step, so that non-finite losses never reach the
        weights; reading the values is the step's one host-device sync.
        """
        names = list(loss_dict)
        values = torch.stack([loss_dict[k].detach().float().reshape(()) for k in names]).cpu()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad = ", ".join(f"{names[i]}={values[i].item()}" for i in range(len(names)) if not finite[i])
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={self.iter}: {bad} (all losses: "
                + ", ".join(f"{k}={v:.4g}" for k, v in zip(names, values.tolist()))
                + ")"
            )
        if (self.iter + 1) % self.gather_metric_period != 0:
            return
        metrics = dict(zip(names, values.tolist()))
        metrics["data_time"] = data_time
        all_metrics = comm.gather(metrics)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        # The slowest rank's data time tells whether loading is the bottleneck.
        storage.put_scalar("data_time", max(m.pop("data_time") for m in all_metrics))
        averaged = {k: sum(m[k] for m in all_metrics) / len(all_metrics) for k in names}
        if "total_loss" not in averaged or len(averaged) > 1:
            storage.put_scalar("total_loss", sum(averaged.values()))
        storage.put_scalars(**averaged)


class AMPTrainer(SimpleTrainer):
    """`SimpleTrainer` with the forward pass under autocast.

    float16 uses a `GradScaler` against gradient underflow; bfloat16 has float32's range and needs
    none. Works on CUDA and, with bfloat16, on CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
        precision: torch.dtype = torch.float16,
    ):
        super().__init__(model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward)
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AMP precision must be torch.float16 or torch.bfloat16, got {precision}")
        self.device_type = next(model.parameters()).device.type
        if precision == torch.float16 and self.device_type != "cuda":
            raise ValueError("float16 autocast needs CUDA; use precision=torch.bfloat16 on CPU")
        if grad_scaler is None and precision == torch.float16:
            grad_scaler = torch.amp.GradScaler(self.device_type)
        self.grad_scaler = grad_scaler
        self.precision = precision

    def _forward_context(self) -> ContextManager:
        return torch.autocast(self.device_type, dtype=self.precision)

    def _backward_and_step(self, losses: torch.Tensor, loss_dict: Dict[str, torch.Tensor], data_time: float) -> None:
        if self.grad_scaler is None:
            super()._backward_and_step(losses, loss_dict, data_time)
            return
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

"""Learning-rate schedules with warmup, as multipliers of each parameter group's base lr.

A schedule is a `fvcore` `ParamScheduler`: a function of training progress in [0, 1] that returns
the factor the base lr is multiplied by. `LRMultiplier` drives one through torch's scheduler API
and is stepped once per iteration.
"""

from __future__ import annotations

import logging
from typing import List, Literal, Sequence

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)
from torch.optim import Optimizer

__all__ = ["WarmupParamScheduler", "LRMultiplier", "WarmupMultiStepLR", "WarmupCosineLR", "build_lr_scheduler"]

logger = logging.getLogger(__name__)


class WarmupParamScheduler(CompositeParamScheduler):
    """Prepend a warmup to `scheduler`: over the first `warmup_length` of training the factor goes
    from `warmup_factor * scheduler(0)` to `scheduler(warmup_length)`, linearly or held constant."""

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: Literal["linear", "constant"] = "linear",
        rescale_interval: bool = False,
    ):
        """
        Args:
            warmup_length: fraction of the whole training spent warming up, in [0, 1].
            rescale_interval: run `scheduler` over the remaining (1 - warmup_length) of training
                instead of over its original interval (so its milestones move).
        """
        start = warmup_factor * scheduler(0.0)
        end = scheduler(warmup_length)
        if warmup_method == "linear":
            warmup = LinearParamScheduler(start, end)
        elif warmup_method == "constant":
            warmup = ConstantParamScheduler(start)
        else:
            raise ValueError(f"Unknown warmup method '{warmup_method}'; use 'linear' or 'constant'.")
        super().__init__(
            [warmup, scheduler],
            lengths=[warmup_length, 1.0 - warmup_length],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
        )


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Set every parameter group's lr to `base_lr * multiplier(iteration / max_iter)`.

    Step it once per iteration, after `optimizer.step()`.
    """

    def __init__(self, optimizer: Optimizer, multiplier: ParamScheduler, max_iter: int, last_iter: int = -1):
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(f"multiplier must be a fvcore ParamScheduler, got {type(multiplier).__name__}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict:
        # The multiplier is rebuilt from the config; only the position and base lrs are state.
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> List[float]:
        factor = self._multiplier(self.last_epoch / self._max_iter)
        return [base_lr * factor for base_lr in self.base_lrs]


def _multistep_multiplier(steps: Sequence[int], gamma: float, max_iter: int) -> MultiStepParamScheduler:
    kept = [s for s in steps if s <= max_iter]
    if len(kept) != len(steps):
        logger.warning("SOLVER.STEPS %s has milestones beyond MAX_ITER=%d; they are ignored.", list(steps), max_iter)
    return MultiStepParamScheduler(
        values=[gamma**k for k in range(len(kept) + 1)], milestones=kept, num_updates=max_iter
    )


class WarmupMultiStepLR(LRMultiplier):
    """Multiply the lr by `gamma` at each milestone iteration, after a warmup."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        max_iter: int,
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_iter: int = -1,
    ):
        multiplier = WarmupParamScheduler(
            _multistep_multiplier(milestones, gamma, max_iter),
            warmup_factor,
            min(warmup_iters / max_iter, 1.0),
            warmup_method,
        )
        super().__init__(optimizer, multiplier, max_iter, last_iter)


class WarmupCosineLR(LRMultiplier):
    """Cosine decay from the base lr to `end_factor * base_lr` at `max_iter`, after a warmup."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iter: int,
        end_factor: float = 0.0,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_iter: int = -1,
    ):
        multiplier = WarmupParamScheduler(
            CosineParamScheduler(1.0, end_factor), warmup_factor, min(warmup_iters / max_iter, 1.0), warmup_method
        )
        super().__init__(optimizer, multiplier, max_iter, last_iter)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """The schedule named by `SOLVER.LR_SCHEDULER_NAME`, with `SOLVER.WARMUP_*` warmup."""
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name == "WarmupMultiStepLR":
        schedule = _multistep_multiplier(solver.STEPS, solver.GAMMA, solver.MAX_ITER)
    elif name == "WarmupCosineLR":
        end_factor = solver.BASE_LR_END / solver.BASE_LR if solver.BASE_LR > 0 else 0.0
        schedule = CosineParamScheduler(1.0, end_factor)
    elif name == "WarmupStepWithFixedGammaLR":
        schedule = StepWithFixedGammaParamScheduler(
            base_value=1.0, gamma=solver.GAMMA, num_decays=solver.NUM_DECAYS, num_updates=solver.MAX_ITER
        )
    else:
        raise ValueError(
            f"Unknown SOLVER.LR_SCHEDULER_NAME '{name}'; choose one of "
            "'WarmupMultiStepLR', 'WarmupCosineLR', 'WarmupStepWithFixedGammaLR'."
        )
    multiplier = WarmupParamScheduler(
        schedule,
        solver.WARMUP_FACTOR,
        min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        solver.WARMUP_METHOD,
        solver.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier, max_iter=solver.MAX_ITER)

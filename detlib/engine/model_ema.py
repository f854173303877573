"""An exponential moving average (EMA) of a model's weights, updated after every training step.

Evaluating the averaged weights often gives a little more accuracy for free at the end of a long
schedule. The average covers every floating-point parameter and buffer (so batch-norm statistics are
averaged too); its state is a checkpointable, so a resumed run continues the same average.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .train_loop import HookBase

__all__ = ["ModelEMA", "EMAHook"]


def _float_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()}


class ModelEMA:
    """`ema = decay * ema + (1 - decay) * weights` for each floating-point tensor of the model."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.average = {k: v.detach().clone() for k, v in _float_state(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in _float_state(model).items():
            self.average[name].lerp_(value.detach(), 1.0 - self.decay)

    @contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block `model` holds the averaged weights; its own are put back afterwards."""
        state = _float_state(model)
        saved = {k: v.detach().clone() for k, v in state.items()}
        with torch.no_grad():
            for name, value in state.items():
                value.copy_(self.average[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in state.items():
                    value.copy_(saved[name])

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return dict(self.average)

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.average) - set(state))
        if missing:
            raise KeyError(f"The checkpoint's EMA state lacks {missing[:5]} ({len(missing)} tensors)")
        for name, value in self.average.items():
            value.copy_(state[name])


class EMAHook(HookBase):
    """Update `ema` from `model` after every step."""

    def __init__(self, ema: ModelEMA, model: nn.Module):
        self.ema, self.model = ema, model

    def after_step(self) -> None:
        self.ema.update(self.model)

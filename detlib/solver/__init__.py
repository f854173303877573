"""Optimizers and learning-rate schedules."""

from .build import (
    add_gradient_clipping,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)
from .lr_decay import get_vit_lr_decay_rate
from .lr_scheduler import LRMultiplier, WarmupCosineLR, WarmupMultiStepLR, WarmupParamScheduler

__all__ = [
    "add_gradient_clipping",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "get_vit_lr_decay_rate",
    "maybe_add_gradient_clipping",
    "LRMultiplier",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
]

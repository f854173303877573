"""Optimizer construction: parameter groups with per-kind weight decay and lr, optional clipping."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Type

import torch
from torch import nn

from .lr_scheduler import build_lr_scheduler

__all__ = ["build_optimizer", "get_default_optimizer_params", "maybe_add_gradient_clipping", "build_lr_scheduler"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for an optimizer, one per distinct (lr, weight_decay).

    Parameters of normalization layers get `weight_decay_norm`; parameters named `bias` get
    `base_lr * bias_lr_factor` and `weight_decay_bias` (default: `weight_decay`). `overrides`
    maps a parameter name (the last component, e.g. "embedding") to hyper-parameters that win over
    all of the above. A parameter shared by several modules is optimized once.
    """
    if weight_decay_bias is None:
        weight_decay_bias = weight_decay
    overrides = overrides or {}
    groups: Dict[tuple, List[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            hyper = {"lr": base_lr, "weight_decay": weight_decay}
            if isinstance(module, _NORM_TYPES):
                hyper["weight_decay"] = weight_decay_norm
            elif name == "bias":
                hyper = {"lr": base_lr * bias_lr_factor, "weight_decay": weight_decay_bias}
            hyper.update(overrides.get(name, {}))
            groups.setdefault(tuple(sorted(hyper.items())), []).append(param)
    return [{"params": params, **dict(key)} for key, params in groups.items()]


def _gradient_clipper(clip_cfg) -> Callable[[nn.Parameter], None]:
    clip_type = clip_cfg.CLIP_TYPE
    if clip_type == "value":
        return lambda p: nn.utils.clip_grad_value_(p, clip_cfg.CLIP_VALUE)
    if clip_type == "norm":
        return lambda p: nn.utils.clip_grad_norm_(p, clip_cfg.CLIP_VALUE, clip_cfg.NORM_TYPE)
    raise ValueError(f"Unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE '{clip_type}'; use 'value' or 'norm'.")


def maybe_add_gradient_clipping(cfg, optimizer_type: Type[torch.optim.Optimizer]) -> Type[torch.optim.Optimizer]:
    """`optimizer_type` itself, or, with `SOLVER.CLIP_GRADIENTS.ENABLED`, a subclass whose `step`
    first clips each parameter's gradient (by value, or rescaling its norm)."""
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        return optimizer_type
    clip = _gradient_clipper(cfg.SOLVER.CLIP_GRADIENTS)

    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    clip(param)
        return optimizer_type.step(self, closure)

    return type(optimizer_type.__name__ + "WithGradientClip", (optimizer_type,), {"step": step})


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (default) or AdamW, chosen by `SOLVER.OPTIMIZER`, over the parameter
    groups of `get_default_optimizer_params`."""
    solver = cfg.SOLVER
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    name = solver.OPTIMIZER
    if name == "SGD":
        optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return optimizer_type(params, lr=solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV)
    if name == "AdamW":
        optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        return optimizer_type(params, lr=solver.BASE_LR)
    raise ValueError(f"Unknown SOLVER.OPTIMIZER '{name}'; use 'SGD' or 'AdamW'.")

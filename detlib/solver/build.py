"""Optimizer construction: parameter groups with per-kind weight decay and lr, optional clipping."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Type

import torch
from torch import nn

from .lr_scheduler import build_lr_scheduler

__all__ = [
    "build_optimizer",
    "get_default_optimizer_params",
    "add_gradient_clipping",
    "maybe_add_gradient_clipping",
    "build_lr_scheduler",
]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    weight_decay_norm: Optional[float] = None,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
    lr_factor_func: Optional[Callable[[str], float]] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for an optimizer, one per distinct set of hyper-parameters.

    Each parameter starts from `base_lr` / `weight_decay` (a None leaves the optimizer's own
    default); then, in this order: parameters of normalization layers get `weight_decay_norm`;
    `lr_factor_func(full_parameter_name)` multiplies the lr (e.g. layer-wise decay,
    `get_vit_lr_decay_rate`); `overrides` maps a parameter's own name (the last component, e.g.
    "pos_embed") to hyper-parameters that win over all of the above. Biases (`bias`) get
    `base_lr * bias_lr_factor` and `weight_decay_bias` as such an override. A parameter shared by
    several modules is optimized once. These are Detectron2's rules and keyword names.
    """
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    bias_override: Dict[str, float] = {}
    if bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError("get_default_optimizer_params: bias_lr_factor needs base_lr")
        bias_override["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_override["weight_decay"] = weight_decay_bias
    if bias_override:
        if "bias" in overrides:
            raise ValueError(
                "get_default_optimizer_params: give bias hyper-parameters either as overrides or as bias_*"
            )
        overrides["bias"] = bias_override
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("get_default_optimizer_params: lr_factor_func needs base_lr")
    defaults = {k: v for k, v in (("lr", base_lr), ("weight_decay", weight_decay)) if v is not None}

    groups: Dict[tuple, List[nn.Parameter]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            hyper = dict(defaults)
            if isinstance(module, _NORM_TYPES) and weight_decay_norm is not None:
                hyper["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                hyper["lr"] *= lr_factor_func(f"{module_name}.{name}" if module_name else name)
            hyper.update(overrides.get(name, {}))
            groups.setdefault(tuple(sorted(hyper.items())), []).append(param)
    return [{"params": params, **dict(key)} for key, params in groups.items()]


def add_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], clip_type: str, clip_value: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """A subclass of `optimizer_type` whose `step` first clips each parameter's gradient: its values
    to [-clip_value, clip_value] (`clip_type="value"`), or its `norm_type`-norm to at most `clip_value`
    (`clip_type="norm"`)."""
    if clip_type == "value":

        def clip(p):
            nn.utils.clip_grad_value_(p, clip_value)
    elif clip_type == "norm":

        def clip(p):
            nn.utils.clip_grad_norm_(p, clip_value, norm_type)
    else:
        raise ValueError(f"Unknown gradient clip type '{clip_type}'; use 'value' or 'norm'.")

    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    clip(param)
        return optimizer_type.step(self, closure)

    return type(optimizer_type.__name__ + "WithGradientClip", (optimizer_type,), {"step": step})


def maybe_add_gradient_clipping(cfg, optimizer_type: Type[torch.optim.Optimizer]) -> Type[torch.optim.Optimizer]:
    """`optimizer_type` itself, or, with `SOLVER.CLIP_GRADIENTS.ENABLED`, `add_gradient_clipping` of it
    with `SOLVER.CLIP_GRADIENTS.{CLIP_TYPE, CLIP_VALUE, NORM_TYPE}`."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return optimizer_type
    return add_gradient_clipping(optimizer_type, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE)


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

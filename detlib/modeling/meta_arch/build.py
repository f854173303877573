"""The registry of meta-architectures (whole models) and `build_model`."""

from typing import Any

import torch
from torch import nn

from detlib.config import CfgNode, ConfigKeyError
from detlib.utils.registry import Registry

from ..acceleration import accelerate_from_config

__all__ = ["META_ARCH_REGISTRY", "build_model"]

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Whole models, built from `cfg`. Called on a list of input dicts (Detectron2's format), they return
a loss dict in training and a list of per-image result dicts in inference.
"""


class _LookupRecordingNode(CfgNode):
    """`MODEL.LOSS_WEIGHTS` while a model is built: records the loss names its parts look up."""

    def __init__(self, init: CfgNode):
        super().__init__(dict(init), new_allowed=True)
        self.__dict__["looked_up"] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.looked_up.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.looked_up.add(key)
        return super().__getitem__(key)


def build_model(cfg) -> nn.Module:
    """
    The model named by `cfg.MODEL.META_ARCHITECTURE`, on `cfg.MODEL.DEVICE`, with random weights
    (load a checkpoint with `DetectionCheckpointer`).

    Every name in `cfg.MODEL.LOSS_WEIGHTS` must be looked up by some part of the model while it is
    built (each head reads the weights of its losses in `from_config`); a name none reads, such as
    a typo, raises a `ConfigKeyError` (a KeyError) listing the names that were read.

    `TEST.AMP.ENABLED` and `MODEL.COMPILE` are applied here (see `detlib.modeling.acceleration`).
    """
    cfg = cfg.clone()
    cfg.defrost()
    loss_weights = cfg.MODEL.LOSS_WEIGHTS = _LookupRecordingNode(cfg.MODEL.LOSS_WEIGHTS)
    cfg.freeze()
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    unread = sorted(set(loss_weights) - loss_weights.looked_up)
    if unread:
        raise ConfigKeyError(
            f"MODEL.LOSS_WEIGHTS has weights for {unread}, which no part of this model applies; the loss "
            f"terms it weighs are {sorted(loss_weights.looked_up)}"
        )
    model.to(torch.device(cfg.MODEL.DEVICE))
    return accelerate_from_config(model, cfg)

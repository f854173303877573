"""The registry of meta-architectures (whole models) and `build_model`."""
import torch
from torch import nn

from detlib.utils.registry import Registry

__all__ = ["META_ARCH_REGISTRY", "build_model"]

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Whole models, built from `cfg`. Called on a list of input dicts (Detectron2's format), they return
a loss dict in training and a list of per-image result dicts in inference.
"""


def build_model(cfg) -> nn.Module:
    """
    The model named by `cfg.MODEL.META_ARCHITECTURE`, on `cfg.MODEL.DEVICE`, with random weights
    (load a checkpoint with `DetectionCheckpointer`).
    """
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model

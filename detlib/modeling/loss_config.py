"""
Building a head's losses from its config node: the one place config keys become `BoxLoss` /
`ClassificationLoss` objects (the losses themselves and their registries are in `detlib.layers.losses`).
"""

import inspect
from typing import Sequence, Union

from detlib.layers.losses import (
    BOX_LOSS_REGISTRY,
    CLS_LOSS_REGISTRY,
    BoxLoss,
    ClassificationLoss,
    build_box_loss,
    build_classification_loss,
)

__all__ = ["box_loss_from_config", "cls_loss_from_config", "resolve_box_reg_loss"]

# Detectron2's own keys for loss parameters, by the parameter they set; a head's node has those it uses.
_CLS_PARAM_KEYS = {"alpha": "FOCAL_LOSS_ALPHA", "gamma": "FOCAL_LOSS_GAMMA"}


def _parameters(registry, name: str) -> Sequence[str]:
    if not isinstance(name, str) or name not in registry:
        return ()  # the build_* function reports the unknown name with the choices
    return list(inspect.signature(registry.get(name)).parameters)


def box_loss_from_config(node, path: str, beta_key: str = "SMOOTH_L1_BETA") -> BoxLoss:
    """
    The box loss of a head's config node (`path`, e.g. "MODEL.RPN"): `BBOX_REG_LOSS_TYPE` built with
    `BBOX_REG_LOSS_PARAMS`. Detectron2's `SMOOTH_L1_BETA` (`beta_key`: RetinaNet names it
    `SMOOTH_L1_LOSS_BETA`) is the one place a loss's `beta` is set; `BBOX_REG_LOSS_PARAMS` may not set it too.
    """
    params = dict(node.BBOX_REG_LOSS_PARAMS)
    if "beta" in params:
        raise ValueError(f"{path}.BBOX_REG_LOSS_PARAMS sets beta; set it with {path}.{beta_key} instead")
    name = node.BBOX_REG_LOSS_TYPE
    if "beta" in _parameters(BOX_LOSS_REGISTRY, name):
        params["beta"] = node[beta_key]
    return build_box_loss(name, **params)


def cls_loss_from_config(node, path: str) -> ClassificationLoss:
    """
    The classification loss of a head's config node: `CLS_LOSS_TYPE` built with `CLS_LOSS_PARAMS`. Where
    the node has Detectron2's `FOCAL_LOSS_ALPHA` / `FOCAL_LOSS_GAMMA` (RetinaNet, FCOS), those are the one
    place a loss's `alpha` / `gamma` are set, passed to the losses that take them; `CLS_LOSS_PARAMS` may
    not set them too.
    """
    params = dict(node.CLS_LOSS_PARAMS)
    accepted = _parameters(CLS_LOSS_REGISTRY, node.CLS_LOSS_TYPE)
    for param, key in _CLS_PARAM_KEYS.items():
        if key not in node:
            continue
        if param in params:
            raise ValueError(f"{path}.CLS_LOSS_PARAMS sets {param}; set it with {path}.{key} instead")
        if param in accepted:
            params[param] = node[key]
    return build_classification_loss(node.CLS_LOSS_TYPE, **params)


def resolve_box_reg_loss(box_reg_loss_type: Union[str, BoxLoss], smooth_l1_beta: float = 0.0) -> BoxLoss:
    """
    A head's box loss from Detectron2's keywords: `box_reg_loss_type` names a registered loss (built
    with `beta=smooth_l1_beta` when it takes a beta) or is an already built `BoxLoss`. A non-zero
    `smooth_l1_beta` that the loss cannot use is an error rather than ignored.
    """
    if isinstance(box_reg_loss_type, BoxLoss):
        if smooth_l1_beta:
            raise ValueError("smooth_l1_beta applies to a loss given by name; set it on the BoxLoss instead")
        return box_reg_loss_type
    if "beta" in _parameters(BOX_LOSS_REGISTRY, box_reg_loss_type):
        return build_box_loss(box_reg_loss_type, beta=smooth_l1_beta)
    if smooth_l1_beta:
        raise ValueError(f"smooth_l1_beta={smooth_l1_beta} is set but box loss {box_reg_loss_type!r} has no beta")
    return build_box_loss(box_reg_loss_type)

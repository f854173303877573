"""Caffe2 (Detectron) ResNet parameter names, as in the ImageNet backbones of Detectron2's configs
(`detectron2://ImageNetPretrained/MSRA/R-50.pkl`), and their detlib ResNet names.

Caffe2 names: stem `conv1_w` and `res_conv1_bn_{s,b}`; blocks `res{stage}_{block}_branch{1,2a,2b,2c}`
with `_w` (conv weight), `_b` (conv bias) or a norm's `_bn_{s,b,rm,riv}` / `_gn_{s,b}` (scale, bias,
running mean, running variance). Branch 1 is the projection shortcut; 2a-2c are the three convs. The
names are relative to the ResNet; the checkpointer puts them under the ResNet's place in the model.
The ImageNet classifier (`fc1000_*`) and the solver's `*_momentum` blobs are dropped.
"""

import logging
import re
from typing import Any, Dict, Mapping

__all__ = ["is_caffe2_state_dict", "convert_caffe2_names"]

logger = logging.getLogger(__name__)

_NORM_FIELDS = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_CONV_FIELDS = {"w": "weight", "b": "bias"}
_BRANCHES = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}

_STEM_CONV = re.compile(r"conv1_(w|b)")
_STEM_NORM = re.compile(r"res_conv1_(?:bn|gn)_(s|b|rm|riv)")
_BLOCK_CONV = re.compile(r"res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|b)")
_BLOCK_NORM = re.compile(r"res(\d)_(\d+)_branch(1|2a|2b|2c)_(?:bn|gn)_(s|b|rm|riv)")
_DROPPED = re.compile(r"fc1000_(w|b)|.*_momentum")


def is_caffe2_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether `state_dict` holds a Caffe2-named ResNet (a stem conv and residual blocks)."""
    return "conv1_w" in state_dict and any(_BLOCK_CONV.fullmatch(k) for k in state_dict)


def _detlib_name(name: str) -> str:
    """The ResNet-relative detlib name of a Caffe2 name; other names are returned unchanged (the
    checkpointer then reports them as unexpected)."""
    if m := _STEM_CONV.fullmatch(name):
        return f"stem.conv1.{_CONV_FIELDS[m[1]]}"
    if m := _STEM_NORM.fullmatch(name):
        return f"stem.conv1.norm.{_NORM_FIELDS[m[1]]}"
    if m := _BLOCK_CONV.fullmatch(name):
        return f"res{m[1]}.{m[2]}.{_BRANCHES[m[3]]}.{_CONV_FIELDS[m[4]]}"
    if m := _BLOCK_NORM.fullmatch(name):
        return f"res{m[1]}.{m[2]}.{_BRANCHES[m[3]]}.norm.{_NORM_FIELDS[m[4]]}"
    return name


def convert_caffe2_names(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename a Caffe2 ResNet state dict to ResNet-relative detlib names."""
    dropped = {k for k in state_dict if _DROPPED.fullmatch(k)}
    if dropped:
        logger.info("Dropping Caffe2 entries a detection backbone does not use: %s", ", ".join(sorted(dropped)))
    converted: Dict[str, Any] = {}
    for name, value in state_dict.items():
        if name in dropped:
            continue
        new = _detlib_name(name)
        if new in converted:
            raise ValueError(f"Caffe2 weights map two names to '{new}' (one of them '{name}')")
        converted[new] = value
    return converted

"""Configuration: the YAML config tree, its defaults, the `@configurable` decorator, and Python (lazy) configs."""

from .config import CfgNode, ConfigKeyError, get_cfg
from .configurable import configurable
from .instantiate import TargetNotAllowedError, instantiate
from .lazy import LazyCall, LazyConfig

__all__ = [
    "CfgNode",
    "ConfigKeyError",
    "get_cfg",
    "configurable",
    "instantiate",
    "LazyCall",
    "LazyConfig",
    "TargetNotAllowedError",
]

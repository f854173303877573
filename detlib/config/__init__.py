"""Configuration: the YAML config tree, its defaults, and the `@configurable` decorator."""

from .config import CfgNode, ConfigKeyError, get_cfg
from .configurable import configurable

__all__ = ["CfgNode", "ConfigKeyError", "get_cfg", "configurable"]

"""The registry type every replaceable part of detlib is found through."""
from fvcore.common.registry import Registry

__all__ = ["Registry"]

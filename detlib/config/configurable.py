"""`@configurable`: build a module either from a config tree or from plain keyword arguments."""

import functools
import inspect
from typing import Any, Callable, Dict, Optional

from yacs.config import CfgNode as _YacsCfgNode

__all__ = ["configurable"]


def configurable(init_func: Optional[Callable] = None, *, from_config: Optional[Callable] = None) -> Callable:
    """
    Let a class or a function be called with a config as its first argument.

    On a class, decorate `__init__` and give the class a `from_config(cls, cfg, ...)` classmethod that
    turns the config (plus any extra arguments) into the keyword arguments of `__init__`::

        class Head(nn.Module):
            @configurable
            def __init__(self, *, in_channels: int, num_classes: int): ...

            @classmethod
            def from_config(cls, cfg, input_shape):
                return {"in_channels": input_shape.channels, "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}

        Head(cfg, input_shape)                    # from_config, then __init__(**its result)
        Head(cfg, input_shape, num_classes=5)     # keyword arguments override from_config's result
        Head(in_channels=256, num_classes=5)      # no config: __init__ directly

    On a function, pass the translating function explicitly::

        @configurable(from_config=lambda cfg, k: {"a": cfg.A, "k": k})
        def build(a, k): ...

    A call counts as "with a config" when its first positional argument, or its `cfg` keyword, is a
    config node.
    """
    if init_func is not None:
        if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__"):
            raise TypeError(
                "@configurable without arguments decorates a class's __init__; "
                "for a function use @configurable(from_config=...)"
            )
        return _wrap_init(init_func)
    if from_config is None:
        raise TypeError("@configurable(...) on a function needs from_config=<function taking cfg first>")
    if not inspect.isfunction(from_config):
        raise TypeError(f"from_config must be a function, got {type(from_config).__name__}")

    def decorator(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapped(*args, **kwargs):
            if _called_with_cfg(*args, **kwargs):
                return func(**_args_from_config(from_config, *args, **kwargs))
            return func(*args, **kwargs)

        wrapped.from_config = from_config
        return wrapped

    return decorator


def _wrap_init(init_func: Callable) -> Callable:
    @functools.wraps(init_func)
    def wrapped(self, *args, **kwargs):
        from_config_func = getattr(type(self), "from_config", None)
        if from_config_func is None:
            raise AttributeError(f"{type(self).__name__} uses @configurable but has no from_config classmethod")
        if not inspect.ismethod(from_config_func):
            raise TypeError(f"{type(self).__name__}.from_config must be a classmethod")
        if _called_with_cfg(*args, **kwargs):
            init_func(self, **_args_from_config(from_config_func, *args, **kwargs))
        else:
            init_func(self, *args, **kwargs)

    return wrapped


def _called_with_cfg(*args, **kwargs) -> bool:
    if args and isinstance(args[0], _YacsCfgNode):
        return True
    return isinstance(kwargs.get("cfg"), _YacsCfgNode)


def _args_from_config(from_config_func: Callable, *args, **kwargs) -> Dict[str, Any]:
    """
    Call `from_config_func` with the arguments it accepts; keyword arguments it does not accept are
    passed through to the decorated callable, overriding what `from_config_func` returned.
    """
    params = inspect.signature(from_config_func).parameters
    first = next(iter(params), None)
    if first != "cfg":
        name = getattr(from_config_func, "__qualname__", repr(from_config_func))
        raise TypeError(f"{name} must take 'cfg' as its first argument, not {first!r}")
    takes_any = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
    if takes_any:
        return dict(from_config_func(*args, **kwargs))
    passed_through = {k: kwargs.pop(k) for k in list(kwargs) if k not in params}
    explicit = dict(from_config_func(*args, **kwargs))
    explicit.update(passed_through)
    return explicit

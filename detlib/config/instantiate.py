"""`instantiate`: build the objects a lazy config describes, and the rules for naming callables by string.

A lazy config node is a mapping with a `_target_` (a callable, or its dotted name) and the keyword
arguments to call it with. A callable given as an object came from a Python config the user ran;
a callable given as a *string* came from data (a saved YAML config, a command-line override) and is
only imported when it belongs to a package on the allowlist below, unless the caller opts in.
"""

from __future__ import annotations

import builtins
import collections.abc as abc
import dataclasses
import importlib
import logging
from typing import Any, Mapping

import omegaconf
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "instantiate",
    "locate",
    "object_name",
    "check_target_allowed",
    "check_call_allowed",
    "is_sequence_node",
    "TargetNotAllowedError",
    "ALLOWED_PACKAGES",
]

logger = logging.getLogger(__name__)

# Packages whose callables a string `_target_` may name without an opt-in.
ALLOWED_PACKAGES = ("detlib", "torch", "torchvision", "fvcore", "timm")
# Plain containers a config may build, and `functools.partial` (its callable is checked separately).
_ALLOWED_NAMES = {f"builtins.{n}" for n in ("list", "dict", "tuple", "set", "int", "float", "str", "bool")} | {
    "functools.partial"
}
# Inside the allowed packages: entry points that load, compile or run code (torch.hub runs a
# repository's hubconf, torch.load unpickles, load_library loads a shared object, detlib.config's
# loaders run Python configs or opt in for others), refused like any outside name. Private names
# (a component starting with "_") are refused too: configs never need them.
_DENIED_PREFIXES = (
    "torch.hub",
    "torch.load",
    "torch.jit.load",
    "torch.export.load",
    "torch.package",
    "torch.serialization",
    "torch.utils.cpp_extension",
    "torch.ops.load_library",
    "torch.classes.load_library",
    "torch.distributed.rpc",
    "detlib.config",
    "detlib.checkpoint.safe_readers",
    "detlib.checkpoint.detection_checkpoint.load_checkpoint_file",
)
# Keywords by which a call opts in to running code; a data file cannot opt itself in.
_OPT_IN_KEYWORDS = ("allow_unsafe", "allow_any_target")


# omegaconf >= 2.4 keeps tuples as TupleConfig; older versions turn them into ListConfig.
_TUPLE_CONFIG = getattr(omegaconf, "TupleConfig", ())


def is_sequence_node(value: Any) -> bool:
    """Whether `value` is an omegaconf list or tuple node."""
    return isinstance(value, omegaconf.Container) and not isinstance(value, DictConfig)


class TargetNotAllowedError(ValueError):
    """A string names a callable outside the allowlist of a data-only config."""


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_target_allowed(name: str, where: str = "") -> None:
    """Raise `TargetNotAllowedError` unless the dotted `name` may be imported from data without an opt-in."""
    allowed = name in _ALLOWED_NAMES or any(_within(name, p) for p in ALLOWED_PACKAGES)
    private = any(part.startswith("_") for part in name.split("."))
    if allowed and not private and not any(_within(name, p) for p in _DENIED_PREFIXES):
        return
    location = f" at '{where}'" if where else ""
    raise TargetNotAllowedError(
        f"Refusing to import '{name}'{location}: a config loaded as data may only name callables from "
        f"{', '.join(ALLOWED_PACKAGES)} (and builtin containers). If you trust this file, load it with "
        "LazyConfig.load(path, allow_any_target=True) (tools: --allow-any-target)."
    )


def check_call_allowed(call: Mapping[str, Any], where: str = "") -> None:
    """Raise `TargetNotAllowedError` if a call read from data sets an opt-in keyword (`allow_unsafe`, ...)."""
    for key in _OPT_IN_KEYWORDS:
        if key in call and call[key]:
            raise TargetNotAllowedError(
                f"Refusing the call at '{where or '<root>'}': it sets {key}, which a config loaded as data "
                "may not do; load the file with allow_any_target=True if you trust it."
            )


def locate(name: str) -> Any:
    """The object a dotted name refers to ("pkg.module.Class.method"): the longest importable
    module prefix, then attributes. Raises ImportError naming `name` if it does not resolve."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only a missing prefix of `name` means "try a shorter one"; a missing dependency is an error.
            if e.name is None or not _within(module_name, e.name):
                raise
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    if "." not in name and hasattr(builtins, name):
        return getattr(builtins, name)
    raise ImportError(f"Cannot locate '{name}': no importable module and attribute path matches it")


def object_name(obj: Any) -> str:
    """The dotted name `locate` resolves back to `obj` (a class, function or method)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module is None or qualname is None or "<" in qualname:
        raise ValueError(f"{obj!r} has no importable name (a lambda or a local definition?)")
    # Prefer the shortest public module path that still resolves to the same object
    # (e.g. torch.optim.SGD, not torch.optim.sgd.SGD): names stay stable across refactors.
    parts = module.split(".")
    for i in range(1, len(parts)):
        candidate = ".".join(parts[:i]) + "." + qualname
        try:
            if locate(candidate) is obj:
                return candidate
        except (ImportError, AttributeError):
            continue
    return f"{module}.{qualname}"


def _resolve_target(call: Mapping[str, Any], allow_any_target: bool, where: str) -> Any:
    target = call["_target_"]
    if isinstance(target, str):
        if not allow_any_target:
            check_target_allowed(target, where)
            check_call_allowed(call, where)
        target = locate(target)
    if not callable(target):
        raise TypeError(f"_target_ at '{where}' is not callable: {target!r}")
    return target


def instantiate(cfg: Any, *, allow_any_target: bool = False, _where: str = "") -> Any:
    """
    Build the objects `cfg` describes, depth first: each mapping with a `_target_` becomes
    `target(**instantiated_arguments)`; other mappings become dicts and lists become lists of their
    instantiated items; anything else is returned as it is.

    A `_target_` that is a string is imported only from the allowed packages (`ALLOWED_PACKAGES`)
    unless `allow_any_target` (the caller trusts where the string came from). A mapping may carry
    `_args_`, a list of positional arguments (saved configs use it for `functools.partial`).
    """
    if isinstance(cfg, (list, tuple)) or is_sequence_node(cfg):
        items = [instantiate(x, allow_any_target=allow_any_target, _where=f"{_where}[{i}]") for i, x in enumerate(cfg)]
        return tuple(items) if isinstance(cfg, (tuple, _TUPLE_CONFIG)) else items
    if isinstance(cfg, DictConfig) and dataclasses.is_dataclass(cfg._metadata.object_type):
        return OmegaConf.to_object(cfg)  # a dataclass instance (e.g. ShapeSpec) stored in the config
    if not isinstance(cfg, abc.Mapping):
        return cfg
    if "_object_" in cfg:
        name = cfg["_object_"]
        if not allow_any_target:
            check_target_allowed(name, _where)
        return locate(name)
    values = {
        k: instantiate(v, allow_any_target=allow_any_target, _where=f"{_where}.{k}" if _where else str(k))
        for k, v in cfg.items()
        if k not in ("_target_", "_args_")
    }
    if "_target_" not in cfg:
        return values
    target = _resolve_target(cfg, allow_any_target, _where or "<root>")
    args = instantiate(cfg.get("_args_", []), allow_any_target=allow_any_target, _where=f"{_where}._args_")
    try:
        return target(*args, **values)
    except TypeError as e:
        name = getattr(target, "__qualname__", repr(target))
        raise TypeError(f"While instantiating '{_where or '<root>'}' ({name}): {e}") from e

"""The YAML configuration tree: `_BASE_` inheritance, CLI overrides, and helpful errors for typos."""

import difflib
import os
from typing import Any, Dict, Iterator, List, Optional

from fvcore.common.config import BASE_KEY
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from yacs.config import _merge_a_into_b

from .yaml_loader import load_yaml

__all__ = ["CfgNode", "get_cfg", "ConfigKeyError"]

# The only config schema detlib reads. Detectron2 bumped its schema to 2 in 2019; older files used
# different key names and are rejected rather than silently mis-read.
_SUPPORTED_VERSION = 2


class ConfigKeyError(KeyError):
    """A key in a config file or override list that the config tree does not have."""

    def __str__(self) -> str:
        # KeyError would show the message wrapped in quotes; the plain message reads better.
        return str(self.args[0])


class CfgNode(_FvcoreCfgNode):
    """
    A node of the YAML configuration tree (fvcore's `CfgNode`, itself a `yacs` node).

    On top of fvcore it adds:

    * unknown keys fail with an error that names the full dotted key, the file it came from and the
      closest valid key;
    * integers are accepted where the default is a float (``BASE_LR: 1``);
    * nodes created with ``new_allowed=True`` (such as ``MODEL.LOSS_WEIGHTS``) accept new keys from
      files and from `merge_from_list`;
    * a file whose ``VERSION`` is older than 2 (Detectron2's version-1 schema) is rejected;
    * files are parsed without running code (see `yaml_loader`) unless ``allow_unsafe=True``.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Any:
        """Parse `filename` safely and merge it over its `_BASE_` file(s) (a path or a list of
        paths, relative to `filename` unless absolute)."""
        with cls._open_cfg(filename) as f:
            loaded = load_yaml(f, filename, allow_unsafe=allow_unsafe)
        if not isinstance(loaded, dict) or BASE_KEY not in loaded:
            return loaded
        bases = loaded.pop(BASE_KEY)
        merged: Dict[str, Any] = {}
        for base in bases if isinstance(bases, list) else [bases]:
            base = os.path.expanduser(base)
            if not os.path.isabs(base):
                base = os.path.join(os.path.dirname(filename), base)
            base_cfg = cls.load_yaml_with_base(base, allow_unsafe=allow_unsafe)
            if not isinstance(base_cfg, dict):
                raise ValueError(f"Base config {base} of {filename} must hold a YAML mapping")
            _merge_dicts(base_cfg, merged, base)
        _merge_dicts(loaded, merged, filename)
        return merged

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file, following its `_BASE_` chain (paths relative to the including file)."""
        loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        if loaded is None:  # an empty file
            return
        if not isinstance(loaded, dict):
            raise ValueError(f"Config file {cfg_filename} must hold a YAML mapping, got {type(loaded).__name__}")
        _check_version(loaded.get("VERSION", _SUPPORTED_VERSION), cfg_filename)
        self._merge_checked(type(self)(loaded), source=cfg_filename)

    def merge_from_other_cfg(self, cfg_other: "CfgNode") -> None:
        """Merge another config tree into this one."""
        if BASE_KEY in cfg_other:
            raise ValueError(f"The reserved key '{BASE_KEY}' can only be used in files")
        # A copy, because the checks widen ints to floats in the tree they merge from.
        self._merge_checked(cfg_other.clone(), source=None)

    def merge_from_list(self, cfg_list: List[Any]) -> None:
        """
        Merge ``[KEY1, VALUE1, KEY2, VALUE2, ...]`` pairs, as given on a command line.

        Values are parsed as Python literals when possible (``"0.5"`` -> 0.5, ``"(1, 2)"`` -> tuple)
        and must have the type of the value they replace.
        """
        if len(cfg_list) % 2 != 0:
            raise ValueError(f"Override list has odd length {len(cfg_list)}; it must hold KEY VALUE pairs: {cfg_list}")
        for full_key, raw_value in zip(cfg_list[0::2], cfg_list[1::2]):
            if full_key == BASE_KEY:
                raise ValueError(f"The reserved key '{BASE_KEY}' can only be used in files")
            *parents, leaf = full_key.split(".")
            node = self
            for depth, name in enumerate(parents):
                if name not in node:
                    raise self._unknown_key_error(full_key, "the override list")
                node = node[name]
                if not isinstance(node, _FvcoreCfgNode):
                    raise ConfigKeyError(
                        f"Config key '{'.'.join(parents[: depth + 1])}' is a value, not a group; "
                        f"cannot set '{full_key}'"
                    )
            value = self._decode_cfg_value(raw_value)
            if leaf in node:
                self._merge_checked(type(self)({leaf: value}), source="the override list", into=node, prefix=parents)
            elif node.is_new_allowed():
                node[leaf] = value
            else:
                raise self._unknown_key_error(full_key, "the override list")

    def _merge_checked(
        self,
        other: _FvcoreCfgNode,
        source: Optional[str],
        into: Optional[_FvcoreCfgNode] = None,
        prefix: Optional[List[str]] = None,
    ) -> None:
        """Check every key of `other` (with suggestions for typos), widen ints to floats, then merge."""
        into = self if into is None else into
        self._check_keys(other, into, prefix or [], source)
        # yacs does the actual merge (type checks, list <-> tuple casts); it needs the root for its
        # deprecated/renamed-key bookkeeping.
        _merge_a_into_b(other, into, self, list(prefix or []))

    def _check_keys(self, other: _FvcoreCfgNode, target: _FvcoreCfgNode, prefix: List[str], source) -> None:
        for key, value in other.items():
            full_key = ".".join(prefix + [key])
            if key not in target:
                if target.is_new_allowed() or self.key_is_deprecated(full_key):
                    continue
                if self.key_is_renamed(full_key):
                    self.raise_key_rename_error(full_key)
                # Name a whole key, not a group, so the suggestion can be a whole key too.
                while isinstance(value, dict) and value:
                    key, value = next(iter(value.items()))
                    full_key += "." + key
                raise self._unknown_key_error(full_key, source)
            default = target[key]
            if isinstance(value, _FvcoreCfgNode) and isinstance(default, _FvcoreCfgNode):
                self._check_keys(value, default, prefix + [key], source)
            elif type(default) is float and type(value) is int:
                other[key] = float(value)

    def _unknown_key_error(self, full_key: str, source: Optional[str]) -> ConfigKeyError:
        where = f" in {source}" if source else ""
        message = f"Unknown config key '{full_key}'{where}"
        close = difflib.get_close_matches(full_key, list(_iter_full_keys(self)), n=1, cutoff=0.6)
        if close:
            message += f"; did you mean '{close[0]}'?"
        return ConfigKeyError(message)


def _merge_dicts(source: Dict[str, Any], target: Dict[str, Any], source_file: str) -> None:
    """Merge `source` into `target` recursively, `source` winning."""
    for key, value in source.items():
        if isinstance(value, dict) and key in target:
            if not isinstance(target[key], dict):
                raise ValueError(f"{source_file}: key '{key}' is a group here but a value in its base config")
            _merge_dicts(value, target[key], source_file)
        else:
            target[key] = value


def _check_version(version: Any, source: str) -> None:
    if version != _SUPPORTED_VERSION:
        raise ValueError(
            f"Config {source} has VERSION {version}; detlib reads only Detectron2's version-{_SUPPORTED_VERSION} "
            f"config schema (Detectron2's version-1 configs are not supported; rename their keys by hand)"
        )


def _iter_full_keys(node: Dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted key of the tree, groups and leaves alike."""
    for key, value in node.items():
        full_key = prefix + key
        yield full_key
        if isinstance(value, dict):
            yield from _iter_full_keys(value, full_key + ".")


def get_cfg() -> CfgNode:
    """A fresh copy of detlib's default configuration (Detectron2's keys and defaults)."""
    from .defaults import _C  # defaults.py builds on CfgNode above, so it is imported on first use

    return _C.clone()

"""Python ("lazy") configs, compatible with Detectron2's: `LazyCall`, `LazyConfig.load/save/apply_overrides`.

A `.py` config is a program the user runs on purpose, like a script: `LazyConfig.load` executes it,
with relative imports between config files (`from ..common.optim import SGD`) resolved to the
files beside it. What it leaves in its namespace (every dict / DictConfig / ListConfig) is the
config, an omegaconf tree whose nodes with a `_target_` describe calls that `instantiate` makes.

A saved `.yaml` is data: it is parsed with a safe YAML loader and the callables it names by
string are checked against an allowlist (`detlib.config.instantiate.ALLOWED_PACKAGES`) before
anything is imported; `allow_any_target=True` is the explicit, logged opt-in for other names.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import difflib
import functools
import inspect
import logging
import threading
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, ListConfig

from detlib.utils.atomic_write import atomic_write

from .instantiate import check_call_allowed, check_target_allowed, is_sequence_node, locate, object_name

__all__ = ["LazyCall", "L", "LazyConfig"]

logger = logging.getLogger(__name__)

_OBJECT_FLAGS = {"allow_objects": True}


class LazyCall:
    """
    Record a call instead of making it: ``LazyCall(Foo)(a=1)`` is a DictConfig ``{_target_: Foo, a: 1}``
    that `instantiate` turns into ``Foo(a=1)``, after the config has been edited as data.
    """

    def __init__(self, target: Union[Callable, str]):
        if not (callable(target) or isinstance(target, str)):
            raise TypeError(f"LazyCall needs a callable or its dotted name, got {target!r}")
        self._target = target

    def __call__(self, **kwargs: Any) -> DictConfig:
        target = self._target
        # omegaconf turns dataclass types into structured configs; keep the type by its name instead.
        if dataclasses.is_dataclass(target):
            target = object_name(target)
        return DictConfig({**kwargs, "_target_": target}, flags=_OBJECT_FLAGS)


L = LazyCall


def _as_config(value: Any) -> Any:
    """Plain dicts and lists a config file defines become omegaconf nodes (attribute access, interpolation)."""
    if isinstance(value, dict):
        return DictConfig(value, flags=_OBJECT_FLAGS)
    if isinstance(value, list):
        return ListConfig(value, flags=_OBJECT_FLAGS)
    return value


# ---------------------------------------------------------------------------------------------
# Running .py configs


_CONFIG_FILE_KEY = "__detlib_config_file__"  # set in the namespace of each config file being run
_import_lock = threading.RLock()


def _run_config_file(path: Path) -> Dict[str, Any]:
    """Execute one config file in a fresh namespace and return that namespace."""
    try:
        source = path.read_text()
    except OSError as e:
        raise FileNotFoundError(f"Cannot read config file {path}: {e}") from e
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise SyntaxError(f"Config file {path} is not valid Python: {e}") from e
    namespace: Dict[str, Any] = {
        "__file__": str(path),
        "__name__": f"detlib_config.{path.stem}",
        "__builtins__": builtins,
        _CONFIG_FILE_KEY: str(path),
    }
    with _config_relative_imports():
        exec(code, namespace)
    return namespace


def _config_module(path: Path, name: str) -> types.ModuleType:
    """A config file, run, as a module object for `from .x import y` in another config file."""
    module = types.ModuleType(name)
    module.__file__ = str(path)
    for key, value in _run_config_file(path).items():
        if not key.startswith("__"):
            setattr(module, key, _as_config(value))
    return module


def _relative_import(importer: str, name: str, fromlist: Sequence[str], level: int) -> types.ModuleType:
    """Resolve `from <level dots><name> import <fromlist>` written in the config file `importer`:
    each dot above the first goes one directory up; `name` is a file (`a.b` -> a/b.py) or a directory,
    in which case each name of `fromlist` may be a config file in it."""
    base = Path(importer).parent
    for _ in range(level - 1):
        base = base.parent
    target = base.joinpath(*name.split(".")) if name else base
    if target.with_suffix(".py").is_file():
        return _config_module(target.with_suffix(".py"), name)
    if target.is_dir():
        package = types.ModuleType(name or target.name)
        for item in fromlist or ():
            if (target / f"{item}.py").is_file():
                setattr(package, item, _config_module(target / f"{item}.py", item))
        return package
    raise ImportError(
        f"Config file {importer} imports '{'.' * level}{name}', but neither {target.with_suffix('.py')} "
        f"nor the directory {target} exists"
    )


@contextmanager
def _config_relative_imports() -> Iterator[None]:
    """While config files run, relative imports made *by a config file* load config files; every other
    import goes to Python's import machinery unchanged."""
    with _import_lock:
        original = builtins.__import__
        if getattr(original, "_detlib_config_import", False):  # already installed by an enclosing load
            yield
            return

        def config_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level > 0 and globals is not None and _CONFIG_FILE_KEY in globals:
                return _relative_import(globals[_CONFIG_FILE_KEY], name, fromlist, level)
            return original(name, globals, locals, fromlist, level)

        config_import._detlib_config_import = True
        builtins.__import__ = config_import
        try:
            yield
        finally:
            builtins.__import__ = original


# ---------------------------------------------------------------------------------------------
# Saving to YAML


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _raw(node: Any) -> Any:
    """A config node's child as stored: a container node itself, else its unresolved value."""
    return node if isinstance(node, DictConfig) or is_sequence_node(node) else node._value()


class _Encoder:
    """Turns a config tree into YAML-safe data. Callables become `{_object_: name}` (or their dotted
    name under `_target_`), dataclass nodes a `_target_` call, partials a `functools.partial` call;
    what has no importable name (a lambda, a module object) is written as a marked string and reported."""

    def __init__(self) -> None:
        self.unserializable: List[str] = []

    def callable_name(self, obj: Any, where: str) -> Optional[str]:
        try:
            return object_name(obj)
        except ValueError:
            self.unserializable.append(where)
            return None

    def encode(self, value: Any, where: str) -> Any:
        if isinstance(value, DictConfig):
            # Raw children: interpolations stay "${..}" strings, nested nodes keep their metadata.
            data = {key: _raw(value._get_node(key)) for key in value.keys()}
            encoded = self.encode(data, where)
            if dataclasses.is_dataclass(value._metadata.object_type):
                encoded = {"_target_": object_name(value._metadata.object_type), **encoded}
            return encoded
        if is_sequence_node(value):
            return self.encode([_raw(value._get_node(i)) for i in range(len(value))], where)
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                path = f"{where}.{key}" if where else str(key)
                if key == "_target_" and callable(item):
                    out[key] = self.callable_name(item, path) or f"<unserializable: {item!r}>"
                else:
                    out[key] = self.encode(item, path)
            return out
        if isinstance(value, (list, tuple)):
            return [self.encode(x, f"{where}[{i}]") for i, x in enumerate(value)]
        if _is_plain(value):
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return {"_target_": object_name(type(value)), **self.encode(fields, where)}
        if isinstance(value, functools.partial):
            call = {"_target_": "functools.partial", "_args_": [self.encode(value.func, where), *value.args]}
            return self.encode({**call, **value.keywords}, where) if value.keywords else self.encode(call, where)
        if callable(value):
            name = self.callable_name(value, where)
            return {"_object_": name} if name else f"<unserializable: {value!r}>"
        self.unserializable.append(where)
        return f"<unserializable: {type(value).__name__}>"


# ---------------------------------------------------------------------------------------------
# Loading YAML


class _LazyYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus the two Python tags Detectron2's `LazyConfig.save` writes, both data:
    `!!python/tuple`, and `!!python/object:...ShapeSpec` (a dataclass value), read as the call that
    rebuilds it. Any other Python tag stays an error."""


_SHAPE_SPEC_NAMES = ("detectron2.layers.shape_spec.ShapeSpec", "detlib.layers.shape_spec.ShapeSpec")


def _construct_shape_spec(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Dict[str, Any]:
    if suffix not in _SHAPE_SPEC_NAMES:
        raise yaml.constructor.ConstructorError(
            None, None, f"refusing the Python tag !!python/object:{suffix}: a config is data", node.start_mark
        )
    return {"_target_": "detlib.layers.ShapeSpec", **loader.construct_mapping(node, deep=True)}


_LazyYamlLoader.add_constructor("tag:yaml.org,2002:python/tuple", yaml.SafeLoader.construct_sequence)
_LazyYamlLoader.add_multi_constructor("tag:yaml.org,2002:python/object:", _construct_shape_spec)

_DETECTRON2 = "detectron2."


def _detlib_name(name: Any) -> Any:
    """A callable's name in a config Detectron2 saved, as detlib names it (same module paths)."""
    if isinstance(name, str) and name.startswith(_DETECTRON2):
        return "detlib." + name[len(_DETECTRON2) :]
    return name


def _check_yaml_targets(node: Any, where: str, resolve: bool) -> Any:
    """Check (or, when the user opted in, import) every callable a loaded YAML tree names by string.
    Names under `detectron2.` (a config Detectron2 saved) are read as the same names under `detlib.`."""
    if isinstance(node, dict):
        if "_object_" in node:
            name = _detlib_name(node["_object_"])
            if resolve:
                return locate(name)
            check_target_allowed(str(name), where)
            return {**node, "_object_": name}
        if "_target_" in node and not resolve:
            check_call_allowed(node, where)
        out = {}
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_" and isinstance(value, str):
                value = _detlib_name(value)
                if resolve:
                    value = locate(value)
                else:
                    check_target_allowed(value, path)
            else:
                value = _check_yaml_targets(value, path, resolve)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_check_yaml_targets(x, f"{where}[{i}]", resolve) for i, x in enumerate(node)]
    return node


# ---------------------------------------------------------------------------------------------
# Overrides


def _parse_value(text: str) -> Any:
    """A command-line value: a Python literal (numbers, strings, lists, tuples, dicts, True/False/None),
    the YAML spellings null/true/false, or else the text itself as a string."""
    lowered = text.strip().lower()
    if lowered in ("null", "none", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _accepts_keyword(target: Any, key: str) -> bool:
    """Whether a node's `_target_` takes `key` as a keyword argument (so setting it is not a typo)."""
    if isinstance(target, str):
        try:
            target = locate(target)
        except ImportError:
            return False
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _child(node: Any, key: str, path: str) -> Any:
    if is_sequence_node(node):
        if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
            raise KeyError(f"Override '{path}': '{key}' is not an index of a list of length {len(node)}")
        return node[int(key)]
    if isinstance(node, DictConfig):
        if key not in node:
            suggestion = difflib.get_close_matches(key, [str(k) for k in node.keys()], n=1)
            hint = f"; did you mean '{suggestion[0]}'?" if suggestion else ""
            raise KeyError(f"Override '{path}': no key '{key}' here{hint}")
        return node[key]
    raise KeyError(f"Override '{path}': cannot descend into '{key}' of a {type(node).__name__}")


class LazyConfig:
    """Load, save and override Python configs (the omegaconf trees of `LazyCall` nodes)."""

    @staticmethod
    def load(
        filename: Union[str, Path], keys: Union[None, str, Tuple[str, ...]] = None, *, allow_any_target: bool = False
    ) -> Any:
        """
        Load a config: a `.py` file is executed (it is a program the user chose to run); a `.yaml` file
        (one that `save` wrote) is parsed as data, and may name callables only from the allowed
        packages unless `allow_any_target` (logged), which imports what it names right away.

        Returns the whole config as a DictConfig, or with `keys` only that entry (a tuple: those entries).
        """
        path = Path(filename)
        if path.suffix == ".py":
            namespace = _run_config_file(path.resolve())
            entries = {
                k: _as_config(v)
                for k, v in namespace.items()
                if not k.startswith("_") and isinstance(v, (dict, DictConfig, ListConfig))
            }
        elif path.suffix in (".yaml", ".yml"):
            try:
                text = path.read_text()
            except OSError as e:
                raise FileNotFoundError(f"Cannot read config file {path}: {e}") from e
            try:
                data = yaml.load(text, Loader=_LazyYamlLoader) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"Config file {path} is not a safe YAML config: {e}") from e
            if not isinstance(data, dict):
                raise ValueError(f"Config file {path} must hold a mapping at the top, not {type(data).__name__}")
            if allow_any_target:
                logger.warning(
                    "Loading %s with allow_any_target=True: the callables it names are imported and "
                    "may be called whatever package they come from. Do this only for files you trust.",
                    path,
                )
            entries = _check_yaml_targets(data, "", resolve=allow_any_target)
        else:
            raise ValueError(f"Unsupported config file {path}: expected a .py or .yaml file")
        cfg = DictConfig(entries, flags=_OBJECT_FLAGS)
        if keys is None:
            return cfg
        if isinstance(keys, str):
            return cfg[keys]
        return tuple(cfg[k] for k in keys)

    @staticmethod
    def load_rel(filename: str, keys: Union[None, str, Tuple[str, ...]] = None) -> Any:
        """`load`, with `filename` relative to the directory of the config file that calls this."""
        caller = inspect.currentframe().f_back.f_globals.get("__file__")
        if caller is None:
            raise ValueError("LazyConfig.load_rel must be called from a config file; use LazyConfig.load")
        return LazyConfig.load(Path(caller).parent / filename, keys)

    @staticmethod
    def save(cfg: Any, filename: Union[str, Path]) -> None:
        """
        Write `cfg` as YAML that `load` reads back: callables by their dotted names, interpolations
        (`${..x}`) unresolved. A value with no importable name (a lambda, a model object) cannot be
        written; it is saved as a marked string and named in a warning, so the file stays loadable.
        """
        encoder = _Encoder()
        data = encoder.encode(cfg, "")
        if encoder.unserializable:
            logger.warning(
                "Config saved to %s without these values, which have no importable name: %s",
                filename,
                ", ".join(encoder.unserializable),
            )
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
        with atomic_write(filename, "w", encoding="utf-8") as f:
            f.write(text)

    @staticmethod
    def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """
        Apply command-line overrides ``"a.b.c=value"`` (values parsed as Python literals, else strings).
        Every key on the path must exist, except that a node with a `_target_` may be given any
        keyword its callable accepts. List items are addressed by index (``augs.0.max_size=1000``).
        """
        for override in overrides:
            key, sep, text = override.partition("=")
            if not sep or not key:
                raise ValueError(f"Override '{override}' is not of the form key=value")
            parts = key.strip().split(".")
            node = cfg
            for part in parts[:-1]:
                node = _child(node, part, key)
            last = parts[-1]
            if isinstance(node, DictConfig) and last not in node:
                target = node.get("_target_") if "_target_" in node else None
                if target is None or not _accepts_keyword(target, last):
                    _child(node, last, key)  # raises, with the nearest existing key
            if is_sequence_node(node):
                _child(node, last, key)  # checks the index
                node[int(last)] = _parse_value(text)
            else:
                node[last] = _parse_value(text)
        return cfg

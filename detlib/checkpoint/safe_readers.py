"""Reading weight files without running code from them.

A pickle can name any importable callable and have it called while it is read; weight files never
need that. `.pkl` files are read with an unpickler that admits only NumPy arrays, dtypes and scalars
besides plain containers and numbers; `.pth`/`.pt` files with `torch.load(weights_only=True)`, which
additionally admits NumPy arrays; `.safetensors` files cannot hold code at all. A file that names
anything else is refused with `UnsafeCheckpointError`, unless the user opts in for a file they trust
(`allow_unsafe=True`, or the environment variable `DETLIB_ALLOW_UNSAFE_LOAD=1`).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Any, List

import numpy as np
import torch

__all__ = ["UnsafeCheckpointError", "read_pickle", "read_torch", "read_safetensors", "unsafe_allowed"]

logger = logging.getLogger(__name__)

ALLOW_UNSAFE_ENV = "DETLIB_ALLOW_UNSAFE_LOAD"

# (module, name) pairs a weights pickle may reference. NumPy moved its internals from numpy.core to
# numpy._core in 2.0; files name whichever wrote them. Python 2 pickles say __builtin__ for builtins.
_PICKLE_ALLOWED = (
    {
        (core, name)
        for core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {
        (numeric, "_frombuffer")
        for numeric in ("numpy.core.numeric", "numpy._core.numeric")  # pickle protocol 5
    }
    | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }
    | {
        (builtins, name)
        for builtins in ("builtins", "__builtin__")
        for name in ("set", "frozenset", "bytearray", "complex")
    }
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weights file that references code, refused because the user did not opt in."""


def unsafe_allowed(allow_unsafe: bool = False) -> bool:
    """Whether unrestricted loading was asked for, by argument or by `DETLIB_ALLOW_UNSAFE_LOAD`."""
    return allow_unsafe or os.environ.get(ALLOW_UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes")


def _refusal(path: str, refused: List[str]) -> UnsafeCheckpointError:
    names = ", ".join(f"'{name}'" for name in refused)
    return UnsafeCheckpointError(
        f"Refused to load {path}: it references {names}, which a weights file does not need and which "
        "could run code while the file is read. If you trust this file, load it with "
        f"DetectionCheckpointer(..., allow_unsafe=True) or set {ALLOW_UNSAFE_ENV}=1."
    )


def _warn_unsafe(path: str) -> None:
    logger.warning(
        "!!! Loading %s WITHOUT restrictions (allow_unsafe / %s): any code it holds runs now. "
        "Do this only for files you trust. !!!",
        path,
        ALLOW_UNSAFE_ENV,
    )


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # Detectron's zoo pickles were written by Python 2 tools
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise _refusal(self._path, [f"{module}.{name}"])
        return super().find_class(module, name)


def read_pickle(path: str, allow_unsafe: bool = False) -> Any:
    """Unpickle `path`, admitting only NumPy arrays, dtypes, scalars and plain containers."""
    with open(path, "rb") as f:
        if unsafe_allowed(allow_unsafe):
            _warn_unsafe(path)
            return pickle.load(f, encoding="latin1")
        return _WeightsUnpickler(f, path).load()


def _numpy_globals() -> List[Any]:
    """What `torch.load` must admit for NumPy arrays; files written under NumPy 1 name `numpy.core`."""
    dtype_classes = [getattr(np.dtypes, name) for name in np.dtypes.__all__ if name.endswith("DType")]
    multiarray = np._core.multiarray
    legacy = [(f, f"numpy.core.multiarray.{f.__name__}") for f in (multiarray._reconstruct, multiarray.scalar)]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes, *legacy]


def read_torch(path: str, allow_unsafe: bool = False) -> Any:
    """`torch.load` with `weights_only=True` (tensors, containers, numbers, strings, NumPy arrays)."""
    if unsafe_allowed(allow_unsafe):
        _warn_unsafe(path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Zip-format files can be listed; for legacy-format ones, torch's message names the global.
        refused = _unsafe_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise _refusal(path, refused) from None
        raise


def _unsafe_globals(path: str) -> List[str]:
    """The globals `path` references beyond what weights-only loading admits (zip-format files)."""
    if not zipfile.is_zipfile(path):
        return []
    admitted = {
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in _numpy_globals()
    }
    return [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in admitted]


def read_safetensors(path: str) -> Any:
    """A `.safetensors` file as `{"model": {name: tensor}}`, with the `matching_heuristics` flag that
    `tools/convert_weights.py` records for backbone-relative (ImageNet) weights."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        data: dict = {"model": {name: f.get_tensor(name) for name in f.keys()}}
    if metadata.get("matching_heuristics") == "True":
        data["matching_heuristics"] = True
    return data

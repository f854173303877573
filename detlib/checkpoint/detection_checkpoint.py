"""Saving and loading training state: atomic checkpoint files, and weights in several formats.

A checkpoint is one `torch.save`d dict: `model` (state dict), one entry per checkpointable
(optimizer, scheduler, ...), `iteration`, `rng_states` (one per rank), plus whatever `save` was
given. `load` also reads Detectron2 model-zoo files (`.pkl` of numpy arrays, `.pth`) and
torchvision detection weights.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
from typing import IO, Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from tabulate import tabulate
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detlib.utils import comm
from detlib.utils.env import get_rng_state

__all__ = ["DetectionCheckpointer", "IncompatibleKeys", "load_checkpoint_file", "load_model_state", "atomic_write"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


class IncompatibleKeys(NamedTuple):
    missing: List[str]  # in the model, not in the checkpoint
    unexpected: List[str]  # in the checkpoint, not in the model
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]  # (name, checkpoint, model)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that `path` holds either its old content or the complete new one.

    The data goes to a temporary file in the same directory, is flushed and fsynced, then renamed
    over `path`; the directory is fsynced so that the rename itself survives a crash.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _strip_common_prefix(state_dict: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _warn_table(title: str, rows: List[Sequence], headers: List[str]) -> None:
    logger.warning("%s:\n%s", title, tabulate(rows, headers=headers, tablefmt="pipe"))


def load_model_state(model: nn.Module, state_dict: Dict[str, Any]) -> IncompatibleKeys:
    """Load `state_dict` (tensors or numpy arrays) into `model` by name, non-strictly.

    Entries whose shape differs from the model's are skipped; missing, unexpected and skipped
    entries are logged as tables and returned.
    """
    state_dict = _strip_common_prefix(dict(state_dict), "module.")
    own = model.state_dict()
    tensors, mismatch = {}, []
    for name, value in state_dict.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        elif not isinstance(value, torch.Tensor):
            raise ValueError(f"Weight '{name}' is a {type(value).__name__}, not a tensor or numpy array")
        if name in own and tuple(value.shape) != tuple(own[name].shape):
            mismatch.append((name, tuple(value.shape), tuple(own[name].shape)))
            continue
        tensors[name] = value
    result = model.load_state_dict(tensors, strict=False)
    # Skipped entries are reported once, as mismatches; a BatchNorm's step counter is not worth
    # reporting at all (pre-1.0 and Detectron2 checkpoints never have it).
    skipped = {name for name, _, _ in mismatch}
    missing = [k for k in result.missing_keys if k not in skipped and not k.endswith("num_batches_tracked")]
    incompatible = IncompatibleKeys(missing, list(result.unexpected_keys), mismatch)
    if mismatch:
        _warn_table(
            "Skipped weights whose shape does not match the model",
            [(n, str(c), str(m)) for n, c, m in mismatch],
            ["name", "checkpoint shape", "model shape"],
        )
    if missing:
        _warn_table("Model weights not found in the checkpoint (left as initialized)", [[k] for k in missing], ["name"])
    if incompatible.unexpected:
        unexpected = [[k] for k in incompatible.unexpected]
        _warn_table("Checkpoint weights the model does not have (ignored)", unexpected, ["name"])
    return incompatible


def _read_pickle(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # Detectron2's zoo pickles were written by Python 2 tools too


def _read_torch(path: str) -> Any:
    # Checkpoints hold NumPy RNG states, which the restricted unpickler rejects.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """Read a weights or checkpoint file into a dict with a `model` state dict.

    Understands detlib and Detectron2 `.pth` files (`{"model": ...}`), Detectron2 model-zoo
    `.pkl` files (`{"model": {name: ndarray}, "__author__": ...}`), and torchvision detection
    state dicts (converted to detlib names).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path} does not exist")
    reader = _read_pickle if path.endswith(".pkl") else _read_torch
    try:
        data = reader(path)
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a checkpoint: it holds a {type(data).__name__}, not a dict of weights")
    if "blobs" in data:
        raise ValueError(
            f"{path} is a Detectron (Caffe2) weights file; its parameter names need a conversion "
            "detlib does not implement. Use Detectron2 model-zoo weights instead."
        )
    if "model" in data:
        if not isinstance(data["model"], dict):
            raise ValueError(f"{path}: its 'model' entry is a {type(data['model']).__name__}, not a state dict")
        return data
    if data and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data.values()):
        data = _strip_common_prefix(data, "module.")
        converted = _maybe_convert_torchvision(data)
        return {"model": converted if converted is not None else data}
    raise ValueError(
        f"{path} is not a checkpoint: expected a dict with a 'model' state dict or a plain state dict, "
        f"found keys {sorted(map(str, data))[:10]}"
    )


def _maybe_convert_torchvision(state_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    try:
        from . import torchvision as tv_conversion
    except ImportError:
        return None
    if not tv_conversion.is_torchvision_state_dict(state_dict):
        return None
    logger.info("Converting torchvision detection weights to detlib names")
    return tv_conversion.convert_torchvision_state_dict(state_dict)


class DetectionCheckpointer:
    """Save and restore a model and its training state under `save_dir`.

    `save_dir/last_checkpoint` names the newest complete checkpoint; it is written after the
    checkpoint itself, and both atomically, so a run killed at any moment leaves a consistent
    directory. `save` is collective in a distributed run (it gathers every rank's RNG state):
    call it on every rank; only ranks with `save_to_disk` write.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: where checkpoints go; "" disables saving.
        save_to_disk: default: only the main process writes.
        checkpointables: other objects with `state_dict`/`load_state_dict` (optimizer=...,
            scheduler=...), saved and restored under their keyword.
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: Optional[bool] = None, **checkpointables):
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.save_dir = save_dir
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.checkpointables: Dict[str, Any] = {}
        for key, obj in checkpointables.items():
            self.add_checkpointable(key, obj)
        self.incompatible_keys: Optional[IncompatibleKeys] = None  # of the last load
        if self.save_to_disk and save_dir and os.path.isdir(save_dir):
            self._remove_interrupted_writes()

    def _remove_interrupted_writes(self) -> None:
        """Delete temporary files that a process killed in the middle of `save` left behind."""
        for f in os.listdir(self.save_dir):
            if f.startswith(".") and f.endswith(".tmp"):
                logger.info("Removing %s, left by an interrupted save", f)
                os.unlink(os.path.join(self.save_dir, f))

    def add_checkpointable(self, key: str, checkpointable: Any) -> None:
        if key in self.checkpointables or key in ("model", "iteration", "rng_states"):
            raise KeyError(f"Checkpointable '{key}' is already registered or reserved")
        if not (hasattr(checkpointable, "state_dict") and hasattr(checkpointable, "load_state_dict")):
            raise TypeError(
                f"Checkpointable '{key}' ({type(checkpointable).__name__}) lacks state_dict/load_state_dict"
            )
        self.checkpointables[key] = checkpointable

    # -- saving ------------------------------------------------------------------------------
    def save(self, name: str, **extra: Any) -> None:
        """Write `save_dir/name.pth` with the model, the checkpointables, every rank's RNG state
        and `extra` (e.g. `iteration=`), then point `last_checkpoint` at it."""
        rng_states = comm.all_gather(get_rng_state())
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data["rng_states"] = rng_states
        data.update(extra)
        os.makedirs(self.save_dir, exist_ok=True)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT), lambda f: f.write(basename.encode()))

    # -- finding -----------------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return bool(self.save_dir) and os.path.isfile(os.path.join(self.save_dir, LAST_CHECKPOINT))

    def get_checkpoint_file(self) -> str:
        """The newest complete checkpoint in `save_dir`, or "" when there is none."""
        if not self.has_checkpoint():
            return ""
        with open(os.path.join(self.save_dir, LAST_CHECKPOINT)) as f:
            basename = f.read().strip()
        return os.path.join(self.save_dir, basename)

    def get_all_checkpoint_files(self) -> List[str]:
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        return sorted(
            os.path.join(self.save_dir, f)
            for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and not f.startswith(".")
        )

    # -- loading -----------------------------------------------------------------------------
    def load(self, path: str, checkpointables: Optional[Iterable[str]] = None) -> Dict[str, Any]:
        """Load weights from `path` into the model, and the state of `checkpointables` (default:
        all registered ones present in the file).

        Returns:
            the file's remaining entries (`iteration`, `rng_states`, extras); {} when `path` is "".
        """
        if not path:
            logger.info("No checkpoint given: the model keeps its initialization")
            return {}
        logger.info("Loading checkpoint from %s", path)
        checkpoint = load_checkpoint_file(path)
        self.incompatible_keys = load_model_state(self.model, checkpoint.pop("model"))
        keys = self.checkpointables if checkpointables is None else checkpointables
        for key in keys:
            if key not in self.checkpointables:
                raise KeyError(f"'{key}' is not a registered checkpointable ({sorted(self.checkpointables)})")
            if key in checkpoint:
                logger.info("Loading %s from %s", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def resume_or_load(self, path: str, resume: bool = True) -> Dict[str, Any]:
        """With `resume` and a checkpoint in `save_dir`: load it fully (model and training state).
        Otherwise load only the model weights from `path` (e.g. `MODEL.WEIGHTS`)."""
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[])

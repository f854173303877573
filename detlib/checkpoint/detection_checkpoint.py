"""Saving and loading training state: atomic checkpoint files, and weights in several formats.

A checkpoint is one `torch.save`d dict: `model` (state dict), one entry per checkpointable
(optimizer, scheduler, ...), `iteration`, `rng_states` (one per rank), plus whatever `save` was
given: tensors and plain values only, so that `torch.load(weights_only=True)` reads it. `load` also
reads Detectron2 model-zoo files (`.pkl` of numpy arrays, `.pth`), Caffe2 ImageNet backbones,
torchvision detection weights and `.safetensors`, from a path or a URL (see `download`), without
running code from any of them (see `safe_readers`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from tabulate import tabulate
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detlib.utils import comm
from detlib.utils.atomic_write import atomic_write
from detlib.utils.env import get_rng_state

from .caffe2_names import convert_caffe2_names, is_caffe2_state_dict
from .download import cached_path
from .safe_readers import UnsafeCheckpointError, read_pickle, read_safetensors, read_torch

__all__ = ["DetectionCheckpointer", "IncompatibleKeys", "load_checkpoint_file", "load_model_state"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


class IncompatibleKeys(NamedTuple):
    missing: List[str]  # in the model, not in the checkpoint
    unexpected: List[str]  # in the checkpoint, not in the model
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]  # (name, checkpoint, model)


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
            value = torch.from_numpy(np.asarray(value, order="C"))  # (np.ascontiguousarray makes 0-d arrays 1-d)
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


def _read(path: str, allow_unsafe: bool) -> Any:
    if path.endswith(".pkl"):
        return read_pickle(path, allow_unsafe)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch(path, allow_unsafe)


def load_checkpoint_file(path: str, allow_unsafe: bool = False) -> Dict[str, Any]:
    """Read a weights or checkpoint file (a path or a URL) into a dict with a `model` state dict.

    Understands detlib and Detectron2 `.pth` files (`{"model": ...}`), Detectron2 model-zoo
    `.pkl` files (`{"model": {name: ndarray}, "__author__": ...}`), Caffe2 ImageNet backbones
    (converted to ResNet-relative names and flagged `matching_heuristics`), torchvision detection
    state dicts (converted to detlib names) and `.safetensors` files.

    Raises:
        UnsafeCheckpointError: the file references code and `allow_unsafe` was not given.
        DownloadError: a URL could not be fetched.
    """
    path = cached_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {path} does not exist")
    try:
        data = _read(path, allow_unsafe)
    except UnsafeCheckpointError:
        raise
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a checkpoint: it holds a {type(data).__name__}, not a dict of weights")
    if isinstance(data.get("blobs"), dict):  # Caffe2 Detectron files wrap their weights
        data = data["blobs"]
    if "model" in data:
        if not isinstance(data["model"], dict):
            raise ValueError(f"{path}: its 'model' entry is a {type(data['model']).__name__}, not a state dict")
        return data
    if data and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data.values()):
        if is_caffe2_state_dict(data):
            logger.info("Converting Caffe2 ResNet names in %s to detlib names", path)
            return {"model": convert_caffe2_names(data), "matching_heuristics": True}
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


def _place_under_backbone(state_dict: Dict[str, Any], model_keys: Iterable[str]) -> Dict[str, Any]:
    """Prefix ResNet-relative names (an ImageNet backbone's: `stem.conv1.weight`, `res2.0.conv1.weight`)
    with the ResNet's place in the model (`backbone.bottom_up.` in an R-CNN)."""
    model_keys = set(model_keys)
    stem = "stem.conv1.weight"
    prefixes = {key[: -len(stem)] for key in model_keys if key.endswith(stem)}
    if len(prefixes) != 1:
        return state_dict  # no single ResNet to put them in: the names are reported as unexpected
    (prefix,) = prefixes
    return {(prefix + n if prefix + n in model_keys else n): value for n, value in state_dict.items()}


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
        allow_unsafe: read files that reference code (pickled objects beyond arrays and plain
            values) without restriction. Only for files you trust; see `safe_readers`.
        checkpointables: other objects with `state_dict`/`load_state_dict` (optimizer=...,
            scheduler=...), saved and restored under their keyword.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        allow_unsafe: bool = False,
        **checkpointables,
    ):
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.save_dir = save_dir
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.allow_unsafe = allow_unsafe
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
        with atomic_write(path) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT)) as f:
            f.write(basename.encode())

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
        """Load weights from `path` (a file or a URL) into the model, and the state of
        `checkpointables` (default: all registered ones present in the file).

        Returns:
            the file's remaining entries (`iteration`, `rng_states`, extras); {} when `path` is "".
        """
        if not path:
            logger.info("No checkpoint given: the model keeps its initialization")
            return {}
        logger.info("Loading checkpoint from %s", path)
        checkpoint = load_checkpoint_file(path, allow_unsafe=self.allow_unsafe)
        state_dict = checkpoint.pop("model")
        if checkpoint.pop("matching_heuristics", False):
            state_dict = _place_under_backbone(state_dict, self.model.state_dict().keys())
        self.incompatible_keys = load_model_state(self.model, state_dict)
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

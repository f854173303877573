"""Checkpoints: atomic saving of training state, and loading weights in several formats."""

from .detection_checkpoint import DetectionCheckpointer, IncompatibleKeys, load_checkpoint_file, load_model_state
from .download import DownloadError
from .safe_readers import UnsafeCheckpointError

__all__ = [
    "DetectionCheckpointer",
    "DownloadError",
    "IncompatibleKeys",
    "UnsafeCheckpointError",
    "load_checkpoint_file",
    "load_model_state",
]

"""Checkpoints: atomic saving of training state, and loading weights in several formats."""
from .detection_checkpoint import DetectionCheckpointer, IncompatibleKeys, load_checkpoint_file, load_model_state

__all__ = ["DetectionCheckpointer", "IncompatibleKeys", "load_checkpoint_file", "load_model_state"]

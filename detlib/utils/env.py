"""Reproducibility: seeding and saving / restoring the random generators."""

from __future__ import annotations

import os
import random
from datetime import datetime
from typing import Optional

import numpy as np
import torch

__all__ = ["seed_all_rng", "get_rng_state", "set_rng_state"]


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) generators.

    Args:
        seed: the seed; None draws a fresh one from the OS and the clock.
    Returns:
        the seed that was used, so a run can log it and be repeated.
    """
    if seed is None:
        seed = (os.getpid() + int(datetime.now().strftime("%S%f")) + int.from_bytes(os.urandom(2), "big")) % 2**31
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def get_rng_state() -> dict:
    """The state of every random generator a training step may draw from: Python's, NumPy's,
    torch's CPU generator and, when available, every CUDA device's. Only tensors and plain values,
    so that a checkpoint holding it loads with `torch.load(weights_only=True)`."""
    _, key, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    numpy_state = {
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators from `get_rng_state()`'s result."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["key"].numpy().astype(np.uint32)
        numpy_state = ("MT19937", key, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)  # a tuple: checkpoints written before the state was stored as above
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(
                f"The saved RNG state covers {len(state['cuda'])} CUDA devices but "
                f"{torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_rng_state_all(state["cuda"])

"""Reproducibility and environment reporting."""
from __future__ import annotations

import os
import random
from datetime import datetime
from typing import Optional

import numpy as np
import torch

from .collect_env import collect_env_info

__all__ = ["seed_all_rng", "collect_env_info", "get_rng_state", "set_rng_state"]


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
    torch's CPU generator and, when available, every CUDA device's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators from `get_rng_state()`'s result."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise ValueError(
                f"The saved RNG state covers {len(state['cuda'])} CUDA devices but "
                f"{torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_rng_state_all(state["cuda"])

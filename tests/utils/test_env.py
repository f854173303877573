import random

import numpy as np
import torch

from detlib.utils.env import get_rng_state, seed_all_rng, set_rng_state


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(()).item()


def test_seed_all_rng_seeds_python_numpy_and_torch():
    assert seed_all_rng(123) == 123
    first = _draws()
    seed_all_rng(123)
    assert _draws() == first
    seed_all_rng(124)
    assert _draws() != first


def test_unseeded_call_returns_the_seed_it_used():
    seed = seed_all_rng()
    first = _draws()
    seed_all_rng(seed)
    assert _draws() == first


def test_rng_state_round_trip():
    state = get_rng_state()
    first = _draws()
    _draws()
    set_rng_state(state)
    assert _draws() == first

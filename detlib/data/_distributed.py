"""Rank, world size and a seed shared by all ranks, read from torch.distributed."""
import numpy as np
import torch.distributed as dist


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shared_random_seed() -> int:
    """A random seed drawn on rank 0 and broadcast, so that every rank gets the same one."""
    seed = [int(np.random.randint(2**31))]
    if get_world_size() > 1:
        dist.broadcast_object_list(seed, src=0)
    return seed[0]

"""Process-group helpers that also work, as no-ops, in a plain single-process run.

Collectives on arbitrary picklable objects go through a gloo group, so they work whether the main
backend is NCCL (GPUs) or gloo (CPU).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "reduce_dict",
    "shared_random_seed",
    "create_local_process_group",
]

# The process group of the ranks on this machine; set by `launch` once per worker.
_LOCAL_PROCESS_GROUP: Optional[dist.ProcessGroup] = None


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if _is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if _is_distributed() else 0


def get_local_rank() -> int:
    """This process's rank among the processes on its machine (its device index)."""
    if not _is_distributed() or _LOCAL_PROCESS_GROUP is None:
        return 0
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """How many processes run on this machine."""
    if not _is_distributed() or _LOCAL_PROCESS_GROUP is None:
        return 1
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def is_main_process() -> bool:
    return get_rank() == 0


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the per-machine group; every rank of every machine must call this once."""
    global _LOCAL_PROCESS_GROUP
    assert _LOCAL_PROCESS_GROUP is None, "the local process group was already created"
    world_size = get_world_size()
    if world_size % num_workers_per_machine != 0:
        raise ValueError(f"world size {world_size} is not a multiple of {num_workers_per_machine} workers per machine")
    machine = get_rank() // num_workers_per_machine
    for m in range(world_size // num_workers_per_machine):
        ranks = list(range(m * num_workers_per_machine, (m + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)  # collective: every rank creates every group
        if m == machine:
            _LOCAL_PROCESS_GROUP = group


def synchronize() -> None:
    """Barrier across all ranks."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache
def _object_group() -> dist.ProcessGroup:
    """A gloo group over all ranks, for collectives on Python objects."""
    return dist.new_group(backend="gloo") if dist.get_backend() == dist.Backend.NCCL else dist.group.WORLD


def all_gather(data: Any, group: Optional[dist.ProcessGroup] = None) -> List[Any]:
    """Every rank's `data` (any picklable object), in rank order, on every rank."""
    if get_world_size() == 1:
        return [data]
    group = group or _object_group()
    output = [None] * dist.get_world_size(group)
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group: Optional[dist.ProcessGroup] = None) -> List[Any]:
    """Every rank's `data`, in rank order, on rank `dst`; an empty list on the other ranks."""
    if get_world_size() == 1:
        return [data]
    group = group or _object_group()
    if dist.get_rank() == dst:
        output = [None] * dist.get_world_size(group)
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def reduce_dict(input_dict: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """Sum (or average) a dict of scalar tensors over ranks; the result is valid on rank 0 only.

    All ranks must pass the same keys.
    """
    world_size = get_world_size()
    if world_size == 1:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict)
        values = torch.stack([input_dict[k] for k in names])
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size
        return dict(zip(names, values))


def shared_random_seed() -> int:
    """A random integer drawn independently on every rank, then replaced by rank 0's value, so
    all ranks agree on it."""
    seed = int(np.random.randint(2**31))
    return all_gather(seed)[0]

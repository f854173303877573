"""Start one training process per device, on one or several machines, over torch.distributed."""
from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detlib.utils import comm

__all__ = ["launch", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

logger = logging.getLogger(__name__)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence = (),
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run `main_func(*args)` in `num_gpus_per_machine` processes on each of `num_machines`.

    One process per GPU with NCCL; on a machine without CUDA the processes use gloo on the CPU
    (so `num_gpus_per_machine=2` tests distributed training anywhere). A world of one process
    runs `main_func` directly.

    Args:
        machine_rank: this machine's index in [0, num_machines).
        dist_url: `tcp://HOST:PORT` of machine 0, reachable from all machines; "auto" picks a
            free local port (single machine only).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on one machine only; pass tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init method needs a file system shared by all machines: %s", dist_url)
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout),
        daemon=False,
        start_method="spawn",
    )


def _distributed_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: datetime.timedelta,
) -> None:
    use_cuda = torch.cuda.is_available()
    if use_cuda and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"Asked for {num_gpus_per_machine} processes per machine but only "
            f"{torch.cuda.device_count()} GPUs are visible"
        )
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    comm.create_local_process_group(num_gpus_per_machine)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:
        # CPU workers share the machine's cores instead of each using all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    comm.synchronize()
    main_func(*args)
    # On an exception the process dies instead, and the launcher stops the other workers; a
    # barrier here would wait forever for ranks still inside training.
    comm.synchronize()
    dist.destroy_process_group()

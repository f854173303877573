"""Start one training process per device, on one or several machines, over torch.distributed.

Three ways to get there:
* spawning: `launch` starts `num_gpus_per_machine` processes itself (`--num-gpus`, `--dist-url`);
* torchrun / torch.distributed.elastic: the launcher started this process and set `RANK`,
  `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`;
* SLURM: `srun` started one task per device and set `SLURM_PROCID`, `SLURM_NTASKS`,
  `SLURM_LOCALID`, ...; the first node of `SLURM_JOB_NODELIST` hosts the rendezvous.
In the last two cases `launch` joins the world the launcher made instead of spawning.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detlib.utils import comm

from .preemption import PREEMPTED_EXIT_CODE

__all__ = ["launch", "DEFAULT_TIMEOUT", "ClusterPlacement", "detect_cluster_placement", "RendezvousError"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

logger = logging.getLogger(__name__)


class RendezvousError(RuntimeError):
    """A process could not join the process group (its peers or the rendezvous host were not
    reachable within the timeout)."""


@dataclass(frozen=True)
class ClusterPlacement:
    """Where an outside launcher put this process."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def _env_int(environ: Mapping[str, str], name: str, launcher: str) -> int:
    if name not in environ:
        raise RuntimeError(f"Launched by {launcher} but the environment variable {name} is not set")
    try:
        return int(environ[name])
    except ValueError as e:
        raise RuntimeError(
            f"Environment variable {name}={environ[name]!r} (set by {launcher}) is not an integer"
        ) from e


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-09,12],cpu1" -> "gpu07"."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    # Each bracketed range list stands for its first entry.
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], nodelist[:end].strip())
    if not host or "[" in host or "]" in host:
        raise RuntimeError(f"Cannot read the first host of SLURM_JOB_NODELIST={nodelist!r}")
    return host


def slurm_tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Tasks on node `node_id` from SLURM_TASKS_PER_NODE, e.g. "4(x2),2" -> nodes 0-1: 4, node 2: 2."""
    counts: List[int] = []
    for entry in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", entry.strip())
        if not match:
            raise RuntimeError(f"Cannot read SLURM_TASKS_PER_NODE={tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise RuntimeError(
            f"SLURM_NODEID={node_id} but SLURM_TASKS_PER_NODE={tasks_per_node!r} lists {len(counts)} nodes"
        )
    return counts[node_id]


def detect_cluster_placement(environ: Optional[Mapping[str, str]] = None) -> Optional[ClusterPlacement]:
    """The placement torchrun or SLURM gave this process, or None when neither started it (or SLURM
    started a single task, which then spawns its own processes)."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env or {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= set(env):
        name = "torchrun"
        world_size = _env_int(env, "WORLD_SIZE", name)
        return ClusterPlacement(
            launcher=name,
            rank=_env_int(env, "RANK", name),
            world_size=world_size,
            local_rank=_env_int(env, "LOCAL_RANK", name),
            local_world_size=_env_int(env, "LOCAL_WORLD_SIZE", name) if "LOCAL_WORLD_SIZE" in env else world_size,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_env_int(env, "MASTER_PORT", name),
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        name = "SLURM"
        if "SLURM_TASKS_PER_NODE" in env:
            local_world_size = slurm_tasks_on_node(env["SLURM_TASKS_PER_NODE"], int(env.get("SLURM_NODEID", "0")))
        else:
            local_world_size = _env_int(env, "SLURM_NTASKS_PER_NODE", name)
        if "MASTER_ADDR" in env:
            master_addr = env["MASTER_ADDR"]
        elif "SLURM_JOB_NODELIST" in env:
            master_addr = first_slurm_host(env["SLURM_JOB_NODELIST"])
        else:
            raise RuntimeError("Launched by SLURM but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
        # Jobs sharing a node need different ports; the job id tells them apart.
        default_port = 20000 + _env_int(env, "SLURM_JOB_ID", name) % 20000 if "MASTER_PORT" not in env else 0
        return ClusterPlacement(
            launcher=name,
            rank=_env_int(env, "SLURM_PROCID", name),
            world_size=_env_int(env, "SLURM_NTASKS", name),
            local_rank=_env_int(env, "SLURM_LOCALID", name),
            local_world_size=local_world_size,
            master_addr=master_addr,
            master_port=_env_int(env, "MASTER_PORT", name) if "MASTER_PORT" in env else default_port,
        )
    return None


def _torchrun_store_args(placement: ClusterPlacement, timeout: datetime.timedelta) -> dict:
    """The store to join a torchrun world through. torchrun's agent keeps its store across elastic
    restarts, so every attempt works under its own prefix: restarted workers must not find the
    addresses that the workers of the failed attempt left there."""
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        placement.master_addr,
        placement.master_port,
        placement.world_size,
        is_master=placement.rank == 0 and not agent_hosts_store,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"detlib/attempt_{attempt}", store)}


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
    """Run `main_func(*args)` in every process of the training world.

    Under torchrun or SLURM (see the module docstring) this process joins the launcher's world
    and the layout arguments are not used. Otherwise it starts `num_gpus_per_machine` processes
    on each of `num_machines`: one process per GPU with NCCL; on a machine without CUDA they use
    gloo on the CPU (so `num_gpus_per_machine=2` tests distributed training anywhere). A world
    of one process runs `main_func` directly.

    Args:
        machine_rank: this machine's index in [0, num_machines).
        dist_url: `tcp://HOST:PORT` of machine 0, reachable from all machines; "auto" picks a
            free local port (single machine only).
        timeout: how long joining the group and each collective may take; past it the process
            fails with `RendezvousError` (joining) or the backend's timeout error.

    A process preempted by SIGTERM/SIGUSR1 exits with `PREEMPTED_EXIT_CODE`, and so does the
    spawning parent; the parent forwards those signals to the processes it spawned.
    """
    placement = detect_cluster_placement()
    if placement is not None:
        if num_gpus_per_machine not in (1, placement.local_world_size):
            logger.warning(
                "%s placed %d processes on this machine; --num-gpus %d is not used",
                placement.launcher,
                placement.local_world_size,
                num_gpus_per_machine,
            )
        if placement.world_size <= 1:
            main_func(*args)
            return
        if placement.launcher == "torchrun":
            join = functools.partial(_torchrun_store_args, placement, timeout)
        else:
            join = functools.partial(dict, init_method=f"tcp://{placement.master_addr}:{placement.master_port}")
        _run_in_world(
            main_func,
            tuple(args),
            placement.rank,
            placement.world_size,
            placement.local_rank,
            placement.local_world_size,
            join,
            f"{placement.master_addr}:{placement.master_port}",
            timeout,
        )
        return

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
    context = mp.start_processes(
        _spawned_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout),
        daemon=False,
        start_method="spawn",
        join=False,
    )
    _forward_preemption_signals(context.processes)
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:
        if error.exit_code == PREEMPTED_EXIT_CODE:
            raise SystemExit(PREEMPTED_EXIT_CODE) from error
        raise


def _forward_preemption_signals(processes: Sequence) -> None:
    """A cluster signals the process it started: pass SIGTERM/SIGUSR1 on to the workers, which save
    and exit (see `PreemptionCheckpointer`); the parent then leaves with their exit code."""

    def forward(signum: int, frame) -> None:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, forward)


def _spawned_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: datetime.timedelta,
) -> None:
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"Asked for {num_gpus_per_machine} processes per machine but only "
            f"{torch.cuda.device_count()} GPUs are visible"
        )
    rank = machine_rank * num_gpus_per_machine + local_rank
    join = functools.partial(dict, init_method=dist_url)
    try:
        _run_in_world(main_func, args, rank, world_size, local_rank, num_gpus_per_machine, join, dist_url, timeout)
    except SystemExit as stop:  # e.g. PREEMPTED_EXIT_CODE, which the parent passes on
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    else:
        code = 0
    _exit_worker(code)


def _exit_worker(code: int) -> None:
    """End a spawned worker whose work is done, with `code`, without the C++ static destructors of a normal
    interpreter exit: there, after the process group is destroyed, gloo can still hold a joinable thread and
    abort the process ("terminate called without an active exception", SIGABRT, about one two-process run in
    ten on CPU), which would report a finished run, or a preemption's exit code, as a crash. Python's exit
    handlers (log files, writers) still run first. Other exceptions propagate: the parent reports them."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _run_in_world(
    main_func: Callable,
    args: tuple,
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
    join: Callable[[], dict],
    rendezvous: str,
    timeout: datetime.timedelta,
) -> None:
    """Join the process group as `rank` (`join()` gives the init_method or store to join through)
    and run `main_func(*args)`."""
    use_cuda = torch.cuda.is_available()
    try:
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world_size, **join())
    except (RuntimeError, ValueError, OSError) as error:
        raise RendezvousError(
            f"Rank {rank} of {world_size} could not join the process group at {rendezvous} within the "
            f"timeout of {timeout.total_seconds():g} s: {error}"
        ) from error
    comm.create_local_process_group(local_world_size)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:
        # CPU workers share the machine's cores instead of each using all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    comm.synchronize()
    main_func(*args)
    # On an exception the process dies instead, and the launcher stops the other workers; a
    # barrier here would wait forever for ranks still inside training.
    comm.synchronize()
    dist.destroy_process_group()

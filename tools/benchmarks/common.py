"""Helpers every benchmark shares: timing, the description of the machine a result was measured on, and the
synthetic shapes the evaluation and model benchmarks draw."""

import os
import platform
import statistics
import sys
import time
from typing import Callable, List, Tuple

import numpy as np
import torch

# The CLI every benchmark runs under; a benchmark that measures in a child process runs it again.
BENCHMARK_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmark.py")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> Tuple[float, object]:
    """(median wall time of `fn` in ms, its result). The first call is a warm-up whose result is
    returned for checking; a case whose warm-up takes over a second is timed 3 times at most."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    if time.perf_counter() - start > 1.0:
        repeats = min(repeats, 3)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), result


def timed_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of `fn`."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cpu_kernels() -> str:
    """What decides which CPU kernels run, and so the last bits of every float result and the bfloat16 speed."""
    from detlib.collect_env import cpu_features

    return f"ATen {torch.backends.cpu.get_cpu_capability()}, {cpu_features()}"


def describe_machine(device: torch.device) -> str:
    """One line naming the device (for a CPU: its model, ISA and bfloat16 support), torch and the threads."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}; {cpu_kernels()}"
    return f"device: {where}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as printed next to every timing."""
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def print_command() -> None:
    """The command line that produced the figures below it."""
    print(f"command: python tools/benchmark.py {' '.join(sys.argv[1:])}")


def quadrilateral(x: float, y: float, w: float, h: float, rng: np.random.Generator) -> List[float]:
    """A polygon inside the box (so masks differ from boxes), as COCO's flat [x0, y0, x1, ...]."""
    dx, dy = rng.uniform(0, 0.25) * w, rng.uniform(0, 0.25) * h
    return [x + dx, y, x + w, y + dy, x + w - dx, y + h, x, y + h - dy]

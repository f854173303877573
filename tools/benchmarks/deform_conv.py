"""
Deformable convolution: detlib.layers.deform_conv2d against torchvision.ops.deform_conv2d at the sizes of
ResNet's deformable stages (3x3, one offset group, an 800x1216 image: res3 128 ch at 100x152, res4 256 ch at
50x76, res5 512 ch at 25x38), forward and forward+backward, v2 (modulated, as DEFORM_MODULATED) and v1.

Both run in this process on the same tensors; their outputs (and gradients) are checked equal first, then
timed interleaved (ours, theirs, ours, ...) so that a change in the machine's load hits both alike.

    OMP_NUM_THREADS=2 python tools/benchmark.py deform [--device cuda] [--batch 2] [--repeats 7]
"""

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

HELP = "deformable convolution against torchvision.ops.deform_conv2d"

STAGES = {"res3": (128, 100, 152), "res4": (256, 50, 76), "res5": (512, 25, 38)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="batch sizes")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--versions", nargs="+", default=["v2", "v1"], choices=["v1", "v2"], help="v2: with mask")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed calls per case (median reported)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Dict[str, float]:
    """Median ms of each fn over `repeats` rounds that call every fn once, after one warm-up round."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_ > 0:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def _max_relative_difference(ours, theirs) -> float:
    """Largest |ours - theirs| of any of the tensors, relative to that tensor's largest |theirs|."""
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(ours, theirs))


def case_rows(stage: str, batch: int, version: str, repeats: int, device: torch.device) -> List[list]:
    from torchvision.ops import deform_conv2d as theirs

    from detlib.layers import deform_conv2d as ours

    channels, height, width = STAGES[stage]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=g).to(device)
    weight = (torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels**0.5)).to(device)
    offset = ((torch.rand(batch, 18, height, width, generator=g) * 2 - 1) * 2).to(device)  # within +-2 px
    mask = torch.rand(batch, 9, height, width, generator=g).to(device) if version == "v2" else None
    upstream = torch.randn(batch, channels, height, width, generator=g).to(device)
    leaves = [x, offset, weight] + ([mask] if mask is not None else [])
    impls = {"detlib": ours, "torchvision": theirs}

    def forward(name):
        with torch.no_grad():
            return (impls[name](x, offset, weight, padding=1, mask=mask),)

    def forward_backward(name):
        inputs = [t.detach().requires_grad_(True) for t in leaves]
        out = impls[name](inputs[0], inputs[1], inputs[2], padding=1, mask=inputs[3] if mask is not None else None)
        return (out.detach(), *torch.autograd.grad(out, inputs, upstream))

    rows = []
    case = f"{stage} {channels}ch {height}x{width}, batch {batch}, {version}"
    for op, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
        difference = _max_relative_difference(fn("detlib"), fn("torchvision"))
        if difference > 1e-4:
            raise SystemExit(f"{case} {op}: detlib and torchvision differ (max relative difference {difference:.1e})")
        ms = _interleaved({name: (lambda name=name, fn=fn: fn(name)) for name in impls}, repeats, device)
        rows.append([op, case, ms["torchvision"], ms["detlib"], ms["torchvision"] / ms["detlib"], difference])
        print(
            f"  {op:8s} {case:40s} torchvision {rows[-1][2]:9.1f} ms  detlib {rows[-1][3]:9.1f} ms  x{rows[-1][4]:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def run(args: argparse.Namespace) -> None:
    from tabulate import tabulate

    from detlib.layers import _extension

    device = torch.device(args.device)
    rows = []
    for stage in args.stages:
        for batch in args.batch:
            for version in args.versions:
                rows += case_rows(stage, batch, version, args.repeats, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"command: python tools/benchmark.py {' '.join(sys.argv[1:])}")
    print(f"kernels: {_extension.kernels_in_use()}")
    print(f"device: {where}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus{load}")
    print(f"median of {args.repeats} interleaved calls after one warm-up; 3x3 kernel, padding 1, 1 offset group\n")
    headers = ["op", "case", "torchvision ms", "detlib ms", "speedup", "max rel. diff"]
    print(tabulate(rows, headers=headers, tablefmt="github", floatfmt=(".1f", "", ".1f", ".1f", ".2f", ".1e")))

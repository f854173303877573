"""
Which GPU architectures detlib._C carries code for: the list a distributable build compiles for, and whether a GPU
can run what a build carries. No import beyond the standard library: setup.py loads this file by path at build time.

Names as torch and nvcc spell them: "sm_86" is machine code (a cubin) for compute capability 8.6, "compute_90" is
PTX for 9.0; TORCH_CUDA_ARCH_LIST spells them "8.6" and "9.0+PTX".
"""

import re
from typing import Iterable, List, Tuple

__all__ = ["arch_names", "distributable_arch_list", "gpu_runs_build", "parse_arch"]

_ARCH = re.compile(r"^(sm|compute)_(\d+?)(\d)([a-z]?)$")


def parse_arch(name: str) -> Tuple[str, int, int, str]:
    """ "sm_120" -> ("sm", 12, 0, ""); "compute_90a" -> ("compute", 9, 0, "a")."""
    match = _ARCH.match(name)
    if match is None:
        raise ValueError(f"not a CUDA architecture name (sm_XY or compute_XY): {name!r}")
    kind, major, minor, suffix = match.groups()
    return kind, int(major), int(minor), suffix


def distributable_arch_list(torch_arches: Iterable[str]) -> str:
    """
    TORCH_CUDA_ARCH_LIST for a wheel that runs wherever the installed torch runs: machine code for every
    architecture torch was built for (`torch.cuda.get_arch_list()`, e.g. ["sm_75", "sm_80", ..., "sm_120"]),
    plus PTX for the newest, which the driver compiles for GPUs newer than any of them. E.g.
    "7.5;8.0;8.6;9.0;10.0;12.0+PTX".
    """
    versions = sorted({(major, minor, suffix) for kind, major, minor, suffix in map(parse_arch, torch_arches)})
    if not versions:
        raise ValueError("torch reports no CUDA architectures (a CPU-only torch?): nothing to build CUDA code for")
    names = [f"{major}.{minor}{suffix}" for major, minor, suffix in versions]
    # PTX of an arch-specific ("a") target only runs on that exact GPU: put it on the newest portable one.
    portable = [i for i, (_, _, suffix) in enumerate(versions) if not suffix]
    names[portable[-1] if portable else -1] += "+PTX"
    return ";".join(names)


def gpu_runs_build(capability: Tuple[int, int], build_arches: Iterable[str]) -> bool:
    """
    Whether a GPU of compute `capability` (major, minor) can run a build carrying `build_arches` (e.g.
    "sm_80,sm_90,compute_90".split(",")): machine code runs on GPUs of its major version and a minor at least its
    own ("a" variants on their exact GPU only); PTX is compiled by the driver for any GPU at least as new.
    """
    major, minor = capability
    for name in build_arches:
        kind, arch_major, arch_minor, suffix = parse_arch(name)
        if kind == "sm":
            if suffix and (arch_major, arch_minor) == (major, minor):
                return True
            if not suffix and arch_major == major and arch_minor <= minor:
                return True
        elif (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def arch_names(build_arches: str) -> List[str]:
    """The comma-separated list a build records (DETLIB_CUDA_ARCHS) as names."""
    return [name for name in build_arches.split(",") if name]

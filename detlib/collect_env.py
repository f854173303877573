"""`python -m detlib.collect_env`: the environment report users paste into bug reports."""

import importlib.metadata
import os
import platform
import sys
from typing import List, Tuple

import torch

__all__ = ["collect_env_info", "cpu_features", "cpu_flags"]

# Libraries detlib relies on, by distribution name; whichever of opencv's wheels is installed is shown.
_LIBRARIES = ("fvcore", "pycocotools", "numpy", "opencv-python", "opencv-python-headless", "opencv-contrib-python")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _cpuinfo(field: str) -> str:
    """The first `field` line of /proc/cpuinfo ("" where there is none, e.g. off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> frozenset:
    """The CPU's feature flags as the kernel lists them in /proc/cpuinfo (empty where there is none)."""
    return frozenset(_cpuinfo("flags").split())


def cpu_features() -> str:
    """
    The CPU features that decide which bfloat16 / float32 kernels oneDNN and ATen pick, and so the last bits of
    every result: e.g. "AVX-512: yes, AVX-512 BF16: yes, AMX: no, oneDNN bfloat16: native". A test whose
    tolerance depends on the kernels names this in its failure message.
    """
    import torch

    flags = cpu_flags()

    def has(*names: str) -> str:
        return "yes" if flags and all(name in flags for name in names) else ("no" if flags else "unknown")

    bf16 = "native" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "not native"
    # Set, these cap the kernels below what the CPU has (the Makefile's test-isa does, to test another family).
    caps = [
        f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if name in os.environ
    ]
    return (
        f"AVX-512: {has('avx512f')}, AVX-512 BF16: {has('avx512_bf16')}, AMX: {has('amx_bf16', 'amx_tile')}, "
        f"oneDNN bfloat16: {bf16}" + (f" ({', '.join(caps)})" if caps else "")
    )


def _extension_rows() -> List[Tuple[str, str]]:
    from detlib.layers._extension import KERNELS, kernels_in_use

    rows = [("NMS / ROIAlign kernels", kernels_in_use())]
    extension = KERNELS.extension
    if extension is None:
        return rows + [("detlib._C", "not loaded")]
    cuda = f"CUDA {extension.CUDA_VERSION}, arches {extension.CUDA_ARCHS}" if extension.WITH_CUDA else "no CUDA"
    return (
        rows
        + [
            ("detlib._C", "loaded"),
            ("detlib._C built against", f"torch {extension.TORCH_VERSION}, ABI version {extension.ABI_VERSION}"),
            ("detlib._C compiler", f"{extension.COMPILER} (CXX11 ABI {int(extension.CXX11_ABI)})"),
            ("detlib._C CUDA", cuda),
        ]
        + _uncovered_gpu_rows(extension)
    )


def _uncovered_gpu_rows(extension) -> List[Tuple[str, str]]:
    """A warning for each visible GPU that detlib._C carries no code for (its CUDA kernels would fail there)."""
    import torch

    from detlib.utils.cuda_arches import arch_names, gpu_runs_build

    if not (extension.WITH_CUDA and torch.cuda.is_available()):
        return []
    rows = []
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        if not gpu_runs_build(capability, arch_names(extension.CUDA_ARCHS)):
            rows.append(
                (
                    "WARNING",
                    f"GPU {index} (sm_{capability[0]}{capability[1]}) is not among detlib._C's CUDA arches "
                    f"{extension.CUDA_ARCHS}: rebuild on it (`make setup`), or with TORCH_CUDA_ARCH_LIST="
                    f"{capability[0]}.{capability[1]}, or all of torch's (`make wheel`)",
                )
            )
    return rows


def collect_env_info() -> str:
    """A table of the software and hardware in use: Python, torch and its CUDA, GPUs, detlib's compiled
    ops (how they were built, whether they are in use) and the versions of the libraries detlib uses."""
    import detlib

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("detlib", f"{detlib.__version__} @ {os.path.dirname(detlib.__file__)}"),
        ("PyTorch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        # From its metadata: importing torchvision takes seconds, and a training run's start-up pays for it.
        ("torchvision", _version("torchvision") or "not installed"),
        ("PyTorch CUDA build", str(torch.version.cuda)),
        ("cuDNN", str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "not available"),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            rows.append((f"GPU {index}", torch.cuda.get_device_name(index)))
    else:
        model = _cpuinfo("model name") or platform.processor() or platform.machine()
        rows.append(("CPU", f"{model}, {os.cpu_count()} cores"))
    rows.append(("CPU kernels", f"ATen {torch.backends.cpu.get_cpu_capability()}; {cpu_features()}"))
    rows.append(("torch threads", str(torch.get_num_threads())))
    rows += _extension_rows()
    rows += [(name, _version(name)) for name in _LIBRARIES if _version(name)]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


if __name__ == "__main__":
    print(collect_env_info())

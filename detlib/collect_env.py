"""`python -m detlib.collect_env`: the environment report users paste into bug reports."""

import importlib.metadata
import os
import platform
import sys
from typing import List, Tuple

import torch

__all__ = ["collect_env_info"]

# Libraries detlib relies on, by distribution name; whichever of opencv's wheels is installed is shown.
_LIBRARIES = ("fvcore", "pycocotools", "numpy", "opencv-python", "opencv-python-headless", "opencv-contrib-python")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _extension_rows() -> List[Tuple[str, str]]:
    from detlib.layers._extension import KERNELS, kernels_in_use

    rows = [("NMS / ROIAlign kernels", kernels_in_use())]
    extension = KERNELS.extension
    if extension is None:
        return rows + [("detlib._C", "not loaded")]
    cuda = f"CUDA {extension.CUDA_VERSION}, arches {extension.CUDA_ARCHS}" if extension.WITH_CUDA else "no CUDA"
    return rows + [
        ("detlib._C", "loaded"),
        ("detlib._C built against", f"torch {extension.TORCH_VERSION}, ABI version {extension.ABI_VERSION}"),
        ("detlib._C compiler", f"{extension.COMPILER} (CXX11 ABI {int(extension.CXX11_ABI)})"),
        ("detlib._C CUDA", cuda),
    ]


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
        rows.append(("CPU", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"))
    rows.append(("torch threads", str(torch.get_num_threads())))
    rows += _extension_rows()
    rows += [(name, _version(name)) for name in _LIBRARIES if _version(name)]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


if __name__ == "__main__":
    print(collect_env_info())

"""
Picks the kernels behind detlib.layers.nms / roi_align: detlib's own operators (torch.ops.detlib, loaded
by importing `detlib._C`) or, when that build is missing, broken or stale, torchvision's operators, which
have the same schemas and give the same results. The fallback warns once, saying why and how to build;
DETLIB_REQUIRE_EXT=1 turns it into an ImportError (CI sets it, so CI proves the build is used).
"""

import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

import torch

# Must equal DETLIB_C_ABI_VERSION in csrc/detlib_ops.h.
EXPECTED_ABI_VERSION = 3

REQUIRE_ENV = "DETLIB_REQUIRE_EXT"

BUILD_HINT = (
    "Build it from the repository root with `pip install -e .` "
    "(FORCE_CUDA=1 to require the CUDA kernels, FORCE_CUDA=0 for a quick C++-only build)."
)


def load_extension() -> ModuleType:
    """Return `detlib._C`, raising ImportError with build instructions if it is absent, broken or stale."""
    try:
        from detlib import _C
    except (ImportError, OSError) as e:
        raise ImportError(f"detlib._C (compiled NMS / ROIAlign ops) could not be imported: {e}. {BUILD_HINT}") from e
    built_abi = getattr(_C, "ABI_VERSION", None)
    if built_abi != EXPECTED_ABI_VERSION:
        raise ImportError(
            f"detlib._C at {_C.__file__} is stale: it has ABI version {built_abi}, this source tree expects "
            f"{EXPECTED_ABI_VERSION}. {BUILD_HINT}"
        )
    if _C.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"detlib._C at {_C.__file__} was built against torch {_C.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed. {BUILD_HINT}"
        )
    return _C


@dataclass(frozen=True)
class Kernels:
    """The operator namespace in use, and why it is not detlib's when it is not."""

    ops: object  # torch.ops.detlib or torch.ops.torchvision: nms, roi_align, _roi_align_backward
    name: str  # "detlib" or "torchvision"
    extension: Optional[ModuleType]  # detlib._C when its operators are in use
    fallback_reason: Optional[str]  # the load error when torchvision's are


def _select_kernels() -> Kernels:
    try:
        extension = load_extension()
    except ImportError as e:
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            raise ImportError(f"{REQUIRE_ENV} is set and {e}") from e
        warnings.warn(
            f"detlib uses torchvision's NMS / ROIAlign kernels (same results) because {e} "
            f"Set {REQUIRE_ENV}=1 to make this an error.",
            RuntimeWarning,
            stacklevel=2,
        )
        import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)

        return Kernels(torch.ops.torchvision, "torchvision", None, str(e))
    # Autograd and fake kernels of torch.ops.detlib (the module the C++ library names as its own).
    from . import operators  # noqa: F401

    return Kernels(torch.ops.detlib, "detlib", extension, None)


KERNELS = _select_kernels()


def kernels_in_use() -> str:
    """One line naming the NMS / ROIAlign kernels in use, for logs and bug reports."""
    if KERNELS.extension is None:
        return f"torchvision (fallback: {KERNELS.fallback_reason})"
    backends = "CPU, CUDA" if KERNELS.extension.WITH_CUDA else "CPU only"
    return f"detlib ({backends}) from {KERNELS.extension.__file__}"

"""Loads `detlib._C`, the compiled NMS / ROIAlign ops, and refuses a missing or stale build."""
from types import ModuleType

import torch

# Must equal DETLIB_C_ABI_VERSION in csrc/detlib_ops.h.
EXPECTED_ABI_VERSION = 1

_BUILD_HINT = (
    "Build it from the repository root with `pip install --no-build-isolation -e .` "
    "(FORCE_CUDA=1 to also compile the CUDA kernels without a visible GPU)."
)


def load_extension() -> ModuleType:
    """Return `detlib._C`, raising ImportError with build instructions if it is absent or stale."""
    try:
        from detlib import _C
    except ImportError as e:
        raise ImportError(f"detlib._C (compiled NMS / ROIAlign ops) could not be imported: {e}. {_BUILD_HINT}") from e
    built_abi = getattr(_C, "ABI_VERSION", None)
    if built_abi != EXPECTED_ABI_VERSION:
        raise ImportError(
            f"detlib._C at {_C.__file__} is stale: it has ABI version {built_abi}, this source tree expects "
            f"{EXPECTED_ABI_VERSION}. {_BUILD_HINT}"
        )
    if _C.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"detlib._C at {_C.__file__} was built against torch {_C.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed. {_BUILD_HINT}"
        )
    return _C

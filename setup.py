"""Build and install detlib with its compiled ops, `detlib._C` (NMS and ROIAlign, csrc/).

    pip install --no-build-isolation -e .                 # C++; CUDA too when a GPU is visible
    FORCE_CUDA=1 pip install --no-build-isolation -e .    # also compile the CUDA kernels without a GPU
    FORCE_CUDA=0 pip install --no-build-isolation -e .    # C++ only, even with a GPU (quick local builds)

CUDA needs nvcc (CUDA_HOME or nvcc on PATH). Without a visible GPU the kernels are compiled for
TORCH_CUDA_ARCH_LIST, "9.0" by default. MAX_JOBS bounds the parallel compile jobs.
"""
import glob
import importlib.util
import os
import shutil

import torch
from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def locate_cuda_toolkit() -> None:
    """
    Point CUDA_HOME at a directory that really holds the toolkit. torch takes the parent of the nvcc
    on PATH, which is wrong when that nvcc is a wrapper script (here /usr/local/bin/nvcc execs
    /usr/local/cuda-13.0/bin/nvcc): the headers and libcudart would then not be found.
    """
    nvcc = shutil.which("nvcc")
    candidates = [
        os.environ.get("CUDA_HOME"),
        os.environ.get("CUDA_PATH"),
        os.path.dirname(os.path.dirname(nvcc)) if nvcc else None,
        "/usr/local/cuda",
    ]
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = root
            return


def nvidia_wheel_include_dirs() -> list:
    """Headers of the CUDA libraries pip installs with torch (cusparse.h, cublas_v2.h, ...), which
    torch's CUDA headers include and a minimal toolkit may lack."""
    spec = importlib.util.find_spec("nvidia")
    roots = spec.submodule_search_locations if spec is not None else []
    return sorted(d for root in roots for d in glob.glob(os.path.join(root, "*", "include")))


locate_cuda_toolkit()
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cuda_requested() -> bool:
    force = os.environ.get("FORCE_CUDA", "")
    if force not in ("", "0", "1"):
        raise SystemExit(f"FORCE_CUDA must be 0 or 1, got {force!r}")
    if force == "0":
        return False
    wanted = force == "1" or torch.cuda.is_available()
    if wanted and CUDA_HOME is None:
        message = "CUDA build requested but nvcc was not found: set CUDA_HOME or put nvcc on PATH"
        if force == "1":
            raise SystemExit(message)
        print(f"detlib setup: {message}; building the C++ ops only")
        return False
    return wanted


def sources(pattern: str) -> list:
    paths = glob.glob(os.path.join(HERE, "csrc", "**", pattern), recursive=True)
    return sorted(os.path.relpath(p, HERE) for p in paths)


def make_extension():
    with_cuda = cuda_requested()
    define_macros = [("DETLIB_TORCH_VERSION", f'"{torch.__version__}"')]
    compile_args = {"cxx": ["-O3", "-fopenmp"]}
    link_args = ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    cuda_sources = sources("*.cu") if with_cuda else []
    if cuda_sources:
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        define_macros.append(("WITH_CUDA", None))
        compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        include_dirs += nvidia_wheel_include_dirs()
        extension = CUDAExtension
    else:
        extension = CppExtension
    return extension(
        "detlib._C",
        sources("*.cpp") + cuda_sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


setup(
    name="detlib",
    version="0.1.0",
    description="Object detection research codebase: Faster / Mask R-CNN on ResNet + FPN",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    python_requires=">=3.9",
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)

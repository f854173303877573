"""Build and install detlib with its compiled ops, `detlib._C` (NMS, ROIAlign, deformable convolution: csrc/).

    pip install .                  # or -e; C++ always, CUDA too when nvcc is found
    FORCE_CUDA=1 pip install .     # CUDA required: fail when nvcc is missing
    FORCE_CUDA=0 pip install .     # C++ only, even with nvcc (quick local builds)
    python -m build --wheel --no-isolation

Build isolation (pip's default) builds against the torch already installed in the target environment
(build_backend/detlib_backend.py explains why); --no-build-isolation does the same without the detour.
CUDA needs nvcc (CUDA_HOME or nvcc on PATH). The GPU code is compiled for TORCH_CUDA_ARCH_LIST; unset, for the
visible GPU's architecture, or "9.0" without one: one architecture, so that local builds stay quick.
DETLIB_ALL_CUDA_ARCHS=1 (`make wheel`) builds a distributable wheel instead: code for every architecture of the
installed torch (torch.cuda.get_arch_list()) plus PTX for the newest. MAX_JOBS bounds the parallel compile jobs.
The repository's configs/ is copied into the package as detlib/model_zoo/configs when it is built.
"""

import glob
import importlib.util
import os
import re
import shutil
import subprocess

import torch
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

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
    missing = None
    if torch.version.cuda is None:
        missing = f"torch {torch.__version__} is a CPU-only build"
    elif CUDA_HOME is None:
        missing = "nvcc was not found: set CUDA_HOME or put nvcc on PATH"
    if missing and force == "1":
        raise SystemExit(f"FORCE_CUDA=1 but {missing}")
    if missing:
        print(f"detlib setup: {missing}; building the C++ ops only")
    # Without FORCE_CUDA, nvcc's presence decides: a GPU-less build machine still makes CUDA builds.
    return missing is None


def sources(pattern: str) -> list:
    paths = glob.glob(os.path.join(HERE, "csrc", "**", pattern), recursive=True)
    return sorted(os.path.relpath(p, HERE) for p in paths)


def nvcc_version() -> str:
    """ "13.0" from `nvcc --version`, recorded in the build for collect_env."""
    output = subprocess.run(
        [os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"release (\d+\.\d+)", output)
    return match.group(1) if match else "unknown"


def cuda_arch_names() -> str:
    """The GPU code the kernels are compiled for, e.g. "sm_80,sm_90,compute_90" (compute_* is PTX)."""
    flags = torch.utils.cpp_extension._get_cuda_arch_flags()
    codes = {code for flag in flags for group in re.findall(r"\bcode=\[?([\w,]+)", flag) for code in group.split(",")}
    return ",".join(sorted(codes))


def load_cuda_arches():
    """detlib/utils/cuda_arches.py, by path: importing the detlib package at build time is not wanted."""
    path = os.path.join(HERE, "detlib", "utils", "cuda_arches.py")
    spec = importlib.util.spec_from_file_location("detlib_build_cuda_arches", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def choose_cuda_arch_list() -> None:
    """Set TORCH_CUDA_ARCH_LIST when the user has not: every arch of torch for DETLIB_ALL_CUDA_ARCHS=1, else
    9.0 without a visible GPU (with one, torch compiles for it)."""
    if os.environ.get("DETLIB_ALL_CUDA_ARCHS", "") not in ("", "0"):
        if os.environ.get("TORCH_CUDA_ARCH_LIST"):
            raise SystemExit("DETLIB_ALL_CUDA_ARCHS=1 and TORCH_CUDA_ARCH_LIST are both set: choose one")
        arch_list = load_cuda_arches().distributable_arch_list(torch.cuda.get_arch_list())
        print(f"detlib setup: DETLIB_ALL_CUDA_ARCHS=1: TORCH_CUDA_ARCH_LIST={arch_list}")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    elif not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")


def make_extension():
    with_cuda = cuda_requested()
    define_macros = [("DETLIB_TORCH_VERSION", f'"{torch.__version__}"')]
    compile_args = {"cxx": ["-O3", "-fopenmp"]}
    link_args = ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    cuda_sources = sources("*.cu") if with_cuda else []
    if cuda_sources:
        choose_cuda_arch_list()
        define_macros += [
            ("WITH_CUDA", None),
            ("DETLIB_CUDA_VERSION", f'"{nvcc_version()}"'),
            ("DETLIB_CUDA_ARCHS", f'"{cuda_arch_names()}"'),
        ]
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


def runtime_requirements() -> list:
    """requirements.txt's runtime section, with torch and torchvision left unpinned: the extension is built
    against, and must run with, the torch already installed, whichever release that is."""
    with open(os.path.join(HERE, "requirements.txt")) as f:
        section = f.read().split("# Build and test.")[0]
    lines = [line.strip() for line in section.splitlines() if line.strip() and not line.startswith("#")]
    return [re.split(r"[=<>]", line)[0] if line.startswith("torch") else line for line in lines]


class BuildPyWithConfigs(build_py):
    """Ships the repository's configs/ in the package as detlib/model_zoo/configs, so that an installed
    wheel resolves model_zoo.get_config_file; the repository keeps the only copy in git."""

    def run(self):
        super().run()
        source = os.path.join(HERE, "configs")
        # An editable install finds the checkout's configs/ itself.
        if os.path.isdir(source) and not getattr(self, "editable_mode", False):
            target = os.path.join(self.build_lib, "detlib", "model_zoo", "configs")
            shutil.copytree(source, target, dirs_exist_ok=True)


setup(
    name="detlib",
    version="0.1.0",
    description="Object detection research codebase: Faster / Mask R-CNN on ResNet + FPN",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    python_requires=">=3.9",
    ext_modules=[make_extension()],
    install_requires=runtime_requirements(),
    # The Cityscapes evaluators run the official scripts (pyquaternion: imported by them); pip install
    # detlib[timm]: timm's models as backbones (detlib.modeling.backbone.timm_backbone).
    extras_require={"cityscapes": ["cityscapesscripts>=2.2", "pyquaternion"], "timm": ["timm>=0.9"]},
    cmdclass={"build_ext": BuildExtension, "build_py": BuildPyWithConfigs},
    zip_safe=False,
)

"""`python -m detlib.collect_env` runs and reports the versions and the NMS / ROIAlign kernels in use."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

import detlib
from detlib.collect_env import collect_env_info
from detlib.layers import _extension

REPO = Path(detlib.__file__).resolve().parents[1]


def rows(report: str) -> dict:
    """The report's "key  value" lines as a dict (keys are padded with at least two spaces)."""
    return {key.strip(): value.strip() for key, value in (line.split("  ", 1) for line in report.splitlines())}


def test_report_names_versions_and_the_extensions_build():
    report = rows(collect_env_info())
    assert report["PyTorch"].startswith(torch.__version__)
    assert torchvision.__version__.split("+")[0] == report["torchvision"]  # read from metadata, not imported
    assert report["PyTorch CUDA build"] == str(torch.version.cuda)
    assert report["numpy"] == np.__version__
    assert report["fvcore"] == importlib.metadata.version("fvcore")
    assert report["pycocotools"] == importlib.metadata.version("pycocotools")
    extension = _extension.load_extension()
    assert report["detlib._C"] == "loaded"
    assert report["NMS / ROIAlign kernels"].startswith("detlib (")
    assert report["detlib._C built against"] == f"torch {extension.TORCH_VERSION}, ABI version {extension.ABI_VERSION}"
    assert report["detlib._C compiler"].startswith(("gcc", "clang"))
    if extension.WITH_CUDA:
        assert "sm_" in report["detlib._C CUDA"]


def test_module_runs_and_names_the_fallback_kernels():
    environment = {k: v for k, v in os.environ.items() if k != "DETLIB_REQUIRE_EXT"}
    environment.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    hide = 'import sys, runpy; sys.modules["detlib._C"] = None; runpy.run_module("detlib.collect_env", run_name="__main__")'
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", hide], capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = rows(result.stdout)
    assert report["NMS / ROIAlign kernels"].startswith("torchvision (fallback: detlib._C (compiled NMS / ROIAlign ops)")
    assert report["detlib._C"] == "not loaded"
    assert report["PyTorch"].startswith(torch.__version__)


def test_report_names_the_cpu_kernel_family():
    report = rows(collect_env_info())["CPU kernels"]
    assert report.startswith(f"ATen {torch.backends.cpu.get_cpu_capability()};")
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), ":").split(":", 1)[1].split())
    if flags:
        assert f"AVX-512 BF16: {'yes' if 'avx512_bf16' in flags else 'no'}" in report
        assert f"AMX: {'yes' if 'amx_bf16' in flags else 'no'}" in report
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert f"oneDNN bfloat16: {'native' if native else 'not native'}" in report

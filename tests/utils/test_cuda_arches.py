"""The CUDA architectures a distributable build compiles for, and which GPUs a build runs on (nvcc's rules)."""

import re
import shutil
import subprocess

import pytest
import torch

from detlib.layers import _extension
from detlib.utils.cuda_arches import distributable_arch_list, gpu_runs_build, parse_arch


def test_every_torch_arch_and_ptx_for_the_newest():
    arches = ["sm_80", "sm_75", "sm_120", "sm_90", "sm_86", "sm_100"]  # torch 2.14 cu130's, shuffled
    assert distributable_arch_list(arches) == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    # An arch-specific target ("a") runs on its own GPU only: the PTX goes on the newest portable one.
    assert distributable_arch_list(["sm_80", "sm_90", "sm_90a"]) == "8.0;9.0+PTX;9.0a"
    assert distributable_arch_list(["sm_90", "compute_90"]) == "9.0+PTX"
    with pytest.raises(ValueError, match="no CUDA architectures"):
        distributable_arch_list([])
    with pytest.raises(ValueError, match="sm_XY"):
        parse_arch("ampere")


def test_the_list_is_what_torch_compiles_for(monkeypatch):
    """setup.py hands the list to torch's extension builder: the nvcc flags it makes carry every arch and the PTX."""
    if not torch.cuda.get_arch_list():
        pytest.skip("CPU-only torch")
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", distributable_arch_list(torch.cuda.get_arch_list()))
    codes = {code for flag in _get_cuda_arch_flags() for code in re.findall(r"\bcode=(\w+)", flag)}
    newest = max(torch.cuda.get_arch_list(), key=lambda name: parse_arch(name)[1:3])
    assert codes == set(torch.cuda.get_arch_list()) | {newest.replace("sm_", "compute_")}


def test_which_gpus_a_build_runs_on():
    build = ["sm_80", "sm_90"]
    assert gpu_runs_build((8, 0), build) and gpu_runs_build((8, 6), build)  # A100, RTX 3090: same major
    assert gpu_runs_build((8, 9), build)  # RTX 4090 runs sm_80 code
    assert not gpu_runs_build((7, 5), build)  # older than any
    assert not gpu_runs_build((10, 0), build) and not gpu_runs_build((12, 0), build)  # Blackwell: no PTX
    assert gpu_runs_build((12, 0), build + ["compute_90"])  # ... unless PTX is there for the driver to compile
    assert gpu_runs_build((9, 0), ["sm_90a"])  # "a" code runs on its own GPU only
    assert not gpu_runs_build((10, 0), ["sm_90a"])


def test_recorded_arches_are_the_ones_in_the_binary():
    """detlib._C's CUDA_ARCHS (what collect_env prints) against cuobjdump's listing of the extension's cubins."""
    extension = _extension.load_extension()
    cuobjdump = shutil.which("cuobjdump") or shutil.which("/usr/local/cuda/bin/cuobjdump")
    if not extension.WITH_CUDA or cuobjdump is None:
        pytest.skip("detlib._C has no CUDA code, or cuobjdump is not installed")
    listing = subprocess.run([cuobjdump, "--list-elf", extension.__file__], capture_output=True, text=True).stdout
    in_binary = set(re.findall(r"\.(sm_\d+a?)\.", listing))
    recorded = {name for name in extension.CUDA_ARCHS.split(",") if name.startswith("sm_")}
    assert in_binary == recorded, listing


def test_collect_env_warns_about_a_gpu_the_build_does_not_cover(monkeypatch):
    from types import SimpleNamespace

    from detlib import collect_env

    build = SimpleNamespace(WITH_CUDA=True, CUDA_ARCHS="sm_80,sm_90")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    capabilities = {0: (8, 6), 1: (12, 0)}  # an RTX 3090 (runs sm_80 code) and a Blackwell card (nothing to run)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capabilities[index])
    rows = collect_env._uncovered_gpu_rows(build)
    assert len(rows) == 1 and rows[0][0] == "WARNING"
    assert rows[0][1].startswith("GPU 1 (sm_120) is not among detlib._C's CUDA arches sm_80,sm_90")

"""
detlib's PEP 517 build backend: setuptools' own, except for where torch comes from.

detlib._C links against libtorch's C++ ABI, so it must be built with the very torch it will run with. Under
pip's default build isolation, `requires = ["torch"]` would install the newest torch from the index into a
throw-away environment (gigabytes, minutes, and a CUDA flavour chosen by the index rather than by the user)
and produce an extension that the installed torch refuses. Instead, when the environment being installed
into already has torch, this backend builds against that torch: it appends that environment's
site-packages to the end of sys.path, behind the isolated environment's setuptools. The build requirement
on torch is then only declared when the target environment has none, in which case the torch that pip
installs for the build is the one it resolves for the install too (the newest compatible release).
"""

import importlib.util
import site
import sysconfig

from setuptools import build_meta as _setuptools

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]


def _use_target_torch() -> bool:
    """Make the target environment's torch importable here; False when it has none."""
    if importlib.util.find_spec("torch") is not None:
        return True  # no isolation (--no-build-isolation, python -m build --no-isolation)
    # pip isolates a build by hiding the interpreter's site-packages from sys.path; sys.prefix still names
    # the environment being installed into. addsitedir also reads its .pth files (a venv that borrows
    # torch from another one through a .pth works too).
    for key in ("purelib", "platlib"):
        site.addsitedir(sysconfig.get_paths()[key])
    importlib.invalidate_caches()
    return importlib.util.find_spec("torch") is not None


def _torch_requirement() -> list:
    """
    The build requirements beyond pyproject.toml's: torch when the target environment lacks it. setuptools'
    own get_requires_* hooks are not consulted: they would execute setup.py, which imports torch, and
    setup.py declares no setup_requires for them to add.
    """
    return [] if _use_target_torch() else ["torch"]


def get_requires_for_build_wheel(config_settings=None):
    return _torch_requirement()


def get_requires_for_build_editable(config_settings=None):
    return _torch_requirement()


def get_requires_for_build_sdist(config_settings=None):
    return _torch_requirement()


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _use_target_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _use_target_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _use_target_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _use_target_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    _use_target_torch()
    return _setuptools.build_sdist(sdist_directory, config_settings)

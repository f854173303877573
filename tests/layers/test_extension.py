"""A missing or stale detlib._C is refused with an ImportError that says how to rebuild it."""
import sys

import pytest

import detlib
from detlib.layers import _extension


def test_current_build_loads():
    assert _extension.load_extension().ABI_VERSION == _extension.EXPECTED_ABI_VERSION


def test_missing_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "detlib._C", None)
    monkeypatch.delattr(detlib, "_C", raising=False)
    with pytest.raises(ImportError, match="pip install --no-build-isolation -e ."):
        _extension.load_extension()


def test_stale_abi(monkeypatch):
    monkeypatch.setattr(_extension.load_extension(), "ABI_VERSION", _extension.EXPECTED_ABI_VERSION - 1)
    with pytest.raises(ImportError, match="stale.*pip install"):
        _extension.load_extension()


def test_built_against_other_torch(monkeypatch):
    monkeypatch.setattr(_extension.load_extension(), "TORCH_VERSION", "0.0.1")
    with pytest.raises(ImportError, match="built against torch 0.0.1.*pip install"):
        _extension.load_extension()

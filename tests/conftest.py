"""
What every test shares: the registries as detlib defines them, and the Detectron2 parity case.

Registries (the `Registry` objects of detlib's modules, `DatasetCatalog`, `MetadataCatalog`) are
global: what a test or a module-scoped fixture registers would otherwise be seen by every later
test. Their name -> object maps are put back after each test and after each module. fvcore's
registries cannot unregister, hence the direct restore of the maps.
"""
import os
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.utils.registry import Registry

REPO = Path(__file__).resolve().parents[1]
# ../shared: Detectron2's reference outputs, next to the repository (see the case's README).
D2_CASE = REPO / ".." / "shared" / "parity" / "d2_case_a"


def _registry_maps() -> List[Dict]:
    """The name -> object dict of every registry loaded so far."""
    maps = [DatasetCatalog.data, MetadataCatalog.data]
    for name, module in list(sys.modules.items()):
        if name == "detlib" or name.startswith("detlib."):
            maps.extend(value._obj_map for value in vars(module).values() if isinstance(value, Registry))
    unique = {id(m): m for m in maps}
    return list(unique.values())


def _snapshot():
    return [(entries, dict(entries)) for entries in _registry_maps()]


def _restore(snapshot) -> None:
    for entries, saved in snapshot:
        entries.clear()
        entries.update(saved)


@pytest.fixture(autouse=True, scope="module")
def restore_registries_after_module():
    """Undo what a module's module-scoped fixtures registered (e.g. a user's loss)."""
    snapshot = _snapshot()
    yield
    _restore(snapshot)


@pytest.fixture(autouse=True)
def restore_registries():
    """Undo what a test registered."""
    snapshot = _snapshot()
    yield
    _restore(snapshot)


def require_parity_case() -> Path:
    """
    The Detectron2 parity case. Absent on a machine without ../shared, the test is skipped; in CI
    (`CI=true`), where it must be present, its absence fails the test instead of passing it silently.
    """
    if (D2_CASE / "config.yaml").is_file():
        return D2_CASE
    message = f"the Detectron2 parity case is not at {D2_CASE.resolve()}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must provide ../shared", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def d2_case() -> Path:
    """The directory of the Detectron2 parity case (see `require_parity_case`)."""
    return require_parity_case()

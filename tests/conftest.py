"""
What every test shares: the registries as detlib defines them, the Detectron2 parity case, and a
local HTTP file server (the only network the tests use).

Registries (the `Registry` objects of detlib's modules, `DatasetCatalog`, `MetadataCatalog`) are
global: what a test or a module-scoped fixture registers would otherwise be seen by every later
test. Their name -> object maps are put back after each test and after each module. fvcore's
registries cannot unregister, hence the direct restore of the maps.
"""

import os
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Set

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


class LocalFileServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1. Paths in `cut` announce their full length
    but send only half the bytes before closing the connection; `requests` counts GETs per path."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.cut: Set[str] = set()
        self.requests: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base_url + path

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def file_server() -> Iterator[LocalFileServer]:
    server = LocalFileServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def weights_cache(tmp_path, monkeypatch):
    """An empty download cache under tmp_path (`$DETLIB_CACHE`)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DETLIB_CACHE", str(cache))
    return cache

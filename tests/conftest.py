"""Fixtures shared across test directories: a local HTTP file server (the only network tests use)."""
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, Set

import pytest


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

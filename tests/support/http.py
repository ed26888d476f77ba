"""A local HTTP file server (stdlib http.server in a thread) serving a temporary directory.

    def test_x(http_files: HttpFiles) -> None:
        url = http_files.add("data.jsonl", b"...")     # -> http://127.0.0.1:PORT/data.jsonl
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@dataclasses.dataclass
class HttpFiles:
    root: pathlib.Path
    base_url: str

    def add(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.base_url}/{name}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@pytest.fixture
def http_files(tmp_path: pathlib.Path) -> Iterator[HttpFiles]:
    root = tmp_path / "http-root"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpFiles(root, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()

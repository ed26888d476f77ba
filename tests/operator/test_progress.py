"""fetch_progress against a real HTTP server (the trainer's /progress endpoint stand-in)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest
from finetune_operator.progress import fetch_progress

BODY = {"step": 40, "totalSteps": 160, "epoch": 0.5, "loss": 0.7123, "tokensPerSecond": 2750.5, "etaSeconds": 130, "stage": "training", "trainedTokens": 81920}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/progress":
            data = json.dumps(BODY).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_progress_from_a_live_endpoint(server: str) -> None:
    async def go() -> tuple[object, object, object]:
        async with aiohttp.ClientSession() as session:
            ok = await fetch_progress(session, server + "/progress")
            missing = await fetch_progress(session, server + "/nope")
            down = await fetch_progress(session, "http://127.0.0.1:9/progress")
            return ok, missing, down

    ok, missing, down = asyncio.run(go())
    assert ok is not None and ok.percent == 25.0 and ok.loss == 0.7123 and ok.trained_tokens == 81920  # type: ignore[attr-defined]
    assert missing is None and down is None

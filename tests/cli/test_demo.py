"""The README's first command, exactly as written: `make demo` (runs hack/demo.py after install).

Run: .venv/bin/python -m pytest tests/cli/test_demo.py   (~1 minute: a real MiniLM LoRA run)
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess

import pytest

from tests.cli.conftest import REPO

pytestmark = pytest.mark.slow


def test_readme_demo_command_trains_and_shows_the_loss(tmp_path: pathlib.Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^make demo\b", readme, re.M), "the README's quickstart must start with `make demo`"
    out = tmp_path / "demo"
    proc = subprocess.run(["make", "demo", f"DEMO_ARGS=--out {out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    for shown in ("$ ftctl validate", "$ ftctl run --local", "$ ftctl download", "every sha256 matches",
                  "loss by step", "demo finished"):
        assert shown in proc.stdout, shown
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "loss.png").stat().st_size > 5000
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = history[0]["loss"], manifest["metrics"]["loss"]
    assert last < first / 2, f"the demo's loss should fall clearly: {first} -> {last}"
    # the demo stops its S3 server: the process it printed is gone (ended and reaped, not left
    # running or a zombie) and its port refuses connections (not a timeout or another error)
    started = re.search(r"S3 server \(moto\) on http://127\.0\.0\.1:(\d+), pid (\d+)", proc.stdout)
    assert started, proc.stdout[:2000]
    port, pid = int(started.group(1)), int(started.group(2))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass

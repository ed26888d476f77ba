"""A real Prometheus (Debian's `prometheus` package) for tests that scrape metrics.

This module installs nothing: `make prometheus` (hack/install-prometheus.sh) does. The fixture
finds /usr/bin/prometheus (or $PROMETHEUS_BIN) and fails with that instruction when it is missing.

    def test_x(prometheus_binary: str, tmp_path) -> None:
        with Prometheus(prometheus_binary, tmp_path, targets=["127.0.0.1:9400"]) as prom:
            prom.wait_for("finetune_trainer_step > 0")
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
from types import TracebackType
from typing import Any

import pytest
import requests

from .ports import free_port, wait_for_port

DEFAULT_BIN = "/usr/bin/prometheus"


def find_prometheus() -> str | None:
    candidate = os.environ.get("PROMETHEUS_BIN") or DEFAULT_BIN
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("prometheus")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    found = find_prometheus()
    if not found:
        pytest.fail("Prometheus is not installed: run `make prometheus` (hack/install-prometheus.sh installs Debian's package)")
    return found


class Prometheus:
    """A Prometheus process scraping `targets` every `interval` seconds, with its own data dir."""

    def __init__(
        self,
        binary: str,
        workdir: pathlib.Path,
        targets: list[str] | None = None,
        interval: float = 1.0,
        job: str = "trainer",
        *,
        scrape_configs: list[dict[str, Any]] | None = None,
        listen_host: str = "127.0.0.1",
        wrap: list[str] | None = None,
    ) -> None:
        """Scrape static ``targets`` (as job ``job``), or the given ``scrape_configs`` (e.g.
        Kubernetes service discovery). ``wrap`` prefixes the command (``ip netns exec NS``) and
        ``listen_host`` is an address of that namespace."""
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.host = listen_host
        self.wrap = list(wrap or [])
        self.url = f"http://{listen_host}:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        if scrape_configs is None:
            target_list = ", ".join(f'"{t}"' for t in targets or [])
            self.config.write_text(
                "global:\n"
                f"  scrape_interval: {int(interval * 1000)}ms\n"
                f"  evaluation_interval: {int(interval * 1000)}ms\n"
                "scrape_configs:\n"
                f"  - job_name: {job}\n"
                "    honor_labels: true\n"  # keep the trainer's own `job` label (as a PodMonitor with honorLabels)
                f"    static_configs:\n      - targets: [{target_list}]\n"
            )
        else:
            import json

            ms = f"{int(interval * 1000)}ms"
            self.config.write_text(
                json.dumps({"global": {"scrape_interval": ms, "evaluation_interval": ms}, "scrape_configs": scrape_configs}, indent=2)
            )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def __enter__(self) -> Prometheus:
        self.process = subprocess.Popen(
            [
                *self.wrap,
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, timeout=30, host=self.host)
        except TimeoutError:
            self.__exit__(None, None, None)
            raise RuntimeError(f"Prometheus did not start: {self.log.read_text()[-2000:]}") from None
        deadline = time.monotonic() + 30
        while requests.get(f"{self.url}/-/ready", timeout=5).status_code != 200:  # TSDB still opening
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus is not ready after 30s: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        resp.raise_for_status()
        body = resp.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll until the query returns at least one series."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus query {expr!r} returned nothing within {timeout}s (log: {self.log})")

    def targets(self) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.url}/api/v1/targets", timeout=10)
        resp.raise_for_status()
        return list(resp.json()["data"]["activeTargets"])

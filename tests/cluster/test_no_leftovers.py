"""No control-plane process outlives whoever started it: a pytest session that ends normally,
one stopped by SIGTERM or Ctrl-C (SIGINT), one killed with SIGKILL, `python -m tests.cluster
up`/`down`, and a start whose first choice of port was taken meanwhile.

Run: .venv/bin/python -m pytest tests/cluster/test_no_leftovers.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.binaries import REPO_ROOT
from tests.cluster.cluster import ControlPlane
from tests.cluster.process import pid_alive, pid_cmdline

pytestmark = pytest.mark.cluster

PROBE = Path(__file__).with_name("leak_probe.py")
COMPONENTS = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}


def _survivors(record: dict[str, Any]) -> dict[str, int]:
    """Components whose PID still runs the same command line."""
    return {
        name: pid
        for name, pid in record["pids"].items()
        if pid_alive(pid) and pid_cmdline(pid) == record["argv"][name]
    }


def _wait_gone(record: dict[str, Any], timeout: float = 15.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while (left := _survivors(record)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _probe(tmp_path: Path, *, hang: bool) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "probe.json"
    env = {
        **os.environ,
        "FTOP_CLUSTER": "own",
        "FTOP_PROBE_OUT": str(out),
        "FTOP_PROBE_HANG": "1" if hang else "0",
        "FTOP_KEEP_CLUSTER_DIR": "1" if hang else "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROBE)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, out


def _wait_record(proc: subprocess.Popen[str], out: Path, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not out.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"probe did not start a cluster:\n{proc.communicate()[0]}")
        time.sleep(0.2)
    record: dict[str, Any] = json.loads(out.read_text())
    assert set(record["pids"]) == COMPONENTS
    # the check used afterwards must see every component while it runs
    assert set(_survivors(record)) == COMPONENTS
    return record


def test_a_session_that_ends_normally_leaves_no_process(tmp_path: Path) -> None:
    proc, out = _probe(tmp_path, hang=False)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    record = json.loads(out.read_text())
    assert _survivors(record) == {}
    assert not Path(record["state_dir"]).exists()  # cleaned after a passing session


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_session_stops_every_component(tmp_path: Path, sig: int) -> None:
    proc, out = _probe(tmp_path, hang=True)
    record = _wait_record(proc, out)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output
    assert _wait_gone(record) == {}, output
    # an orderly stop (SIGTERM from the harness), not only PDEATHSIG's SIGKILL
    apiserver_log = Path(record["state_dir"], "logs", "kube-apiserver.log").read_text()
    assert "[graceful-termination] shutdown event" in apiserver_log
    shutil.rmtree(record["state_dir"], ignore_errors=True)


def test_sigkill_of_the_owner_takes_the_components_down(tmp_path: Path) -> None:
    proc, out = _probe(tmp_path, hang=True)
    record = _wait_record(proc, out)
    proc.kill()  # no Python cleanup runs: PR_SET_PDEATHSIG must do it
    proc.communicate(timeout=30)
    assert _wait_gone(record) == {}
    shutil.rmtree(record["state_dir"], ignore_errors=True)


def test_cli_up_status_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    cli = [sys.executable, "-m", "tests.cluster"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args, "--dir", str(state_dir)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )

    record: dict[str, Any] | None = None
    up = run("up", "--nodes", "1")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "control plane up in" in up.stdout
        assert (state_dir / "admin.kubeconfig").is_file()
        cp = ControlPlane.attach(state_dir)
        assert cp is not None and cp.healthy()  # still running after the CLI exited
        status = run("status")
        assert status.returncode == 0, status.stdout
        assert json.loads(status.stdout)["healthy"] is True
        record = {"pids": cp.pids(), "argv": {n: c.argv for n, c in cp.components.items()}}
        assert set(_survivors(record)) == COMPONENTS
    finally:
        down = run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert record is not None
    assert _survivors(record) == {}
    assert run("status").returncode == 1


def test_a_port_taken_meanwhile_is_retried_with_new_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process binds etcd's port between choosing and binding it: start retries."""
    import socket

    from tests.cluster import cluster as cluster_mod

    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real_free_port = cluster_mod.free_port
    handed_out: list[int] = []

    def free_port() -> int:
        port = taken if not handed_out else real_free_port()
        handed_out.append(port)
        return port

    monkeypatch.setattr(cluster_mod, "free_port", free_port)
    cp = ControlPlane(tmp_path / "cluster", nodes=1)
    try:
        cp.start()
        assert cp.healthy()
        assert cp.ports["etcd"] != taken
        assert handed_out.count(taken) == 1 and len(handed_out) == 12  # two attempts
        record = {"pids": cp.pids(), "argv": {n: c.argv for n, c in cp.components.items()}}
        assert set(_survivors(record)) == COMPONENTS
    finally:
        cp.stop()
        blocker.close()
    assert _survivors(record) == {}

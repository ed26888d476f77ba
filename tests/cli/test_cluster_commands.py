"""ftctl's cluster commands against the real control plane (tests/cluster): submit, list,
status, logs, download, with the CRDs from crds/ installed and an admin kubeconfig.

Run: .venv/bin/python -m pytest tests/cli/test_cluster_commands.py

The operator is not running here (tests/chart and tests/operator run it); where a command
needs a status, the test writes it through the status subresource as the operator would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from finetune_trainer import contract

from tests.cli.conftest import REPO, VALID_JOB
from tests.cluster.cluster import ControlPlane
from tests.support.s3 import S3Server

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crds(kube_cluster: ControlPlane) -> ControlPlane:
    for path in sorted((REPO / "crds").glob("finetune.dev_*.yaml")):
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         "crd/finetunejobs.finetune.dev", "crd/clusterfinetuneruntimes.finetune.dev")
    return kube_cluster


def ftctl(cluster: ControlPlane, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ftctl", *args], env={**cluster.env(), **(env or {})},
                          capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def manifest(tmp_path: pathlib.Path, name: str, namespace: str, **spec: Any) -> pathlib.Path:
    doc = json.loads(json.dumps(VALID_JOB))
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"].update(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_submit_list_status(crds: ControlPlane, kube_namespace: str, tmp_path: pathlib.Path) -> None:
    path = manifest(tmp_path, "sentiment", kube_namespace)
    proc = ftctl(crds, "submit", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"finetunejob.finetune.dev/sentiment created in {kube_namespace}" in proc.stdout
    again = ftctl(crds, "submit", str(path))
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = ftctl(crds, "list", "-n", kube_namespace)
    assert listed.returncode == 0 and "sentiment" in listed.stdout
    everywhere = ftctl(crds, "list", "-A")
    assert kube_namespace in everywhere.stdout
    _patch_status(crds, kube_namespace, "sentiment", {
        "phase": "Running", "workers": {"ready": 1, "total": 1},
        "progress": {"step": 30, "totalSteps": 120, "percent": 25.0, "loss": 0.4321, "tokensPerSecond": 2750.0, "etaSeconds": 95},
    })
    listed = ftctl(crds, "list", "-n", kube_namespace)
    assert "Running" in listed.stdout and "25%" in listed.stdout and "0.4321" in listed.stdout
    status = ftctl(crds, "status", "sentiment", "-n", kube_namespace, "--once")
    assert status.returncode == 0, status.stderr
    for text in ("Running", "step 30/120", "loss 0.4321", "2750 tok/s", "ETA 1m35s", "1/1 ready"):
        assert text in status.stdout, f"{text!r} not in:\n{status.stdout}"
    raw = ftctl(crds, "status", "sentiment", "-n", kube_namespace, "-o", "json")
    assert json.loads(raw.stdout)["progress"]["step"] == 30


def test_api_server_rejection_is_reported_with_the_field(crds: ControlPlane, kube_namespace: str,
                                                          tmp_path: pathlib.Path) -> None:
    # metadata.namespace that does not exist: the API server, not ftctl, says no
    path = manifest(tmp_path, "nowhere", "no-such-namespace-" + uuid.uuid4().hex[:6])
    proc = ftctl(crds, "submit", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot create FineTuneJob" in proc.stderr and "namespaces" in proc.stderr and "not found" in proc.stderr


def test_status_logs_of_unknown_job(crds: ControlPlane, kube_namespace: str) -> None:
    for cmd in (["status", "ghost", "--once"], ["logs", "ghost"], ["download", "ghost", "/tmp/x"]):
        proc = ftctl(crds, *cmd, "-n", kube_namespace)
        assert proc.returncode == 2, cmd
        assert f"FineTuneJob {kube_namespace}/ghost not found" in proc.stderr


def test_logs_before_pods_exist_and_download_before_success(crds: ControlPlane, kube_namespace: str,
                                                            tmp_path: pathlib.Path) -> None:
    ftctl(crds, "submit", str(manifest(tmp_path, "early", kube_namespace)))
    logs = ftctl(crds, "logs", "early", "-n", kube_namespace)
    assert logs.returncode == 2 and "has no rank-0 trainer pod yet" in logs.stderr
    dl = ftctl(crds, "download", "early", str(tmp_path / "d"), "-n", kube_namespace)
    assert dl.returncode == 2 and "has no output yet" in dl.stderr


def test_download_by_job_name_from_its_status(crds: ControlPlane, kube_namespace: str, tmp_path: pathlib.Path,
                                              s3_server: S3Server) -> None:
    """A Succeeded job's status names its manifest; download fetches and verifies from there."""
    bucket = f"out-{uuid.uuid4().hex[:8]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    weights = b"\x00adapter-bytes" * 100
    history = "".join(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 11))
    files = {"adapter/adapter_model.safetensors": weights, contract.METRICS_HISTORY_NAME: history.encode()}
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"job/{key}", Body=body)
    s3.put_object(Bucket=bucket, Key="job/manifest.json", Body=json.dumps({"files": [
        {"path": k, "sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in files.items()]}).encode())
    path = manifest(tmp_path, "done", kube_namespace, output={"uri": f"s3://{bucket}/job/", "endpoint": s3_server.endpoint})
    assert ftctl(crds, "submit", str(path)).returncode == 0
    _patch_status(crds, kube_namespace, "done", {"phase": "Succeeded", "output": {
        "adapterUri": f"s3://{bucket}/job/adapter/", "manifestUri": f"s3://{bucket}/job/manifest.json"}})
    env = {k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL"}  # endpoint from the job's spec
    proc = ftctl(crds, "download", "done", str(tmp_path / "dl"), "-n", kube_namespace, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "dl" / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert (tmp_path / "dl" / "loss.png").stat().st_size > 1000


def _patch_status(cluster: ControlPlane, namespace: str, name: str, status: dict[str, Any]) -> None:
    cluster.kubectl("patch", "finetunejob", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[str]) -> Iterator[None]:
    """A background ftctl that is killed if the test leaves before it exited."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_follows_progress_live_until_the_job_ends(crds: ControlPlane, kube_namespace: str,
                                                         tmp_path: pathlib.Path) -> None:
    """In a terminal, `ftctl status NAME` redraws a progress bar from .status.progress and exits
    when the phase is terminal (0 for Succeeded)."""
    import time

    assert ftctl(crds, "submit", str(manifest(tmp_path, "live", kube_namespace))).returncode == 0
    _patch_status(crds, kube_namespace, "live", {"phase": "Running", "progress": {"step": 5, "totalSteps": 50}})
    env = {**crds.env(), "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "status", "live", "-n", kube_namespace, "--interval", "0.3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with _reaped(proc):
        for i, step in enumerate((20, 35, 50)):
            time.sleep(6.0 if i == 0 else 1.5)  # the first wait covers the CLI's start-up
            assert proc.poll() is None, "status exited before the job ended"
            _patch_status(crds, kube_namespace, "live", {"progress": {"step": step, "totalSteps": 50, "loss": 1.0 / step}})
        _patch_status(crds, kube_namespace, "live", {"phase": "Succeeded"})
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    import re

    stdout = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stdout)  # terminal escape codes
    for seen in ("step 5/50", "step 20/50", "step 35/50", "step 50/50", "Succeeded"):
        assert seen in stdout, f"{seen!r} never drawn"


def test_wait_returns_when_the_job_gets_there_and_fails_when_it_cannot(crds: ControlPlane, kube_namespace: str,
                                                                        tmp_path: pathlib.Path) -> None:
    """`ftctl wait` like `kubectl wait`: 0 once the phase or condition is there; 1 with the job's
    message when it ended elsewhere or time ran out; a bad --for is a user error (2)."""
    import time

    ns = kube_namespace
    for name in ("waits", "fails", "slow"):
        assert ftctl(crds, "submit", str(manifest(tmp_path, name, ns))).returncode == 0
    _patch_status(crds, ns, "waits", {"phase": "Running"})
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "wait", "waits", "-n", ns, "--for", "phase=Succeeded", "--interval", "0.3", "--timeout", "60s"],
                            env=crds.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with _reaped(proc):
        time.sleep(4.0)
        assert proc.poll() is None, "wait returned before the job got there"
        _patch_status(crds, ns, "waits", {"phase": "Succeeded"})
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "finetunejob.finetune.dev/waits phase=Succeeded" in stdout, stderr
    _patch_status(crds, ns, "fails", {"phase": "Failed", "message": "worker 0 exited with code 3 (model or dataset error)",
                                      "conditions": [{"type": "Validated", "status": "True", "reason": "ValidationPassed", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    failed = ftctl(crds, "wait", "fails", "-n", ns, "--timeout", "30s")
    assert failed.returncode == 1 and "ended Failed without phase=Succeeded: worker 0 exited with code 3" in failed.stderr, failed.stderr
    validated = ftctl(crds, "wait", "fails", "-n", ns, "--for", "condition=Validated", "--timeout", "30s")
    assert validated.returncode == 0, validated.stderr
    slow = ftctl(crds, "wait", "slow", "-n", ns, "--timeout", "2s", "--interval", "0.5")
    assert slow.returncode == 1 and "timed out after 2s waiting for phase=Succeeded" in slow.stderr, slow.stderr
    bad = ftctl(crds, "wait", "slow", "-n", ns, "--for", "ready")
    assert bad.returncode == 2 and "--for" in bad.stderr, bad.stderr


def test_suspend_resume_and_delete(crds: ControlPlane, kube_namespace: str, tmp_path: pathlib.Path) -> None:
    from kubernetes import client

    ns = kube_namespace
    assert ftctl(crds, "submit", str(manifest(tmp_path, "held", ns))).returncode == 0
    api = client.CustomObjectsApi(crds.api_client())

    def spec() -> dict[str, Any]:
        return dict(api.get_namespaced_custom_object(contract.GROUP, contract.VERSION, ns, contract.PLURAL_JOB, "held")["spec"])

    proc = ftctl(crds, "suspend", "held", "-n", ns)
    assert proc.returncode == 0 and spec()["suspend"] is True, proc.stderr
    proc = ftctl(crds, "resume", "held", "-n", ns)
    assert proc.returncode == 0 and spec()["suspend"] is False, proc.stderr
    proc = ftctl(crds, "delete", "held", "-n", ns)
    assert proc.returncode == 0 and f"finetunejob.finetune.dev/held deleted from {ns}" in proc.stdout, proc.stderr
    gone = ftctl(crds, "delete", "held", "-n", ns)
    assert gone.returncode == 2 and "not found" in gone.stderr, gone.stderr

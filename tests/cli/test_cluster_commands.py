"""ftctl's cluster commands against the real control plane (tests/cluster): submit, list,
status, describe, logs, download, with the CRDs from crds/ installed and an admin kubeconfig (and
ServiceAccount tokens without rights for the access errors).

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
import time
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
    assert json.loads(raw.stdout)["status"]["progress"]["step"] == 30


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

    # without matplotlib (it is only in the `cli` extra) the download is whole, only the plot is not
    hide = tmp_path / "no-matplotlib"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    bare = ftctl(crds, "download", "done", str(tmp_path / "dl2"), "-n", kube_namespace, env={**env, "PYTHONPATH": str(hide)})
    assert bare.returncode == 0, bare.stdout + bare.stderr
    assert (tmp_path / "dl2" / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert not (tmp_path / "dl2" / "loss.png").exists()
    assert "pip install 'finetune-operator[cli]'" in bare.stderr, bare.stderr


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


# --- describe, logs --rank/--attempt, list/status output, namespaces, access -------------------
def _pod(name: str, job: str, *, rank: int | None, attempt: int, component: str = contract.COMPONENT_TRAINER,
         node: str | None = None) -> dict[str, Any]:
    """A pod labelled as the operator labels a job's pods (no operator runs here)."""
    labels = {contract.LABEL_JOB_NAME: job, contract.LABEL_COMPONENT: component, contract.LABEL_ATTEMPT: str(attempt)}
    annotations = {} if rank is None else {contract.ANNOTATION_JOB_COMPLETION_INDEX: str(rank)}
    spec: dict[str, Any] = {"containers": [{"name": "trainer", "image": "trainer:test"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": spec}


def _event(name: str, job: dict[str, Any], *, type_: str, reason: str, message: str, at: str,
           kind: str = contract.KIND_JOB) -> dict[str, Any]:
    meta = job["metadata"]
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
            "involvedObject": {"apiVersion": contract.API_VERSION, "kind": kind, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"] if kind == contract.KIND_JOB else None},
            "type": type_, "reason": reason, "message": message, "source": {"component": "finetune-operator"},
            "firstTimestamp": at, "lastTimestamp": at, "count": 1}


def _job_with_pods(crds: ControlPlane, ns: str, tmp_path: pathlib.Path, name: str) -> dict[str, Any]:
    """A job in its second attempt: attempt 0 (rank 0) and attempt 1 (ranks 0, 1) trainer pods,
    a validator pod, two events about the job and one about something else of the same name."""
    from kubernetes import client

    assert ftctl(crds, "submit", str(manifest(tmp_path, name, ns))).returncode == 0
    _patch_status(crds, ns, name, {
        "phase": "Running", "message": "attempt 1 of 3 running", "attempt": 1, "restarts": 1,
        "workers": {"ready": 2, "total": 2},
        "progress": {"step": 40, "totalSteps": 160, "loss": 0.75, "tokensPerSecond": 1200.0, "etaSeconds": 300},
        "conditions": [
            {"type": "Validated", "status": "True", "reason": "ValidationPassed", "message": "dataset ok",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Running", "status": "True", "reason": "WorkersReady", "message": "2/2 workers",
             "lastTransitionTime": "2026-01-01T00:05:00Z"}]})
    api = crds.api_client()
    core = client.CoreV1Api(api)
    node = crds.node_names[0]
    for body in (_pod(f"{name}-a0-r0", name, rank=0, attempt=0, node=node),
                 _pod(f"{name}-a1-r0", name, rank=0, attempt=1, node=node),
                 _pod(f"{name}-a1-r1", name, rank=1, attempt=1, node=node),
                 _pod(f"{name}-validate", name, rank=None, attempt=0, component=contract.COMPONENT_VALIDATOR, node=node),
                 _pod(f"other-{name}", "other", rank=0, attempt=0)):
        core.create_namespaced_pod(ns, body)
    job = client.CustomObjectsApi(api).get_namespaced_custom_object(contract.GROUP, contract.VERSION, ns, contract.PLURAL_JOB, name)
    for body in (_event(f"{name}.2", job, type_="Warning", reason="WorkerFailed", message="worker 1 exited with code 4", at="2026-01-01T00:04:00Z"),
                 _event(f"{name}.1", job, type_="Normal", reason="Validated", message="validation passed", at="2026-01-01T00:01:00Z"),
                 _event(f"{name}.x", job, type_="Warning", reason="NotMine", message="about a pod", at="2026-01-01T00:02:00Z", kind="Pod")):
        core.create_namespaced_event(ns, body)
    return dict(job)


def test_describe_shows_status_conditions_events_and_pods(crds: ControlPlane, kube_namespace: str,
                                                          tmp_path: pathlib.Path) -> None:
    ns = kube_namespace
    _job_with_pods(crds, ns, tmp_path, "desc")
    proc = ftctl(crds, "describe", "desc", "-n", ns, env={"COLUMNS": "220"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for seen in ("Running", "attempt 1 of 3 running", "Attempt", "1 (restarts 1", "2/2 ready",
                 "step 40/160", "25%", "loss 0.7500", "ETA 5m00s",
                 "ValidationPassed", "dataset ok", "WorkersReady",
                 "WorkerFailed", "worker 1 exited with code 4", "finetune-operator"):
        assert seen in text, f"{seen!r} not in:\n{text}"
    assert "NotMine" not in text, "an event about another object of the same name"
    # events oldest first (kubectl describe), after the conditions and before the pods
    assert text.index("Conditions") < text.index("Validated  ") < text.index("WorkerFailed") < text.index("Pods")
    pods = {line.split()[0]: line.split() for line in text[text.index("Pods"):].splitlines()[2:] if line.strip()}
    assert set(pods) == {"desc-a0-r0", "desc-a1-r0", "desc-a1-r1", "desc-validate"}, text
    node = crds.node_names[0]
    # NAME COMPONENT ATTEMPT RANK PHASE RESTARTS NODE AGE
    assert pods["desc-a1-r1"][1:4] == ["trainer", "1", "1"] and pods["desc-a1-r1"][6] == node
    assert pods["desc-a0-r0"][1:4] == ["trainer", "0", "0"]
    assert pods["desc-validate"][1:4] == ["validator", "0", "-"]
    ghost = ftctl(crds, "describe", "ghost", "-n", ns)
    assert ghost.returncode == 2 and f"FineTuneJob {ns}/ghost not found" in ghost.stderr


def test_logs_picks_the_pod_by_rank_and_attempt(crds: ControlPlane, kube_namespace: str, tmp_path: pathlib.Path) -> None:
    """The fake nodes serve no logs, so the API server's error (which quotes the kubelet URL it
    tried) shows which pod, and which options, `ftctl logs` asked for."""
    ns = kube_namespace
    _job_with_pods(crds, ns, tmp_path, "lg")

    def asked(*args: str) -> str:
        proc = ftctl(crds, "logs", "lg", "-n", ns, *args)
        assert proc.returncode == 1, proc.stderr  # the kubelet of a fake node cannot be reached
        return proc.stderr

    default = asked()  # rank 0 of the newest attempt, as before --rank/--attempt existed
    assert "pod/lg-a1-r0 (attempt 1, rank 0)" in default and f"/containerLogs/{ns}/lg-a1-r0/trainer" in default, default
    assert f"/containerLogs/{ns}/lg-a1-r1/" in asked("--rank", "1")
    assert f"/containerLogs/{ns}/lg-a0-r0/" in asked("--attempt", "0")
    assert f"/containerLogs/{ns}/lg-validate/" in asked("--validator")
    options = asked("--rank", "1", "--previous", "--since", "10m", "--tail", "5")
    assert f"/containerLogs/{ns}/lg-a1-r1/trainer?" in options
    for param in ("previous=true", "sinceSeconds=600", "tailLines=5"):
        assert param in options, options
    missing = ftctl(crds, "logs", "lg", "-n", ns, "--rank", "1", "--attempt", "0")
    assert missing.returncode == 2, missing.stderr
    assert ("has no rank-1 trainer pod in attempt 0 (its trainer pods: attempt 0 rank 0, attempt 1 rank 0, "
            "attempt 1 rank 1)") in missing.stderr
    for bad in (["--since", "ten"], ["--validator", "--rank", "1"], ["--rank", "-1"]):
        proc = ftctl(crds, "logs", "lg", "-n", ns, *bad)
        assert proc.returncode == 2, (bad, proc.stderr)


def test_list_formats_and_selector(crds: ControlPlane, kube_namespace: str, tmp_path: pathlib.Path) -> None:
    ns = kube_namespace
    for name, team in (("alpha", "a"), ("beta", "b")):
        path = manifest(tmp_path, name, ns)
        doc = yaml.safe_load(path.read_text())
        doc["metadata"]["labels"] = {"team": team}
        path.write_text(yaml.safe_dump(doc))
        assert ftctl(crds, "submit", str(path)).returncode == 0
    _patch_status(crds, ns, "alpha", {"phase": "Running", "attempt": 2, "restarts": 2, "workers": {"ready": 1, "total": 1}})
    as_json = ftctl(crds, "list", "-n", ns, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert listed["kind"] == "List" and [j["metadata"]["name"] for j in listed["items"]] == ["alpha", "beta"]
    assert listed["items"][0]["status"]["attempt"] == 2 and listed["items"][0]["spec"]["model"]["uri"]
    as_yaml = yaml.safe_load(ftctl(crds, "list", "-n", ns, "-o", "yaml").stdout)
    assert [j["metadata"]["name"] for j in as_yaml["items"]] == ["alpha", "beta"]
    team_a = json.loads(ftctl(crds, "list", "-n", ns, "-l", "team=a", "-o", "json").stdout)
    assert [j["metadata"]["name"] for j in team_a["items"]] == ["alpha"]
    not_a = ftctl(crds, "list", "-n", ns, "--selector", "team!=a")
    assert "beta" in not_a.stdout and "alpha" not in not_a.stdout
    nobody = ftctl(crds, "list", "-n", ns, "-l", "team=z", "-o", "json")
    assert nobody.returncode == 0 and json.loads(nobody.stdout)["items"] == []
    nobody_text = ftctl(crds, "list", "-n", ns, "-l", "team=z")
    assert nobody_text.returncode == 0 and nobody_text.stdout == "" and "matching 'team=z'" in nobody_text.stderr
    wide = ftctl(crds, "list", "-n", ns, "-o", "wide", env={"COLUMNS": "250"})
    header = wide.stdout.splitlines()[0].split()
    assert header[-5:] == ["ATTEMPT", "RESTARTS", "WORKERS", "METHOD", "MODEL"], wide.stdout
    alpha = next(line.split() for line in wide.stdout.splitlines() if line.split()[:1] == ["alpha"])
    assert alpha[-5:] == ["2", "2", "1/1", "lora", "hf://sentence-transformers/all-MiniLM-L6-v2"], wide.stdout
    for bad in (["-o", "xml"], ["-l", "team in (a"]):
        proc = ftctl(crds, "list", "-n", ns, *bad)
        assert proc.returncode == 2, (bad, proc.stderr)


def test_status_whole_object_and_when_stdout_is_not_a_terminal(crds: ControlPlane, kube_namespace: str,
                                                               tmp_path: pathlib.Path) -> None:
    """`-o json|yaml` prints the whole FineTuneJob; piped (not a TTY), `status` prints once and
    exits 1 for a Failed job, else 0 (also while Running); `--once` always exits 0."""
    import time

    ns = kube_namespace
    for name in ("going", "broke"):
        assert ftctl(crds, "submit", str(manifest(tmp_path, name, ns))).returncode == 0
    _patch_status(crds, ns, "going", {"phase": "Running", "progress": {"step": 3, "totalSteps": 9}})
    _patch_status(crds, ns, "broke", {"phase": "Failed", "message": "worker 0 exited with code 2"})
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        proc = ftctl(crds, "status", "going", "-n", ns, "-o", fmt)
        assert proc.returncode == 0, proc.stderr
        obj = load(proc.stdout)
        assert obj["kind"] == "FineTuneJob" and obj["metadata"]["name"] == "going"
        assert obj["spec"]["output"]["uri"] == VALID_JOB["spec"]["output"]["uri"]
        assert obj["status"]["progress"]["step"] == 3
    assert ftctl(crds, "status", "broke", "-n", ns, "-o", "json").returncode == 0
    started = time.monotonic()
    running = ftctl(crds, "status", "going", "-n", ns)  # stdout is a pipe: no live view
    assert running.returncode == 0 and running.stdout.count("step 3/9") == 1, running.stdout + running.stderr
    assert time.monotonic() - started < 60
    failed = ftctl(crds, "status", "broke", "-n", ns)
    assert failed.returncode == 1 and "worker 0 exited with code 2" in failed.stdout, failed.stdout + failed.stderr
    assert ftctl(crds, "status", "broke", "-n", ns, "--once").returncode == 0
    assert ftctl(crds, "status", "going", "-n", ns, "-o", "table").returncode == 2


def test_submit_refuses_a_namespace_other_than_the_manifests(crds: ControlPlane, kube_namespace: str,
                                                             tmp_path: pathlib.Path) -> None:
    from kubernetes import client

    ns = kube_namespace
    path = manifest(tmp_path, "pinned", ns)
    proc = ftctl(crds, "submit", str(path), "-n", "default")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f'the namespace from the provided object "{ns}" does not match the namespace "default". '
            f"You must pass '--namespace={ns}' to perform this operation.") in proc.stderr
    api = client.CustomObjectsApi(crds.api_client())
    for where in (ns, "default"):
        items = api.list_namespaced_custom_object(contract.GROUP, contract.VERSION, where, contract.PLURAL_JOB)["items"]
        assert "pinned" not in [j["metadata"]["name"] for j in items], where
    same = ftctl(crds, "submit", str(path), "--namespace", ns)
    assert same.returncode == 0 and f"created in {ns}" in same.stdout, same.stderr
    # a manifest without metadata.namespace goes where -n says
    loose = manifest(tmp_path, "loose", ns)
    doc = yaml.safe_load(loose.read_text())
    del doc["metadata"]["namespace"]
    loose.write_text(yaml.safe_dump(doc))
    assert ftctl(crds, "submit", str(loose), "-n", ns).returncode == 0


def test_access_errors_name_the_verb_resource_and_namespace(crds: ControlPlane, kube_namespace: str,
                                                            tmp_path: pathlib.Path) -> None:
    """A ServiceAccount token without rights (403) and an invalid token (401): exit 2, one
    message saying what was asked and where, no traceback."""
    from tests.cluster.cluster import write_kubeconfig

    ns = kube_namespace
    assert ftctl(crds, "submit", str(manifest(tmp_path, "secret", ns))).returncode == 0
    crds.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    crds.kubectl("create", "serviceaccount", "reader", "-n", ns)
    crds.kubectl("create", "role", "read-jobs", "--verb=get", "--resource=finetunejobs.finetune.dev", "-n", ns)
    crds.kubectl("create", "rolebinding", "reader-jobs", "--role=read-jobs", f"--serviceaccount={ns}:reader", "-n", ns)
    nobody = {"KUBECONFIG": str(crds.service_account_kubeconfig(ns, "nobody"))}
    path = str(manifest(tmp_path, "mine", ns))
    jobs = "finetunejobs.finetune.dev"
    for args, asked in ((["list", "-n", ns], f"list {jobs} in namespace {ns!r}"),
                        (["list", "-A"], f"list {jobs} cluster-wide"),
                        (["status", "secret", "-n", ns], f"get {jobs} in namespace {ns!r}"),
                        (["describe", "secret", "-n", ns], f"get {jobs} in namespace {ns!r}"),
                        (["logs", "secret", "-n", ns], f"get {jobs} in namespace {ns!r}"),
                        (["delete", "secret", "-n", ns], f"delete {jobs} in namespace {ns!r}"),
                        (["suspend", "secret", "-n", ns], f"patch {jobs} in namespace {ns!r}"),
                        (["submit", path], f"create {jobs} in namespace {ns!r}")):
        proc = ftctl(crds, *args, env=nobody)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert f"not allowed to {asked} (403 Forbidden)" in proc.stderr, (args, proc.stderr)
        assert f"system:serviceaccount:{ns}:nobody" in proc.stderr, proc.stderr
    reader = {"KUBECONFIG": str(crds.service_account_kubeconfig(ns, "reader"))}
    logs = ftctl(crds, "logs", "secret", "-n", ns, env=reader)
    assert logs.returncode == 2 and f"not allowed to list pods in namespace {ns!r}" in logs.stderr, logs.stderr
    described = ftctl(crds, "describe", "secret", "-n", ns, env={**reader, "COLUMNS": "400"})
    assert described.returncode == 0, described.stderr  # the job is readable; events and pods are not
    assert f"Events: not allowed to list events in namespace {ns!r}" in described.stdout, described.stdout
    assert f"Pods: not allowed to list pods in namespace {ns!r}" in described.stdout, described.stdout
    bad_token = write_kubeconfig(tmp_path / "bad.kubeconfig", server=crds.api_url, ca_file=crds.pki.ca_crt,
                                 user="forged", token="not-a-token", namespace=ns)
    proc = ftctl(crds, "list", "-n", ns, env={"KUBECONFIG": str(bad_token)})
    assert proc.returncode == 2, proc.stderr
    assert f"rejected the credentials (401 Unauthorized) trying to list {jobs} in namespace {ns!r}" in proc.stderr


def test_download_refuses_a_manifest_replaced_after_the_job(crds: ControlPlane, kube_namespace: str,
                                                             tmp_path: pathlib.Path, s3_server: S3Server) -> None:
    """status.output.sha256 (the trainer's manifestSha256) pins manifest.json: the right one
    downloads; one rewritten since (still self-consistent) is refused, exit 1, nothing written."""
    bucket = f"pin-{uuid.uuid4().hex[:8]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    weights = b"weights" * 50
    s3.put_object(Bucket=bucket, Key="job/adapter/a.bin", Body=weights)
    original = json.dumps({"files": [{"path": "adapter/a.bin", "sha256": hashlib.sha256(weights).hexdigest(),
                                      "size": len(weights)}]}).encode()
    s3.put_object(Bucket=bucket, Key="job/manifest.json", Body=original)
    ns = kube_namespace
    output = {"uri": f"s3://{bucket}/job/", "endpoint": s3_server.endpoint}
    assert ftctl(crds, "submit", str(manifest(tmp_path, "pinned", ns, output=output))).returncode == 0
    _patch_status(crds, ns, "pinned", {"phase": "Succeeded", "output": {
        "manifestUri": f"s3://{bucket}/job/manifest.json", "sha256": hashlib.sha256(original).hexdigest()}})
    env = {k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL"}
    good = ftctl(crds, "download", "pinned", str(tmp_path / "good"), "-n", ns, env=env)
    assert good.returncode == 0 and "its own sha256 matches the job's status" in good.stdout, good.stdout + good.stderr
    assert (tmp_path / "good" / "adapter" / "a.bin").read_bytes() == weights
    assert not list((tmp_path / "good").rglob("*.part"))
    other = b"other weights"
    s3.put_object(Bucket=bucket, Key="job/adapter/a.bin", Body=other)
    s3.put_object(Bucket=bucket, Key="job/manifest.json", Body=json.dumps({"files": [
        {"path": "adapter/a.bin", "sha256": hashlib.sha256(other).hexdigest(), "size": len(other)}]}).encode())
    swapped = ftctl(crds, "download", "pinned", str(tmp_path / "swapped"), "-n", ns, env=env)
    assert swapped.returncode == 1, swapped.stdout + swapped.stderr
    assert "does not match the job's status.output.sha256" in swapped.stderr
    assert not (tmp_path / "swapped").exists() or not any((tmp_path / "swapped").rglob("*"))


def test_list_watch_prints_a_row_for_every_change(crds: ControlPlane, kube_namespace: str, tmp_path: pathlib.Path) -> None:
    """`ftctl list --watch`, like `kubectl get -w`: the table, then one row per change (created,
    progressing, deleted) as the API server reports it, until Ctrl-C, which exits 0."""
    import queue
    import signal
    import threading

    ns = kube_namespace
    ftctl(crds, "submit", str(manifest(tmp_path, "before", ns)))
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "list", "-n", ns, "--watch"], env={**crds.env(), "COLUMNS": "160"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

    def expect(*words: str, timeout: float = 30) -> str:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            if all(w in line for w in words):
                return line
        raise AssertionError(f"no line with {words}; saw {seen}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")  # type: ignore[union-attr]

    with _reaped(proc):
        assert "NAME" in expect("NAME", "PHASE")
        expect("before", "Pending")  # the list
        ftctl(crds, "submit", str(manifest(tmp_path, "after", ns)))
        expect("after", "Pending")  # ADDED
        _patch_status(crds, ns, "after", {"phase": "Running", "progress": {"step": 3, "totalSteps": 12, "percent": 25.0, "loss": 0.5}})
        row = expect("after", "Running")
        assert "25%" in row and "0.5" in row, row
        ftctl(crds, "delete", "before", "-n", ns)
        expect("before", "Deleted")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0

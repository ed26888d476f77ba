"""Running the operator against the real control plane, as a ServiceAccount with exactly the
RBAC of operator/finetune_operator/rbac.yaml, and driving its pods through kwok.

`operator` (session fixture): installs crds/, the ServiceAccount and its
ClusterRole(Binding), then runs `python -m finetune_operator.main` with a TokenRequest kubeconfig
for that ServiceAccount. `Kube` bundles the admin API clients and wait/annotate helpers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator import constants as c
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from tests.cluster import kwok
from tests.cluster.cluster import ControlPlane, free_port
from tests.operator.helpers import REPO

ct = c.contract
OPERATOR_NAMESPACE = "ftop-system"
OPERATOR_SA = "finetune-operator"
RBAC_FILE = REPO / "operator" / "finetune_operator" / "rbac.yaml"
TEST_IMAGE = "registry.invalid/finetune-trainer:test"
#: Leader election in the tests: a replacement for a SIGKILLed operator waits out the Lease, so it
#: is shorter than the 15 s default (and long enough for a loaded 2-core machine to renew).
LEASE_ARGS = ("--lease-seconds", "8", "--renew-deadline", "6", "--retry-period", "1")


class Kube:
    """Admin API clients plus polling helpers used by the integration tests."""

    def __init__(self, cluster: ControlPlane) -> None:
        self.cluster = cluster
        self.api = cluster.api_client()
        self.core = k8s.CoreV1Api(self.api)
        self.batch = k8s.BatchV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)

    # --- FineTuneJobs ---------------------------------------------------------------------------
    def create_ftj(self, namespace: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"apiVersion": ct.API_VERSION, "kind": ct.KIND_JOB, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        if annotations:
            body["metadata"]["annotations"] = annotations
        return dict(self.custom.create_namespaced_custom_object(ct.GROUP, ct.VERSION, namespace, ct.PLURAL_JOB, body))

    def ftj(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(ct.GROUP, ct.VERSION, namespace, ct.PLURAL_JOB, name))

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(ct.GROUP, ct.VERSION, namespace, ct.PLURAL_JOB, name, {"spec": spec})

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.ftj(namespace, name).get("status") or {})

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        return next((x for x in self.status(namespace, name).get("conditions", []) if x["type"] == type_), {})

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait(lambda: self.status(namespace, name).get("phase") == phase and self.status(namespace, name), f"{name} in phase {phase}", timeout, lambda: self.status(namespace, name))

    # --- children ---------------------------------------------------------------------------------
    def pods(self, namespace: str, selector: str = "") -> list[Any]:
        return list(self.core.list_namespaced_pod(namespace, label_selector=selector).items)

    def trainer_pods(self, namespace: str, job: str, attempt: int | None = None) -> list[Any]:
        sel = f"{ct.LABEL_JOB_NAME}={job},{ct.LABEL_COMPONENT}={ct.COMPONENT_TRAINER}"
        if attempt is not None:
            sel += f",{ct.LABEL_ATTEMPT}={attempt}"
        return [p for p in self.pods(namespace, sel) if p.metadata.deletion_timestamp is None]

    def jobs(self, namespace: str) -> list[Any]:
        return list(self.batch.list_namespaced_job(namespace).items)

    def job(self, namespace: str, name: str) -> Any | None:
        try:
            return self.batch.read_namespaced_job(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def set_result(self, namespace: str, pod: str, result: str, exit_code: int | None = None) -> None:
        kwok.set_pod_result(self.core, namespace, pod, result, exit_code=exit_code)

    def wait_others_gone(self, namespace: str, timeout: float = 120) -> None:
        """Wait until the namespaces of earlier tests are deleted: the operator's counters are
        shared by every job it runs, and a job torn down with its namespace may still move them."""

        def gone() -> bool:
            return not [n for n in self.core.list_namespace().items if n.metadata.name.startswith("test-") and n.metadata.name != namespace]

        self.wait(gone, "earlier tests' namespaces to be deleted", timeout)

    def pass_validation(self, namespace: str, job: str, timeout: float = 60) -> None:
        name = f"{job}-validate"
        self.wait(lambda: any(p.metadata.name == name and p.status.phase == "Running" for p in self.pods(namespace)), f"validation pod {name} running", timeout)
        self.set_result(namespace, name, kwok.SUCCEEDED)

    def wait_running_pods(self, namespace: str, job: str, count: int, attempt: int | None = None, timeout: float = 60) -> list[Any]:
        def ready() -> list[Any] | None:
            pods = [p for p in self.trainer_pods(namespace, job, attempt) if p.status.phase == "Running"]
            return pods if len(pods) == count else None

        return self.wait(ready, f"{count} running trainer pods of {job}", timeout)  # type: ignore[no-any-return]

    @staticmethod
    def wait(check: Callable[[], Any], what: str, timeout: float = 60, show: Callable[[], Any] | None = None, interval: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except ApiException as err:
                if err.status != 404:
                    raise
                last = None
            if last:
                return last
            time.sleep(interval)
        detail = show() if show else last
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {detail}")


class OperatorProcess:
    """The operator, run as the ServiceAccount with the rbac.yaml ClusterRole only."""

    def __init__(self, cluster: ControlPlane, log_dir: Path) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.liveness_port = 0
        self.starts = 0
        self.identity = ""
        self.kubeconfig = cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SA)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(
        self,
        resync_seconds: float | None = None,
        identity: str | None = None,
        wait_leader: bool = True,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """Start a replica; by default wait until it holds the leader Lease (a standby answers
        /healthz too, with leader false)."""
        self.starts += 1
        self.metrics_port, self.liveness_port = free_port(), free_port()
        full_env = {
            **self.cluster.env(self.kubeconfig),
            "FINETUNE_OPERATOR_TRAINER_IMAGE": TEST_IMAGE,
            "FINETUNE_OPERATOR_DEFAULT_RUNTIME": DEFAULT_RUNTIME,
            # pods of a lost node are let go after 5 s past their grace, not 60 (kwok pods go at once otherwise)
            "FINETUNE_OPERATOR_UNCONFIRMED_DELETION_SECONDS": "5",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        argv = [
            sys.executable, "-m", "finetune_operator.main",
            "--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1",
            "--liveness-port", str(self.liveness_port),
            "--leader-election-namespace", OPERATOR_NAMESPACE, *LEASE_ARGS, *extra,
        ]
        # The identity is the User-Agent suffix the API server's audit log records for each write.
        self.identity = identity or f"{self.log_dir.name}-{self.starts}-{uuid.uuid4().hex[:6]}"
        argv += ["--identity", self.identity]
        if resync_seconds is not None:
            argv += ["--resync-seconds", str(resync_seconds)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        Kube.wait(self.healthy, "operator liveness endpoint", 60, self.tail)
        if wait_leader:
            Kube.wait(self.is_leader, "operator holding the leader Lease", 60, self.tail)

    def _health(self) -> dict[str, Any] | None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited ({self.proc.returncode if self.proc else None}):\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return dict(json.loads(r.read())) if r.status == 200 else None
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        return self._health() is not None

    def is_leader(self) -> bool:
        health = self._health()
        return bool(health and health.get("leader"))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        """SIGKILL: no cleanup, the Lease not released (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process freezes with its caches and its queued work (a stalled node)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def writes(self, cluster: ControlPlane, since: str = "") -> list[dict[str, Any]]:
        """This replica's writes as the API server's audit log recorded them (since an RFC 3339
        time in the API server's clock, microseconds)."""
        agent = f"{c.FIELD_MANAGER}/{self.identity}"
        return [e for e in cluster.audit_events() if e.get("userAgent") == agent and e.get("requestReceivedTimestamp", "") >= since]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


#: The default runtime of the test operator (FINETUNE_OPERATOR_DEFAULT_RUNTIME), made by `install`:
#: no limits, image overrides allowed, no image of its own (the operator's default, TEST_IMAGE).
DEFAULT_RUNTIME = "test-default"


def install(cluster: ControlPlane) -> None:
    """CRDs, operator namespace + ServiceAccount + ClusterRole(Binding), the default runtime."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.finetune.dev", "crd/clusterfinetuneruntimes.finetune.dev")
    role = yaml.safe_load(RBAC_FILE.read_text())
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}},
        role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role["metadata"]["name"]},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}],
        },
        {"apiVersion": ct.API_VERSION, "kind": ct.KIND_RUNTIME, "metadata": {"name": DEFAULT_RUNTIME}, "spec": {"allowImageOverride": True}},
    ]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs))


@pytest.fixture(scope="session")
def kube(kube_cluster: ControlPlane) -> Kube:
    return Kube(kube_cluster)


@pytest.fixture(scope="session")
def ftop(kube_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install(kube_cluster)
    proc = OperatorProcess(kube_cluster, tmp_path_factory.mktemp("operator"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\n[tests.operator] operator log ({proc.log_path}), last lines:\n{proc.tail(20)}", file=sys.stderr)



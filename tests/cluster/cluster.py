"""Start, attach to and stop a local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok with fake nodes, all on 127.0.0.1 with free ports.

Used by ``tests.cluster.fixtures`` (pytest) and ``python -m tests.cluster`` (shell).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from tests.cluster import binaries, pki
from tests.cluster.process import Component, tail

HERE = Path(__file__).resolve().parent
KWOK_STAGES = HERE / "kwok-stages.yaml"
DEFAULT_STATE_DIR = binaries.REPO_ROOT / ".cluster"
STATE_FILE = "state.json"
ADMIN_KUBECONFIG = "admin.kubeconfig"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
FAKE_NODE_LABEL = "finetune.dev/fake-node"
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.1/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# stop order: the reverse of start order
COMPONENT_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The control plane failed to start; the message carries the tail of every log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> Path:
    """Write a self-contained kubeconfig (certificates inlined) and return its path."""
    creds = []
    if client_cert is not None and client_key is not None:
        creds.append(f"    client-certificate-data: {_b64(client_cert)}")
        creds.append(f"    client-key-data: {_b64(client_key)}")
    if token is not None:
        creds.append(f"    token: {token}")
    text = "\n".join(
        [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            "- name: finetune-test",
            "  cluster:",
            f"    server: {server}",
            f"    certificate-authority-data: {_b64(ca_file)}",
            "users:",
            f"- name: {user}",
            "  user:",
            *creds,
            "contexts:",
            f"- name: {user}@finetune-test",
            "  context:",
            "    cluster: finetune-test",
            f"    user: {user}",
            f"    namespace: {namespace}",
            f"current-context: {user}@finetune-test",
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


# ---- owned clusters are stopped on exit and on SIGTERM/SIGHUP ------------------------------
_OWNED: list[ControlPlane] = []
_OWNED_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _stop_owned() -> None:
    with _OWNED_LOCK:
        owned = list(_OWNED)
    for cp in owned:
        cp.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop_owned()
    previous = _PREVIOUS_HANDLERS.get(signum)
    if callable(previous):
        previous(signum, frame)
    raise SystemExit(128 + signum)


_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    atexit.register(_stop_owned)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            _PREVIOUS_HANDLERS[sig] = signal.getsignal(sig)
            signal.signal(sig, _on_signal)
    _HANDLERS_INSTALLED = True


#: Namespace whose ServiceAccounts' writes the API server records in its audit log
#: (``ControlPlane.audit_log``): the operator's, in the tests.
AUDITED_NAMESPACE = "ftop-system"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "omitManagedFields": True,
    "rules": [
        {
            "level": "Metadata",
            "userGroups": [f"system:serviceaccounts:{AUDITED_NAMESPACE}"],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"level": "None"},
    ],
}


class CommandError(subprocess.CalledProcessError):
    """A tool (kubectl, helm) that failed: its message says what the tool said, not only its code."""

    def __str__(self) -> str:
        said = (self.stderr or self.output or "").strip()
        return f"{super().__str__()}\n{said[-2000:]}" if said else super().__str__()


class ControlPlane:
    """A control plane rooted in ``state_dir`` (PKI, etcd data, logs, kubeconfig, state.json)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        nodes: int = 2,
        bin_dir: Path | None = None,
        advertise_address: str | None = None,
    ) -> None:
        """``advertise_address``: an address of this machine that a real node's pods reach (the
        host end of ``tests.cluster.node``'s veth). The API server then binds to it instead of
        127.0.0.1, publishes it in the ``kubernetes`` Service's endpoints, authorizes kubelets
        (Node authorizer + NodeRestriction) and reaches them on their InternalIP."""
        self.state_dir = state_dir.resolve()
        self.advertise_address = advertise_address
        self.node_count = nodes
        self._bin_dir = bin_dir
        self.components: dict[str, Component] = {}
        self.ports: dict[str, int] = {}
        self.owned = False  # True when this Python process must stop it
        self.startup_seconds: float | None = None
        self.pki = pki.Pki(self.state_dir / "pki")

    # ---- paths and addresses -------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = binaries.ensure_built()
        return self._bin_dir

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (group system:masters)."""
        return self.state_dir / ADMIN_KUBECONFIG

    @property
    def api_host(self) -> str:
        return self.advertise_address or "127.0.0.1"

    @property
    def api_url(self) -> str:
        return f"https://{self.api_host}:{self.ports['apiserver']}"

    @property
    def kubelet_client_crt(self) -> Path:
        return self.pki.directory / "apiserver-kubelet-client.crt"

    @property
    def kubelet_client_key(self) -> Path:
        return self.pki.directory / "apiserver-kubelet-client.key"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def node_names(self) -> list[str]:
        return [f"kwok-node-{i}" for i in range(self.node_count)]

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    # ---- HTTP to the API server with the admin certificate -------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        return ctx

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One admin request to the API server; returns the decoded JSON (or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self._ssl_context(), timeout=5) as resp:
            raw = resp.read().decode()
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def readyz(self) -> bool:
        try:
            return bool(self.request("GET", "/readyz") == "ok")
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    @property
    def audit_log(self) -> Path:
        """One JSON line per write by a ServiceAccount of AUDITED_NAMESPACE (user agent, verb,
        object, response code, timestamps), written by the API server itself."""
        return self.log_dir / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    # ---- start ----------------------------------------------------------------------------
    def _argv(self) -> dict[str, list[str]]:
        b, p, k = self.bin_dir, self.ports, self.pki
        policy = self.state_dir / "audit-policy.json"
        policy.write_text(json.dumps(AUDIT_POLICY))
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        peer_url = f"http://127.0.0.1:{p['etcd_peer']}"
        kubeconfig = str(self.kubeconfig)
        if self.advertise_address:
            apiserver_net = [
                f"--bind-address={self.advertise_address}",
                f"--advertise-address={self.advertise_address}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={self.kubelet_client_crt}",
                f"--kubelet-client-key={self.kubelet_client_key}",
            ]
        else:
            apiserver_net = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--authorization-mode=RBAC",
                "--endpoint-reconciler-type=none",  # loopback cannot be an Endpoints address
            ]
        return {
            "etcd": [
                str(b / "etcd"),
                "--name=finetune-test",
                f"--data-dir={self.state_dir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=finetune-test={peer_url}",
                "--unsafe-no-fsync",  # test data: durability is not the point, speed is
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                *apiserver_net,
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                f"--tls-cert-file={k.apiserver_crt}",
                f"--tls-private-key-file={k.apiserver_key}",
                f"--client-ca-file={k.ca_crt}",
                "--anonymous-auth=false",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={k.sa_pub}",
                f"--service-account-signing-key-file={k.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
                "--v=1",
                # klog buffers for 5 s by default; a component SIGKILLed after a slow shutdown on a
                # loaded machine would lose its last lines (the ones that explain a failure).
                "--log-flush-frequency=200ms",
            ],
            "kube-controller-manager": [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['controller_manager']}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={k.sa_key}",
                f"--root-ca-file={k.ca_crt}",
                f"--cluster-signing-cert-file={k.ca_crt}",
                f"--cluster-signing-key-file={k.ca_key}",
                "--cluster-name=finetune-test",
                "--profiling=false",
                "--v=1",
            ],
            "kube-scheduler": [
                str(b / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            "kwok": [
                str(b / "kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=" + "=".join(FAKE_NODE_ANNOTATION),
                f"--server-address=127.0.0.1:{p['kwok']}",
                "--node-ip=10.96.0.10",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
            ],
        }

    def start(self, *, detach: bool = False, timeout: float = 120.0) -> ControlPlane:
        """Start every component and wait until the cluster can run pods.

        ``detach=False``: the processes belong to this Python process and are stopped at exit,
        on SIGTERM/SIGHUP, and (PDEATHSIG) when it dies. ``detach=True``: they outlive it.
        A free port taken by someone else between choosing and binding it (other control
        planes start concurrently) is retried with new ports, twice at most.
        """
        for attempt in range(3):
            try:
                return self._start_once(detach=detach, timeout=timeout)
            except ClusterError as exc:
                if attempt == 2 or "address already in use" not in str(exc):
                    raise
                eprint(f"[tests.cluster] port clash, retrying with new ports: {exc.args[0][:200]}")
        raise AssertionError("unreachable")

    def _start_once(self, *, detach: bool, timeout: float) -> ControlPlane:
        self.bin_dir  # noqa: B018 - a cold build (minutes) happens here, outside the timing
        t0 = time.monotonic()
        self.components = {}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("etcd-data", "pki", "apiserver-certs"):
            _rmtree(self.state_dir / stale)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):
            old.unlink()
        self.owned = not detach
        if self.owned:
            _install_handlers()
            with _OWNED_LOCK:
                _OWNED.append(self)
        try:
            extra = (f"IP:{self.advertise_address}",) if self.advertise_address else ()
            pki.generate(self.pki.directory, extra_sans=extra)
            if self.advertise_address:
                pki.client_cert(
                    self.pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver"
                )
            self.ports = {
                name: free_port()
                for name in (
                    "etcd",
                    "etcd_peer",
                    "apiserver",
                    "controller_manager",
                    "scheduler",
                    "kwok",
                )
            }
            write_kubeconfig(
                self.kubeconfig,
                server=self.api_url,
                ca_file=self.pki.ca_crt,
                user="admin",
                client_cert=self.pki.admin_crt,
                client_key=self.pki.admin_key,
            )
            argv = self._argv()
            deadline = t0 + timeout

            self._launch("etcd", argv["etcd"], detach)
            self._wait("etcd /health", self._etcd_healthy, deadline, ("etcd",))
            self._launch("kube-apiserver", argv["kube-apiserver"], detach)
            self._wait("kube-apiserver /readyz", self.readyz, deadline, ("etcd", "kube-apiserver"))
            for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self._launch(name, argv[name], detach)
            self._create_nodes()
            self._wait(
                "controller-manager /healthz",
                lambda: _https_ok(self.ports["controller_manager"], "/healthz"),
                deadline,
                ("kube-controller-manager",),
            )
            self._wait(
                "scheduler /healthz",
                lambda: _https_ok(self.ports["scheduler"], "/healthz"),
                deadline,
                ("kube-scheduler",),
            )
            self._wait("fake nodes Ready", self._nodes_ready, deadline, ("kwok",))
            self._wait(
                "default ServiceAccount and kube-root-ca.crt",
                self._sa_ready,
                deadline,
                ("kube-controller-manager",),
            )
            self.startup_seconds = time.monotonic() - t0
            self._write_state()
        except BaseException:
            self.stop()  # a half-started cluster is never left behind, detached or not
            raise
        return self

    def _launch(self, name: str, argv: Sequence[str], detach: bool) -> None:
        comp = Component(name, argv, self.log_dir / f"{name}.log")
        comp.start(detach=detach)
        self.components[name] = comp

    def _wait(
        self, what: str, ready: Callable[[], bool], deadline: float, watch: Sequence[str]
    ) -> None:
        while True:
            for name in watch:
                comp = self.components.get(name)
                if comp is not None and not comp.alive():
                    raise ClusterError(
                        f"{name} exited (code {comp.exit_code()}) while waiting for {what}\n"
                        + self.diagnostics()
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}\n" + self.diagnostics())
            time.sleep(0.2)

    def _etcd_healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.ports['etcd']}/health"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _create_nodes(self) -> None:
        for name in self.node_names:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
                    "labels": {
                        "type": "kwok",
                        FAKE_NODE_LABEL: "true",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                    },
                },
            }
            self.request("POST", "/api/v1/nodes", node)

    def _nodes_ready(self) -> bool:
        try:
            items = self.request("GET", "/api/v1/nodes")["items"]
        except (urllib.error.URLError, OSError):
            return False
        ready = {
            n["metadata"]["name"]
            for n in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        }
        return ready >= set(self.node_names)

    def _sa_ready(self) -> bool:
        try:
            self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            self.request("GET", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
        except (urllib.error.URLError, OSError):
            return False
        return True

    # ---- state file (for `python -m tests.cluster` and fixture reuse) --------------------
    def _write_state(self) -> None:
        state = {
            "api_url": self.api_url,
            "advertise_address": self.advertise_address,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "nodes": self.node_names,
            "ports": self.ports,
            "startup_seconds": self.startup_seconds,
            "started_by_pid": os.getpid(),
            "detached": not self.owned,
            "components": {
                name: {"pid": c.pid, "argv": c.argv, "log": str(c.log_path)}
                for name, c in self.components.items()
            },
        }
        path = self.state_dir / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2))
        path.with_suffix(".tmp").replace(path)

    @classmethod
    def attach(cls, state_dir: Path = DEFAULT_STATE_DIR) -> ControlPlane | None:
        """The live control plane described by ``state_dir/state.json``, or None."""
        try:
            state = json.loads((state_dir / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        cp = cls(
            state_dir,
            nodes=len(state["nodes"]),
            bin_dir=Path(state["bin_dir"]),
            advertise_address=state.get("advertise_address"),
        )
        cp.ports = {k: int(v) for k, v in state["ports"].items()}
        cp.startup_seconds = state.get("startup_seconds")
        for name, c in state["components"].items():
            cp.components[name] = Component.adopt(name, int(c["pid"]), c["argv"], Path(c["log"]))
        return cp

    def alive(self) -> dict[str, bool]:
        return {name: c.alive() for name, c in self.components.items()}

    def healthy(self) -> bool:
        return bool(self.components) and all(self.alive().values()) and self.readyz()

    # ---- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every component by PID, etcd last; safe to call more than once.

        SIGTERM goes to all clients of etcd at once, SIGKILL to whatever is left 10 s later.
        """
        clients = [
            self.components[n] for n in reversed(COMPONENT_ORDER[1:]) if n in self.components
        ]
        for comp in clients:
            comp.signal(signal.SIGTERM)
        for comp in clients:
            comp.stop()  # waits; SIGKILL after its timeout
        if "etcd" in self.components:
            self.components["etcd"].stop()
        with _OWNED_LOCK:
            if self in _OWNED:
                _OWNED.remove(self)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()

    def pids(self) -> dict[str, int]:
        return {n: c.pid for n, c in self.components.items() if c.pid is not None}

    # ---- diagnostics ----------------------------------------------------------------------
    def diagnostics(self, lines: int = 30) -> str:
        parts = []
        for name in COMPONENT_ORDER:
            comp = self.components.get(name)
            log = comp.log_path if comp is not None else self.log_dir / f"{name}.log"
            state = "not started" if comp is None else ("running" if comp.alive() else "exited")
            parts.append(f"----- {name} ({state}), last {lines} lines of {log} -----")
            parts.append(tail(log, lines) or "(empty)")
        return "\n".join(parts)

    # ---- helpers for tests ----------------------------------------------------------------
    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """os.environ with KUBECONFIG set (admin unless another kubeconfig is given); kubectl's
        discovery cache and helm's cache/config/data go under the state directory, not ~."""
        tools = self.state_dir / "tool-cache"
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "KUBECACHEDIR": str(tools / "kube"),
            "HELM_CACHE_HOME": str(tools / "helm-cache"),
            "HELM_CONFIG_HOME": str(tools / "helm-config"),
            "HELM_DATA_HOME": str(tools / "helm-data"),
        }

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (admin unless ``kubeconfig`` is given)."""
        return self._run("kubectl", args, kubeconfig, input, check, timeout)

    def helm(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster."""
        return self._run("helm", args, kubeconfig, None, check, timeout)

    def _run(
        self,
        tool: str,
        args: Sequence[str],
        kubeconfig: Path | None,
        input: str | None,
        check: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.tool(tool)), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(kubeconfig),
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr)
        return proc

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin (or the given) kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    @contextlib.contextmanager
    def namespace(self, prefix: str = "test", labels: dict[str, str] | None = None) -> Iterator[str]:
        """A fresh namespace (with ``labels``, e.g. Pod Security ones), deleted (without
        waiting) afterwards."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        metadata: dict[str, Any] = {"name": name}
        if labels:
            metadata["labels"] = dict(labels)
        self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata},
        )
        try:
            yield name
        finally:
            with contextlib.suppress(urllib.error.URLError, OSError):
                self.request("DELETE", f"/api/v1/namespaces/{name}")

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        path: Path | None = None,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Mint a token for ServiceAccount ``namespace/name`` (TokenRequest API) and write a
        kubeconfig that authenticates with it; the ServiceAccount must exist."""
        from tests.cluster.serviceaccount import service_account_kubeconfig

        return service_account_kubeconfig(
            self, namespace, name, path=path, expiration_seconds=expiration_seconds
        )

    def run_as_service_account(
        self, namespace: str, name: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` with KUBECONFIG pointing at a kubeconfig for the ServiceAccount."""
        kubeconfig = self.service_account_kubeconfig(namespace, name)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        result: subprocess.CompletedProcess[str] = subprocess.run(
            list(argv), env={**self.env(kubeconfig), **kwargs.pop("env", {})}, **kwargs
        )
        return result


def _https_ok(port: int, path: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def new_state_dir() -> Path:
    """A private directory for a cluster owned by this process (logs survive a failure)."""
    return Path(tempfile.mkdtemp(prefix="ftop-cluster-"))


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)

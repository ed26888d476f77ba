"""Kueue's controller manager (sigs.k8s.io/kueue/cmd/kueue, built by hack/build-kueue.sh) run
against a test control plane, with its CRDs and admission webhooks.

The API server runs on this host, so Kueue's webhooks are registered with ``clientConfig.url``
(https://127.0.0.1:PORT/...) and a serving certificate signed by the cluster CA; only the
webhooks of Kueue's own API and of the enabled frameworks (``batch/job``) are registered (the
upstream manifests also list pods, deployments, ... whose webhooks would then be no-ops on every
pod). The CRDs get Kueue's v1beta1 <-> v1beta2 conversion webhook the same way.

Kueue with ``internalCertManagement.enable: false`` reads a metrics certificate from the fixed
path /etc/kueue/metrics/certs (cmd/kueue/main.go). Instead of writing into /etc, the manager runs
in a private mount namespace (``unshare --mount``) where /etc is an overlay whose upper layer is
a tmpfs; the certificate exists only in that namespace. Without root, a user namespace is added
(``--user --map-root-user``), which needs unprivileged user namespaces.

    from tests.cluster.kueue import Kueue
    kq = Kueue(cluster).start()      # CRDs, config, manager, webhooks; waits until they answer
    ...
    kq.stop()                         # webhooks removed first, then the manager stopped
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import pki
from tests.cluster.binaries import REPO_ROOT, BuildError
from tests.cluster.cluster import ClusterError, ControlPlane, free_port, write_kubeconfig
from tests.cluster.process import Component, tail

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-kueue.sh"
API_GROUP = "kueue.x-k8s.io"
API_VERSION = "kueue.x-k8s.io/v1beta2"
CONFIG_API_VERSION = "config.kueue.x-k8s.io/v1beta2"
NAMESPACE = "kueue-system"
MUTATING_NAME = "kueue-mutating-webhook-configuration"
VALIDATING_NAME = "kueue-validating-webhook-configuration"
#: Labels Kueue reads on a Job (pkg/controller/constants).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PREBUILT_WORKLOAD_LABEL = "kueue.x-k8s.io/prebuilt-workload-name"
#: framework name -> webhook path fragments served for it
FRAMEWORK_WEBHOOKS = {"batch/job": ("-batch-v1-job",)}
METRICS_CERT_DIR = "/etc/kueue/metrics/certs"  # hard-coded in cmd/kueue/main.go (v0.17)

# Runs inside `unshare --mount`: /etc becomes an overlay (tmpfs upper layer) holding the metrics
# certificate; then the manager is exec'd (same PID, so Component's signals reach it).
_LAUNCH = r"""
set -eu
mnt="$1"; cert="$2"; key="$3"; shift 3
mount -t tmpfs -o size=1m tmpfs "$mnt"
mkdir -p "$mnt/upper" "$mnt/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$mnt/upper,workdir=$mnt/work" /etc
mkdir -p /etc/kueue/metrics/certs
cp "$cert" /etc/kueue/metrics/certs/tls.crt
cp "$key" /etc/kueue/metrics/certs/tls.key
exec "$@"
"""


def build_root() -> Path:
    """$FTOP_CACHE/kueue-<version> (bin/kueue, config/crd, config/webhook); built if missing."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-root"], check=True, capture_output=True, text=True
    )
    root = Path(out.stdout.strip())
    if not (os.access(root / "bin" / "kueue", os.X_OK) and (root / "config" / ".ready").exists()):
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False)
        if proc.returncode != 0 or not os.access(root / "bin" / "kueue", os.X_OK):
            raise BuildError(f"{BUILD_SCRIPT} failed (exit code {proc.returncode})")
    return root


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class Kueue:
    """One Kueue manager for one control plane; state (certs, config, log) under the cluster's
    state directory, ``kueue/``."""

    def __init__(
        self,
        cluster: ControlPlane,
        *,
        frameworks: tuple[str, ...] = ("batch/job",),
        external_frameworks: tuple[str, ...] = (),
        feature_gates: dict[str, bool] | None = None,
        log_level: int = 2,
    ) -> None:
        unknown = [f for f in frameworks if f not in FRAMEWORK_WEBHOOKS]
        if unknown:
            raise ValueError(f"no webhook mapping for frameworks {unknown}")
        self.cluster = cluster
        self.frameworks = frameworks
        self.external_frameworks = external_frameworks
        # VisibilityOnDemand (beta, on) would start an extension API server on :8082 of every
        # interface; the tests do not use it.
        self.feature_gates = {"VisibilityOnDemand": False, **(feature_gates or {})}
        self.log_level = log_level
        self.dir = cluster.state_dir / "kueue"
        self.ports: dict[str, int] = {}
        self.component: Component | None = None
        self._root: Path | None = None

    # ---- paths -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = build_root()
        return self._root

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "kueue"

    @property
    def log_path(self) -> Path:
        return self.cluster.log_dir / "kueue.log"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['webhook']}"

    # ---- start -------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> Kueue:
        self.root  # noqa: B018 - a cold build happens here, outside the timeout
        deadline = time.monotonic() + timeout
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "webhook-certs").mkdir(parents=True)
        (self.dir / "mnt").mkdir()
        self.ports = {"webhook": free_port(), "health": free_port(), "metrics": free_port()}
        ca = self.cluster.pki
        crt, key = pki.leaf(
            ca,
            "kueue-webhook",
            "/CN=kueue-webhook",
            [
                "basicConstraints=CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
        )
        shutil.copy(crt, self.dir / "webhook-certs" / "tls.crt")
        shutil.copy(key, self.dir / "webhook-certs" / "tls.key")
        ccrt, ckey = pki.client_cert(ca, "kueue-manager", "/O=system:masters/CN=kueue-manager")
        kubeconfig = write_kubeconfig(
            self.dir / "kueue.kubeconfig",
            server=self.cluster.api_url,
            ca_file=ca.ca_crt,
            user="kueue-manager",
            client_cert=ccrt,
            client_key=ckey,
        )
        config = self.dir / "config.yaml"
        config.write_text(yaml.safe_dump(self.configuration()))

        if not self._exists(f"/api/v1/namespaces/{NAMESPACE}"):
            self.cluster.request(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            )
        self.apply_crds()

        argv = [
            "unshare",
            *(() if os.geteuid() == 0 else ("--user", "--map-root-user")),
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            _LAUNCH,
            "kueue-launch",
            str(self.dir / "mnt"),
            str(crt),
            str(key),
            str(self.binary),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--zap-log-level={self.log_level}",
        ]
        self.component = Component("kueue", argv, self.log_path)
        self.component.start(detach=False)
        try:
            self._wait("kueue /readyz", self._ready, deadline)
            self.register_webhooks()
            self._wait("kueue webhooks answering the API server", self._webhooks_answer, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def configuration(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "apiVersion": CONFIG_API_VERSION,
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "manageJobsWithoutQueueName": False,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports['metrics']}"},
            "webhook": {
                "host": "127.0.0.1",
                "port": self.ports["webhook"],
                "certDir": str(self.dir / "webhook-certs"),
            },
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": list(self.frameworks)},
            "featureGates": dict(self.feature_gates),
        }
        if self.external_frameworks:
            cfg["integrations"]["externalFrameworks"] = list(self.external_frameworks)
        return cfg

    def apply_crds(self) -> None:
        """Kueue's CRDs, with the conversion webhooks of crd/kustomization.yaml pointed at this
        manager's URL."""
        crd_dir = self.root / "config" / "crd"
        kust = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())
        converted = set()
        for p in kust.get("patches", []):
            patch = yaml.safe_load((crd_dir / p["path"]).read_text())
            converted.add(patch["metadata"]["name"])
        docs = []
        for f in sorted(crd_dir.glob("*.yaml")):
            if f.name == "kustomization.yaml":
                continue
            crd = yaml.safe_load(f.read_text())
            if crd["metadata"]["name"] in converted:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": {
                            "url": f"{self.webhook_url}/convert",
                            "caBundle": _b64(self.cluster.pki.ca_crt),
                        },
                        "conversionReviewVersions": ["v1"],
                    },
                }
            docs.append(crd)
        path = self.dir / "crds.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        names = [f"crd/{d['metadata']['name']}" for d in docs]
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)

    def webhook_configurations(self) -> list[dict[str, Any]]:
        """The upstream Mutating/ValidatingWebhookConfigurations, reduced to Kueue's own API and
        the enabled frameworks, service references rewritten into URLs on 127.0.0.1."""
        fragments = ["-kueue-x-k8s-io-"]
        for f in self.frameworks:
            fragments.extend(FRAMEWORK_WEBHOOKS[f])
        ca = _b64(self.cluster.pki.ca_crt)
        out = []
        text = (self.root / "config" / "webhook" / "manifests.yaml").read_text()
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            name = MUTATING_NAME if doc["kind"] == "MutatingWebhookConfiguration" else VALIDATING_NAME
            hooks = []
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                if not any(frag in path for frag in fragments):
                    continue
                hook = dict(hook)
                hook["clientConfig"] = {"url": f"{self.webhook_url}{path}", "caBundle": ca}
                hook["timeoutSeconds"] = 10
                hooks.append(hook)
            out.append(
                {
                    "apiVersion": doc["apiVersion"],
                    "kind": doc["kind"],
                    "metadata": {"name": name},
                    "webhooks": hooks,
                }
            )
        return out

    def register_webhooks(self) -> None:
        docs = self.webhook_configurations()
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
            input="---\n".join(yaml.safe_dump(d) for d in docs),
        )

    def unregister_webhooks(self) -> None:
        for kind, name in (
            ("mutatingwebhookconfigurations", MUTATING_NAME),
            ("validatingwebhookconfigurations", VALIDATING_NAME),
        ):
            with contextlib.suppress(urllib.error.URLError, OSError):
                self.cluster.request(
                    "DELETE", f"/apis/admissionregistration.k8s.io/v1/{kind}/{name}"
                )

    # ---- readiness ---------------------------------------------------------------------------
    def _ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.ports['health']}/readyz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _webhooks_answer(self) -> bool:
        """A server-side dry-run create of a ResourceFlavor goes through Kueue's mutating and
        validating webhooks: it succeeds only when the API server reaches them."""
        body = {
            "apiVersion": API_VERSION,
            "kind": "ResourceFlavor",
            "metadata": {"name": "kueue-webhook-probe"},
        }
        try:
            self.cluster.request(
                "POST", "/apis/kueue.x-k8s.io/v1beta2/resourceflavors?dryRun=All", body
            )
        except (urllib.error.URLError, OSError):
            return False
        return True

    def _exists(self, path: str) -> bool:
        try:
            self.cluster.request("GET", path)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise
        return True

    def _wait(self, what: str, ready: Any, deadline: float) -> None:
        while True:
            if self.component is not None and not self.component.alive():
                raise ClusterError(
                    f"kueue exited (code {self.component.exit_code()}) while waiting for {what}\n"
                    + self.diagnostics()
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}\n" + self.diagnostics())
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.component is not None and self.component.alive()

    # ---- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Remove the webhooks (so the cluster keeps admitting Jobs), then stop the manager."""
        self.unregister_webhooks()
        if self.component is not None:
            self.component.stop()

    def diagnostics(self, lines: int = 40) -> str:
        return f"----- kueue, last {lines} lines of {self.log_path} -----\n" + (
            tail(self.log_path, lines) or "(empty)"
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition ``type_`` of a Kueue object's status ({} when absent)."""
    return next(
        (c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {}
    )


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)

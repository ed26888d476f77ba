"""The whole product on a real node: what ``tests/e2e``'s session fixture composes.

1. images: ``hack/build-images.sh`` builds the operator and trainer images from our Dockerfiles
   (no registry) and saves them as archives; the node imports them (only when they changed).
2. a control plane plus a real node (``tests.cluster.node``): kubelet, containerd, CNI,
   kube-proxy, CoreDNS.
3. an S3 server (moto) on the host end of the node's veth, where pods reach it.
4. ``helm install`` of the chart with the local operator image: the operator runs as a pod
   under the chart's ServiceAccount.
5. a tenant namespace under Pod Security ``restricted`` with the S3 credentials Secret.
6. Prometheus inside the node's network namespace, discovering the operator and trainer pods
   through the API server with the selectors of the chart's ServiceMonitor and PodMonitor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import subprocess
import sys
import threading
import urllib.error
from typing import Any

import yaml

from tests.chart.chart import CHART, KUBE_VERSION
from tests.cluster.cluster import ControlPlane
from tests.cluster.node import NODE_IP, RealNode, in_netns
from tests.support.prometheus import Prometheus
from tests.support.s3 import S3Server
from tests.support.waiting import wait

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_IMAGES = REPO / "hack" / "build-images.sh"
OPERATOR_IMAGE = "localhost/finetune-operator:dev"
TRAINER_IMAGE = "localhost/finetune-trainer:cpu"
RELEASE = "ftop"
SYSTEM_NS = "finetune-system"
TENANT_NS = "team-e2e"
RUNTIME = "cpu-e2e"
S3_SECRET = "s3-credentials"
GROUP_PATH = "/apis/finetune.dev/v1alpha1"


@dataclasses.dataclass(frozen=True)
class Image:
    ref: str
    archive: pathlib.Path
    image_id: str


def build_images() -> dict[str, Image]:
    """Build (or reuse) both images; returns them by short name (operator, trainer)."""
    subprocess.run(["bash", str(BUILD_IMAGES)], check=True, cwd=REPO)
    out = subprocess.run(
        ["bash", str(BUILD_IMAGES), "--print-archives"], check=True, cwd=REPO, capture_output=True, text=True
    ).stdout
    images = {}
    for line in out.splitlines():
        name, _, path = line.partition("=")
        archive = pathlib.Path(path.strip())
        image_id = archive.with_name(archive.name + ".id").read_text().strip()
        ref = {"operator": OPERATOR_IMAGE, "trainer": TRAINER_IMAGE}[name.strip()]
        images[name.strip()] = Image(ref, archive, image_id)
    return images


@dataclasses.dataclass
class E2E:
    cp: ControlPlane
    node: RealNode
    s3: S3Server
    prometheus: Prometheus | None = None
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ---- API helpers ----------------------------------------------------------------------
    def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.cp.request("GET", path)
            return result
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def job(self, name: str, ns: str = TENANT_NS) -> dict[str, Any]:
        found = self.get(f"{GROUP_PATH}/namespaces/{ns}/finetunejobs/{name}")
        assert found is not None, f"FineTuneJob {ns}/{name} is gone"
        return found

    def pods(self, selector: str, ns: str = TENANT_NS) -> list[dict[str, Any]]:
        import urllib.parse

        q = urllib.parse.urlencode({"labelSelector": selector})
        got = self.get(f"/api/v1/namespaces/{ns}/pods?{q}") or {"items": []}
        return list(got["items"])

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def patch_job(self, name: str, patch: dict[str, Any], ns: str = TENANT_NS) -> None:
        self.kubectl("patch", "ftj", name, "-n", ns, "--type=merge", "-p", json.dumps(patch))

    def phase(self, name: str, ns: str = TENANT_NS) -> str:
        return str((self.job(name, ns).get("status") or {}).get("phase", ""))

    def wait_phase(self, name: str, phases: set[str], timeout: float, ns: str = TENANT_NS) -> dict[str, Any]:
        """The job once its phase is one of `phases`. One phase: `ftctl wait --for=phase=P`, as a
        user would wait (its exit code and message are the product's); several: polled here."""
        if len(phases) == 1:
            (phase,) = phases
            ftctl = str(pathlib.Path(sys.executable).parent / "ftctl")
            proc = subprocess.run([ftctl, "wait", name, "-n", ns, f"--for=phase={phase}", f"--timeout={int(timeout)}s", "--interval=0.5"],
                                  env=self.cp.env(), capture_output=True, text=True, timeout=timeout + 60)
            if proc.returncode != 0:
                raise AssertionError(f"ftctl wait {name} --for=phase={phase} exited {proc.returncode}: {proc.stderr.strip()}\n{self.diagnostics(name, ns)}")
            assert f"finetunejob.finetune.dev/{name} phase={phase}" in proc.stdout, proc.stdout
            return self.job(name, ns)

        def probe() -> dict[str, Any] | None:
            job = self.job(name, ns)
            phase = (job.get("status") or {}).get("phase")
            if phase in phases:
                return job
            if phase == "Failed" and "Failed" not in phases:
                raise AssertionError(f"{name} failed: {json.dumps(job.get('status'), indent=1)}\n{self.diagnostics(name, ns)}")
            return None

        result: dict[str, Any] = wait(f"{name} phase in {sorted(phases)}", probe, timeout,
                                      diagnose=lambda: self.diagnostics(name, ns))
        return result

    def logs(self, pod: str, ns: str = TENANT_NS, previous: bool = False) -> str:
        args = ["logs", pod, "-n", ns] + (["--previous"] if previous else [])
        proc = self.kubectl(*args, check=False, timeout=60)
        return proc.stdout + proc.stderr

    def operator_logs(self, lines: int = 60) -> str:
        proc = self.kubectl("logs", "-n", SYSTEM_NS, f"deploy/{RELEASE}-finetune-operator",
                            f"--tail={lines}", check=False, timeout=60)
        return proc.stdout + proc.stderr

    def diagnostics(self, name: str, ns: str = TENANT_NS) -> str:
        parts = []
        with contextlib.suppress(Exception):
            parts.append("--- job status ---\n" + json.dumps(self.job(name, ns).get("status"), indent=1))
        for args in (("get", "pods", "-n", ns, "-o", "wide"), ("get", "events", "-n", ns, "--sort-by=.lastTimestamp")):
            proc = self.kubectl(*args, check=False, timeout=30)
            parts.append(f"--- kubectl {' '.join(args)} ---\n{proc.stdout[-4000:]}{proc.stderr[-1000:]}")
        for pod in self.pods(f"finetune.dev/job-name={name}", ns):
            pname = pod["metadata"]["name"]
            parts.append(f"--- logs {pname} ---\n{self.logs(pname, ns)[-3000:]}")
        parts.append("--- operator ---\n" + self.operator_logs(40))
        parts.append(self.node.diagnostics(10))
        return "\n".join(parts)


# ---- composition steps (called by the conftest's session fixture) --------------------------
def install_operator(cp: ControlPlane, endpoint: str) -> None:
    values = {
        "image": {"repository": OPERATOR_IMAGE.rsplit(":", 1)[0], "tag": OPERATOR_IMAGE.rsplit(":", 1)[1],
                  "pullPolicy": "Never"},
        "trainerImage": TRAINER_IMAGE,
        # a short CPU run has only seconds of training: read progress every second, not 15
        "extraEnv": [{"name": "FINETUNE_OPERATOR_PROGRESS_SECONDS", "value": "1"}],
        # two trainer pods, the operator and (briefly) the validator share the node's 2 CPUs
        "resources": {"requests": {"cpu": "50m", "memory": "160Mi"}, "limits": {"memory": "384Mi"}},
        "runtimePresets": {
            "enabled": True,
            "presets": [
                {
                    "name": RUNTIME,
                    "spec": {
                        "allowedMethods": ["lora"],
                        "maxNodes": 2,
                        "maxGpusPerNode": 0,
                        "resources": {"nodes": 2, "gpusPerNode": 0, "cpu": "900m", "memory": "3Gi"},
                        "defaultOutput": {"uri": "s3://out/", "endpoint": endpoint,
                                          "secretRef": {"name": S3_SECRET}},
                    },
                }
            ],
        },
    }
    values_file = cp.state_dir / "e2e-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cp.helm("install", RELEASE, str(CHART), "-n", SYSTEM_NS, "--create-namespace", "-f", str(values_file),
            "--wait", "--timeout", "180s", timeout=240)


def create_tenant(cp: ControlPlane, s3: S3Server) -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": TENANT_NS,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(ns))
    cp.kubectl("create", "secret", "generic", S3_SECRET, "-n", TENANT_NS,
               f"--from-literal=AWS_ACCESS_KEY_ID={s3.access_key}",
               f"--from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key}")


def monitor_scrape_configs(cp: ControlPlane) -> list[dict[str, Any]]:
    """Prometheus scrape configs equivalent to the chart's PodMonitor and ServiceMonitor (as
    rendered by ``helm template``), discovering targets through the test API server."""
    rendered = cp.helm("template", RELEASE, str(CHART), "-n", SYSTEM_NS, "--kube-version", KUBE_VERSION,
                       "--api-versions", "monitoring.coreos.com/v1",  # as on a cluster with the Prometheus Operator
                       "--set", "metrics.podMonitor.enabled=true,metrics.serviceMonitor.enabled=true",
                       "--set", f"image.repository={OPERATOR_IMAGE.rsplit(':', 1)[0]},trainerImage={TRAINER_IMAGE}").stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    tls = {"ca_file": str(cp.pki.ca_crt), "cert_file": str(cp.pki.admin_crt), "key_file": str(cp.pki.admin_key)}
    configs = []
    for doc in docs:
        if doc["kind"] not in ("PodMonitor", "ServiceMonitor"):
            continue
        spec = doc["spec"]
        pod_monitor = doc["kind"] == "PodMonitor"
        role = "pod" if pod_monitor else "endpoints"
        endpoint = (spec["podMetricsEndpoints"] if pod_monitor else spec["endpoints"])[0]
        meta = "__meta_kubernetes_pod_label_" if pod_monitor else "__meta_kubernetes_service_label_"
        relabel = []
        for key, value in spec["selector"]["matchLabels"].items():
            san = "".join(ch if ch.isalnum() else "_" for ch in key)
            relabel.append({"source_labels": [meta + san], "regex": value, "action": "keep"})
        port_label = "__meta_kubernetes_pod_container_port_name" if pod_monitor else "__meta_kubernetes_endpoint_port_name"
        relabel.append({"source_labels": [port_label], "regex": endpoint["port"], "action": "keep"})
        relabel.append({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"})
        sd: dict[str, Any] = {"role": role, "api_server": cp.api_url, "tls_config": tls}
        ns_sel = spec.get("namespaceSelector", {})
        if ns_sel.get("matchNames"):
            sd["namespaces"] = {"names": ns_sel["matchNames"]}
        configs.append({
            "job_name": doc["metadata"]["name"],
            "honor_labels": bool(endpoint.get("honorLabels")),
            "metrics_path": endpoint.get("path", "/metrics"),
            "scrape_interval": "1s",
            "kubernetes_sd_configs": [sd],
            "relabel_configs": relabel,
        })
    assert {c["job_name"] for c in configs} == {f"{RELEASE}-finetune-operator", f"{RELEASE}-finetune-operator-trainers"}, configs
    return configs


def start_prometheus(cp: ControlPlane, binary: str) -> Prometheus:
    prom = Prometheus(binary, cp.state_dir / "prometheus", scrape_configs=monitor_scrape_configs(cp),
                      listen_host=NODE_IP, wrap=in_netns())
    return prom.__enter__()


class Sampler:
    """Runs ``kubectl get ftj NAME`` every second in the background, as a user watching would."""

    def __init__(self, e2e: E2E, name: str, ns: str = TENANT_NS) -> None:
        self.e2e, self.name, self.ns = e2e, name, ns
        self.rows: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            proc = self.e2e.kubectl("get", "ftj", self.name, "-n", self.ns, check=False, timeout=30)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode == 0 and len(lines) == 2:
                header = lines[0].split()
                values = lines[1].split()
                if len(values) == len(header):
                    self.rows.append(dict(zip(header, values, strict=True)))
            self._stop.wait(1.0)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


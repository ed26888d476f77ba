"""`helm install` into the real control plane (tests/cluster), then prove the chart's RBAC.

Run: .venv/bin/python -m pytest tests/chart/test_install.py   (builds/starts the control plane)

1. `helm install` succeeds: Deployment, ServiceAccount, RBAC, presets. The releases here leave
   the CRDs out (`crds.enabled=false`; they are applied from crds/ as tests/operator does): two
   releases cannot both own them, nor adopt those another test applied. Installing, upgrading,
   adopting and keeping the CRDs through the chart is tests/chart/test_crd_upgrade.py.
2. `kubectl auth can-i` (the harness-built kubectl), asked both as admin impersonating the
   chart's ServiceAccount and with the ServiceAccount's own token: Secrets are denied in every
   namespace; what the operator needs is allowed.
3. The operator, run as that ServiceAccount (token from the TokenRequest API) with the
   Deployment's own arguments, reconciles a FineTuneJob: validation pod, then ConfigMap,
   Service and the Indexed Job, with the status written through the status subresource.
4. With `watchNamespaces`, the rights hold in the listed namespace only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from finetune_trainer import contract

from tests.chart.chart import CHART, KUBE_VERSION, REPO, with_images
from tests.cluster import kwok
from tests.cluster.cluster import ControlPlane
from tests.support.waiting import wait

pytestmark = pytest.mark.cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, probe: Callable[[], Any], timeout: float = 90.0, every: float = 0.5) -> Any:
    return wait(what, probe, timeout, every)


def _get(cluster: ControlPlane, path: str) -> dict[str, Any] | None:
    import urllib.error

    try:
        result: dict[str, Any] = cluster.request("GET", path)
        return result
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


class Release:
    """One installed release of the chart; uninstalled (and its namespace deleted) on exit."""

    def __init__(self, cluster: ControlPlane, name: str, namespace: str, values: dict[str, Any]) -> None:
        self.cluster, self.name, self.namespace, self.values = cluster, name, namespace, values
        self.values_file = cluster.state_dir / f"values-{name}.yaml"
        self.values_file.write_text(yaml.safe_dump(values))

    @property
    def service_account(self) -> str:
        return f"{self.name}-finetune-operator"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def manifests(self) -> list[dict[str, Any]]:
        out = self.cluster.helm("get", "manifest", self.name, "-n", self.namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def can_i(self, verb: str, resource: str, namespace: str | None, *, as_self: pathlib.Path | None = None) -> bool:
        resource, _, sub = resource.partition("/")  # "pods/exec" would name a pod "exec"
        args = ["auth", "can-i", verb, resource] + ([f"--subresource={sub}"] if sub else [])
        args += ["-n", namespace] if namespace else []
        if as_self is None:
            args += [f"--as={self.user}"]
        proc = self.cluster.kubectl(*args, kubeconfig=as_self, check=False)
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {proc.stdout} {proc.stderr}"
        return answer == "yes"


def apply_crds(cluster: ControlPlane) -> None:
    """The CRDs from crds/, as tests/operator and tests/cli apply them (no release owns them)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunejobs.finetune.dev", "crd/clusterfinetuneruntimes.finetune.dev")


@contextlib.contextmanager
def installed(cluster: ControlPlane, values: dict[str, Any]) -> Iterator[Release]:
    """A release without the CRDs (applied first from crds/), so that releases can overlap."""
    apply_crds(cluster)
    suffix = uuid.uuid4().hex[:6]
    release = Release(cluster, f"ftop-{suffix}", f"ftop-system-{suffix}", with_images({"crds": {"enabled": False}, **values}))
    proc = cluster.helm("install", release.name, str(CHART), "-n", release.namespace, "--create-namespace",
                        "-f", str(release.values_file), check=False)
    assert proc.returncode == 0, f"helm install failed:\n{proc.stdout}\n{proc.stderr}"
    try:
        yield release
    finally:
        cluster.helm("uninstall", release.name, "-n", release.namespace, "--wait", check=False)
        with contextlib.suppress(Exception):
            cluster.request("DELETE", f"/api/v1/namespaces/{release.namespace}")


def _preset_values(suffix: str) -> dict[str, Any]:
    """The chart's default presets, renamed so they cannot collide with other tests' runtimes."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["runtimePresets"]["presets"]
    default = yaml.safe_load((CHART / "values.yaml").read_text())["defaultRuntime"]
    return {"defaultRuntime": f"{default}-{suffix}", "runtimePresets": {"presets": [{**p, "name": f"{p['name']}-{suffix}"} for p in defaults]}}


@pytest.fixture(scope="module")
def release(kube_cluster: ControlPlane) -> Iterator[Release]:
    with installed(kube_cluster, _preset_values(uuid.uuid4().hex[:4])) as rel:
        yield rel


def test_helm_install_creates_everything(kube_cluster: ControlPlane, release: Release) -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in release.manifests())
    assert f"Deployment/{release.service_account}" in kinds
    assert f"ServiceAccount/{release.service_account}" in kinds
    assert f"ClusterRole/{release.service_account}-jobs" in kinds
    assert f"Service/{release.service_account}-metrics" in kinds
    assert not [k for k in kinds if k.startswith("CustomResourceDefinition/")], "crds.enabled=false"
    for crd in ("finetunejobs.finetune.dev", "clusterfinetuneruntimes.finetune.dev"):
        assert _wait(f"CRD {crd} established", functools.partial(_established, kube_cluster, crd))
    presets = [v["name"] for v in release.values["runtimePresets"]["presets"]]
    for name in presets:
        runtime = _get(kube_cluster, f"/apis/finetune.dev/v1alpha1/clusterfinetuneruntimes/{name}")
        assert runtime is not None and runtime["spec"]["image"], name
    dep = _get(kube_cluster, f"/apis/apps/v1/namespaces/{release.namespace}/deployments/{release.service_account}")
    assert dep is not None
    status = kube_cluster.helm("status", release.name, "-n", release.namespace, "-o", "json").stdout
    assert json.loads(status)["info"]["status"] == "deployed"


def _established(cluster: ControlPlane, name: str) -> bool:
    crd = _get(cluster, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    conds = (crd or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


SECRET_CHECKS = [("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "secrets")]
ALLOWED = [
    ("watch", "finetunejobs.finetune.dev"), ("patch", "finetunejobs.finetune.dev/status"),
    ("create", "jobs.batch"), ("delete", "jobs.batch"), ("create", "configmaps"), ("patch", "services"),
    ("create", "pods"), ("create", "events"),
]
DENIED = [
    ("create", "pods/exec"), ("get", "pods/log"), ("delete", "namespaces"), ("create", "rolebindings"),
    ("update", "clusterroles"), ("create", "serviceaccounts/token"), ("delete", "nodes"), ("update", "configmaps"),
]


def test_service_account_cannot_read_secrets_anywhere(kube_cluster: ControlPlane, release: Release,
                                                      kube_namespace: str) -> None:
    own = kube_cluster.service_account_kubeconfig(release.namespace, release.service_account)
    for namespace in (kube_namespace, release.namespace, "kube-system", None):
        for verb, resource in SECRET_CHECKS:
            assert not release.can_i(verb, resource, namespace), f"{verb} {resource} in {namespace} allowed (impersonated)"
            assert not release.can_i(verb, resource, namespace, as_self=own), f"{verb} {resource} in {namespace} allowed (own token)"


def test_service_account_has_what_the_operator_needs_and_no_more(kube_cluster: ControlPlane, release: Release,
                                                                 kube_namespace: str) -> None:
    own = kube_cluster.service_account_kubeconfig(release.namespace, release.service_account)
    for verb, resource in ALLOWED:
        assert release.can_i(verb, resource, kube_namespace, as_self=own), f"{verb} {resource} denied"
    assert release.can_i("list", "clusterfinetuneruntimes.finetune.dev", None, as_self=own)
    # the leader Lease: in the release's own namespace only
    assert release.can_i("update", "leases.coordination.k8s.io", release.namespace, as_self=own)
    assert not release.can_i("update", "leases.coordination.k8s.io", kube_namespace, as_self=own)
    for verb, resource in DENIED:
        assert not release.can_i(verb, resource, kube_namespace, as_self=own), f"{verb} {resource} allowed"
    assert not release.can_i("create", "clusterfinetuneruntimes.finetune.dev", None, as_self=own)


@contextlib.contextmanager
def operator_as(cluster: ControlPlane, release: Release, log: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    """The operator process with the chart Deployment's args/env, authenticated as the chart's
    ServiceAccount (its own token, never admin). Stopped by PID."""
    dep = next(d for d in release.manifests() if d["kind"] == "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith(("--liveness=", "--metrics-port="))]
    args += [f"--liveness=http://127.0.0.1:{_free_port()}/healthz", f"--metrics-port={_free_port()}",
             "--metrics-addr=127.0.0.1"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    # what the Deployment's downward-API env gives the pod
    field_refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container.get("env", []) if "fieldRef" in e.get("valueFrom", {})}
    assert field_refs.get("POD_NAMESPACE") == "metadata.namespace", "the operator finds its Lease's namespace through POD_NAMESPACE"
    env["POD_NAMESPACE"] = release.namespace
    kubeconfig = cluster.service_account_kubeconfig(release.namespace, release.service_account)
    full_env = {**os.environ, **env, "KUBECONFIG": str(kubeconfig)}
    full_env.pop("KUBERNETES_SERVICE_HOST", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "finetune_operator.main", *args],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        # It acts once it holds the release's Lease (in the release namespace, through the chart's
        # Role): wait for that, so that what follows is its work (other tests' operators may run).
        lease = f"/apis/coordination.k8s.io/v1/namespaces/{release.namespace}/leases/{release.service_account}"

        def holds() -> bool:
            assert proc.poll() is None, "operator exited:\n" + log.read_text()[-3000:]
            held = _get(cluster, lease)
            return bool(held and (held.get("spec") or {}).get("holderIdentity"))

        _wait("the chart's operator to hold its Lease", holds, timeout=90)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _example_job(namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "classification-minilm.yaml").read_text())
    doc["metadata"] = {"name": "sentiment-rbac", "namespace": namespace}
    return doc


def test_operator_reconciles_a_job_as_the_chart_service_account(kube_cluster: ControlPlane, release: Release,
                                                                kube_namespace: str, tmp_path: pathlib.Path) -> None:
    from kubernetes import client

    ns = kube_namespace
    api = client.CustomObjectsApi(kube_cluster.api_client())
    core = client.CoreV1Api(kube_cluster.api_client())
    batch = client.BatchV1Api(kube_cluster.api_client())
    # This operator serves every namespace: let earlier tests' namespaces (and their jobs) go first,
    # so that what its log shows is this test's work.
    _wait("earlier tests' namespaces to be deleted",
          lambda: not [n for n in core.list_namespace().items if n.metadata.name.startswith("test-") and n.metadata.name != ns], timeout=120)
    job = _example_job(ns)
    name = job["metadata"]["name"]
    log = tmp_path / "operator.log"
    with operator_as(kube_cluster, release, log) as proc:
        api.create_namespaced_custom_object(contract.GROUP, contract.VERSION, ns, contract.PLURAL_JOB, job)
        try:
            selector = f"{contract.LABEL_JOB_NAME}={name},{contract.LABEL_COMPONENT}={contract.COMPONENT_VALIDATOR}"
            validator = _wait("the validation pod", lambda: core.list_namespaced_pod(ns, label_selector=selector).items,
                              timeout=120)[0]
            # play the kubelet: the validation container exits 0
            _wait("the validation pod to run", lambda: core.read_namespaced_pod(validator.metadata.name, ns).status.phase == "Running")
            kwok.set_pod_result(core, ns, validator.metadata.name, kwok.SUCCEEDED)
            training = _wait("the training Job", lambda: _list_jobs(batch, ns, name), timeout=120)[0]
            assert training.spec.completion_mode == "Indexed"
            assert core.read_namespaced_config_map(f"{name}-config", ns).data
            assert core.read_namespaced_service(f"{name}-workers", ns).spec.cluster_ip == "None"
            ftj = api.get_namespaced_custom_object(contract.GROUP, contract.VERSION, ns, contract.PLURAL_JOB, name)
            status = ftj.get("status") or {}
            assert status.get("phase") in ("Queued", "Initializing", "Running"), status
            assert any(c["type"] == "Validated" and c["status"] == "True" for c in status.get("conditions", [])), status
            # credentials reach the pods only as secretKeyRef
            envs = training.spec.template.spec.containers[0].env or []
            secret_envs = [e for e in envs if e.name in (contract.ENV_AWS_ACCESS_KEY_ID, contract.ENV_AWS_SECRET_ACCESS_KEY)]
            assert secret_envs and all(e.value is None and e.value_from.secret_key_ref for e in secret_envs)
            # it acted as the holder of the release's leader Lease, in the release namespace
            lease = client.CoordinationV1Api(kube_cluster.api_client()).read_namespaced_lease(release.service_account, release.namespace)
            assert lease.spec.holder_identity and lease.spec.lease_duration_seconds == 15
        finally:
            assert proc.poll() is None, "operator exited:\n" + log.read_text()[-3000:]
            with contextlib.suppress(Exception):
                api.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, ns, contract.PLURAL_JOB, name)
        # The job ran under the chart's default runtime, which carried the in-use finalizer while
        # it did; with the job gone the operator takes it off (else uninstalling waits on it).
        runtime = f"/apis/finetune.dev/v1alpha1/clusterfinetuneruntimes/{release.values['defaultRuntime']}"
        _wait("the default runtime's in-use finalizer to go", lambda: not ((_get(kube_cluster, runtime) or {}).get("metadata") or {}).get("finalizers"), timeout=60)
    text = log.read_text()
    assert " 403" not in text and "Forbidden" not in text and "forbidden" not in text, text[-3000:]


def _list_jobs(batch: Any, namespace: str, name: str) -> list[Any]:
    return [j for j in batch.list_namespaced_job(namespace).items if j.metadata.name == name]


def test_watch_namespaces_limits_the_rights_to_those_namespaces(kube_cluster: ControlPlane) -> None:
    with kube_cluster.namespace("team") as team, kube_cluster.namespace("other") as other:
        values = {"watchNamespaces": [team], "runtimePresets": {"enabled": False}}
        with installed(kube_cluster, values) as rel:
            own = kube_cluster.service_account_kubeconfig(rel.namespace, rel.service_account)
            assert rel.can_i("create", "jobs.batch", team, as_self=own)
            assert rel.can_i("patch", "finetunejobs.finetune.dev/status", team, as_self=own)
            assert not rel.can_i("create", "jobs.batch", other, as_self=own)
            assert not rel.can_i("watch", "finetunejobs.finetune.dev", other, as_self=own)
            assert not rel.can_i("get", "secrets", team, as_self=own)
            dep = next(d for d in rel.manifests() if d["kind"] == "Deployment")
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            assert f"--namespace={team}" in args and "--standalone" not in args  # leader election works per namespace too


def test_kube_version_pin_matches_the_harness(kube_cluster: ControlPlane) -> None:
    """tests/chart renders for KUBE_VERSION; the harness's API server must be that minor."""
    version = kube_cluster.request("GET", "/version")
    assert f"{version['major']}.{version['minor']}" == ".".join(KUBE_VERSION.split(".")[:2])


def test_namespace_users_work_with_finetunejobs_through_the_built_in_roles(kube_cluster: ControlPlane, release: Release, kube_namespace: str,
                                                                          tmp_path: pathlib.Path) -> None:
    """The seam chart <-> the cluster's users: someone bound to the built-in `edit` role in a
    namespace (nothing of ours bound to them) creates, lists, reads and deletes FineTuneJobs there
    and reads the presets; someone bound to `view` reads jobs but creates none. Proven with their
    own tokens against the real API server, after the controller manager aggregated the roles."""
    ns = kube_namespace
    users = {}
    for user, role in (("alice", "edit"), ("bob", "view")):
        kube_cluster.kubectl("create", "serviceaccount", user, "-n", ns)
        kube_cluster.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--serviceaccount={ns}:{user}", "-n", ns)
        users[user] = kube_cluster.service_account_kubeconfig(ns, user)

    def can(user: str, verb: str, resource: str, namespace: str | None = ns) -> bool:
        return release.can_i(verb, resource, namespace, as_self=users[user])

    _wait("edit to aggregate the FineTuneJob rights", lambda: can("alice", "create", "finetunejobs.finetune.dev"), timeout=60)
    job = _example_job(ns)
    job["metadata"]["name"] = "by-alice"
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))

    def as_user(user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return kube_cluster.kubectl(*args, kubeconfig=users[user], check=False)

    created = as_user("alice", "apply", "-f", str(manifest))
    assert created.returncode == 0, created.stderr
    listed = as_user("alice", "get", "finetunejobs", "-n", ns, "-o", "name")
    assert listed.returncode == 0 and "by-alice" in listed.stdout, listed.stderr
    presets = as_user("alice", "get", "clusterfinetuneruntimes", "-o", "name")
    assert presets.returncode == 0 and release.values["defaultRuntime"] in presets.stdout, presets.stderr
    assert not can("alice", "delete", "clusterfinetuneruntimes.finetune.dev", None), "users read presets, never change them"
    assert not can("alice", "patch", "finetunejobs.finetune.dev/status"), "status is the operator's"
    # view: reads, never writes
    seen = as_user("bob", "get", "finetunejob", "by-alice", "-n", ns, "-o", "jsonpath={.metadata.name}")
    assert seen.returncode == 0 and seen.stdout == "by-alice", seen.stderr
    refused = as_user("bob", "delete", "finetunejob", "by-alice", "-n", ns)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    deleted = as_user("alice", "delete", "finetunejob", "by-alice", "-n", ns, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr

"""What the harness must show against the real control plane.

Run: .venv/bin/python -m pytest tests/cluster -m cluster
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster import kwok
from tests.cluster.binaries import COMMANDS
from tests.cluster.cluster import ControlPlane

pytestmark = pytest.mark.cluster

T = TypeVar("T")

CRD_GROUP = "harness.finetune.dev"
CRD_PLURAL = "widgets"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def api(kube_cluster: ControlPlane) -> Iterator[client.ApiClient]:
    api_client = kube_cluster.api_client()
    yield api_client
    api_client.close()


# ---- versions: the binaries are the pinned releases, stamped --------------------------------
def test_server_reports_the_pinned_kubernetes_version(kube_cluster: ControlPlane) -> None:
    stamp = (kube_cluster.bin_dir / "VERSION").read_text().strip()
    k8s_version = stamp.split("_")[0].removeprefix("k8s-")
    assert kube_cluster.request("GET", "/version")["gitVersion"] == k8s_version
    out = subprocess.run(
        [str(kube_cluster.tool("kube-apiserver")), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"Kubernetes {k8s_version}"
    client_version = kube_cluster.kubectl("version", "--client", "-o", "json").stdout
    assert f'"gitVersion": "{k8s_version}"' in client_version
    for name in COMMANDS:
        assert (kube_cluster.bin_dir / name).is_file(), name


# ---- CRD schema validation at admission ------------------------------------------------------
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{CRD_PLURAL}.{CRD_GROUP}"},
    "spec": {
        "group": CRD_GROUP,
        "scope": "Namespaced",
        "names": {"plural": CRD_PLURAL, "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "string", "enum": ["small", "large"]},
                                    "replicas": {"type": "integer", "minimum": 1, "maximum": 8},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
                                        "message": "replicas must not exceed maxReplicas",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def _widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_crd_schema_rejects_invalid_objects(
    kube_cluster: ControlPlane, api: client.ApiClient, kube_namespace: str
) -> None:
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"{CRD_PLURAL}.{CRD_GROUP}")
        return any(
            c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])
        )

    wait_for("CRD Established", established, 30)
    objs = client.CustomObjectsApi(api)

    def create(name: str, spec: dict[str, Any]) -> Any:
        return objs.create_namespaced_custom_object(
            CRD_GROUP, "v1", kube_namespace, CRD_PLURAL, _widget(name, spec)
        )

    # the discovery cache of the API server can lag Established by a moment
    wait_for(
        "a valid Widget accepted",
        lambda: _accepted(lambda: create("ok", {"size": "small", "replicas": 2})),
        30,
    )

    cases: dict[str, tuple[dict[str, Any], str]] = {
        "bad-enum": ({"size": "huge"}, "spec.size"),
        "bad-min": ({"size": "small", "replicas": 0}, "spec.replicas"),
        "missing": ({"replicas": 1}, "spec.size"),
        "bad-type": ({"size": "small", "replicas": "two"}, "spec.replicas"),
        "bad-cel": (
            {"size": "large", "replicas": 5, "maxReplicas": 3},
            "replicas must not exceed maxReplicas",
        ),
    }
    for name, (spec, expected) in cases.items():
        with pytest.raises(ApiException) as info:
            create(name, spec)
        assert info.value.status == 422, (name, info.value.body)
        assert expected in info.value.body, (name, info.value.body)
    names = [
        o["metadata"]["name"]
        for o in objs.list_namespaced_custom_object(CRD_GROUP, "v1", kube_namespace, CRD_PLURAL)[
            "items"
        ]
    ]
    assert names == ["ok"]


def _accepted(create: Callable[[], Any]) -> bool:
    try:
        create()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


# ---- Indexed Job: Job controller -> scheduler -> kwok fake node -> Complete ------------------
def _job(
    name: str,
    *,
    completions: int,
    pod_annotations: dict[str, str],
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": pod_annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "example.invalid/finetune-trainer:test",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
            **(extra_spec or {}),
        },
    }


def test_indexed_job_runs_on_fake_nodes_and_completes(
    kube_cluster: ControlPlane, api: client.ApiClient, kube_namespace: str
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(
        kube_namespace,
        _job(
            "indexed",
            completions=3,
            pod_annotations=kwok.pod_annotations(kwok.SUCCEEDED, delay="2s"),
        ),
    )

    def running_pods() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(kube_namespace, label_selector="job-name=indexed").items
        ok = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
        return ok if len(ok) == 3 else None

    pods = wait_for("3 pods Running on fake nodes", running_pods, 60)
    assert {p.spec.node_name for p in pods} <= set(kube_cluster.node_names)
    assert sorted(
        p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods
    ) == ["0", "1", "2"]
    assert all(p.status.pod_ip for p in pods)

    def complete() -> client.V1Job | None:
        job = batch.read_namespaced_job("indexed", kube_namespace)
        conds = {c.type: c.status for c in (job.status.conditions or [])}
        return job if conds.get("Complete") == "True" else None

    job = wait_for("Job Complete", complete, 60)
    assert job.status.succeeded == 3
    assert job.status.completed_indexes == "0-2"
    pods = core.list_namespaced_pod(kube_namespace, label_selector="job-name=indexed").items
    assert [p.status.phase for p in pods] == ["Succeeded"] * 3
    assert all(p.status.container_statuses[0].state.terminated.exit_code == 0 for p in pods)


def test_failed_exit_code_and_eviction_reach_the_job_controller(
    api: client.ApiClient, kube_namespace: str
) -> None:
    """Evicted -> DisruptionTarget -> ignored by podFailurePolicy (the pod is replaced);
    Failed with exit code 3 -> the FailJob rule fails the Job."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    policy = {
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}},
            ]
        }
    }
    batch.create_namespaced_job(
        kube_namespace, _job("flaky", completions=1, pod_annotations={}, extra_spec=policy)
    )

    def running_pod() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(kube_namespace, label_selector="job-name=flaky").items
        run = [p for p in pods if p.status.phase == "Running"]
        return run[0] if run else None

    first = wait_for("first pod Running", running_pod, 60)
    kwok.set_pod_result(core, kube_namespace, first.metadata.name, kwok.EVICTED)

    def evicted() -> client.V1Pod | None:
        p = core.read_namespaced_pod(first.metadata.name, kube_namespace)
        return p if p.status.phase == "Failed" else None

    pod = wait_for("pod evicted", evicted, 30)
    assert pod.status.reason == "Evicted"
    assert any(c.type == "DisruptionTarget" and c.status == "True" for c in pod.status.conditions)

    def replacement() -> client.V1Pod | None:
        p = running_pod()
        return p if p is not None and p.metadata.name != first.metadata.name else None

    second = wait_for("replacement pod Running", replacement, 60)
    job = batch.read_namespaced_job("flaky", kube_namespace)
    assert not job.status.failed  # Ignore: the eviction does not count against backoffLimit 0

    kwok.set_pod_result(core, kube_namespace, second.metadata.name, kwok.FAILED, exit_code=3)

    def job_failed() -> client.V1Job | None:
        j = batch.read_namespaced_job("flaky", kube_namespace)
        conds = {c.type: c for c in (j.status.conditions or [])}
        failed = conds.get("Failed")
        return j if failed is not None and failed.status == "True" else None

    job = wait_for("Job Failed", job_failed, 60)
    failed_cond = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed_cond.reason == "PodFailurePolicy", failed_cond
    pod = core.read_namespaced_pod(second.metadata.name, kube_namespace)
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3


# ---- garbage collection through owner references --------------------------------------------
def test_deleting_an_owner_garbage_collects_its_children(
    api: client.ApiClient, kube_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}}
    )
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": True,
    }
    for i in range(3):
        core.create_namespaced_config_map(
            kube_namespace,
            {"metadata": {"name": f"child-{i}", "ownerReferences": [ref]}, "data": {}},
        )
    core.create_namespaced_secret(
        kube_namespace,
        {"metadata": {"name": "child-secret", "ownerReferences": [ref]}, "stringData": {"a": "b"}},
    )
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map(
        "owner", kube_namespace, body={"propagationPolicy": "Background"}
    )

    def children_gone() -> bool:
        cms = {c.metadata.name for c in core.list_namespaced_config_map(kube_namespace).items}
        secrets = {s.metadata.name for s in core.list_namespaced_secret(kube_namespace).items}
        return not any(n.startswith("child-") for n in cms) and "child-secret" not in secrets

    wait_for("children garbage-collected", children_gone, 60)
    names = {c.metadata.name for c in core.list_namespaced_config_map(kube_namespace).items}
    assert "bystander" in names and "owner" not in names


# ---- RBAC: a ServiceAccount kubeconfig gets exactly its Role ---------------------------------
def test_service_account_kubeconfig_is_limited_to_its_role(
    kube_cluster: ControlPlane, api: client.ApiClient, kube_namespace: str
) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(kube_namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        kube_namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmap-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": kube_namespace}],
        },
    )

    kubeconfig = kube_cluster.service_account_kubeconfig(kube_namespace, "reader")
    sa_api = kube_cluster.api_client(kubeconfig)
    try:
        sa_core = client.CoreV1Api(sa_api)
        who = client.AuthenticationV1Api(sa_api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        assert who.status.user_info.username == (f"system:serviceaccount:{kube_namespace}:reader")
        # allowed by the Role (RBAC changes can take a moment to reach the authorizer cache)
        wait_for(
            "Role effective",
            lambda: _allowed(lambda: sa_core.list_namespaced_config_map(kube_namespace)),
            30,
        )
        denied: dict[str, Callable[[], Any]] = {
            "create configmap": lambda: sa_core.create_namespaced_config_map(
                kube_namespace, {"metadata": {"name": "nope"}}
            ),
            "list secrets": lambda: sa_core.list_namespaced_secret(kube_namespace),
            "list configmaps in kube-system": lambda: sa_core.list_namespaced_config_map(
                "kube-system"
            ),
            "list nodes": lambda: sa_core.list_node(),
        }
        for what, call in denied.items():
            with pytest.raises(ApiException) as info:
                call()
            assert info.value.status == 403, what
            assert "forbidden" in info.value.body, what
    finally:
        sa_api.close()

    # the same through a subprocess, as the operator's tests run it
    ok = kube_cluster.run_as_service_account(
        kube_namespace, "reader", [str(kube_cluster.tool("kubectl")), "get", "configmaps"]
    )
    assert ok.returncode == 0, ok.stderr
    no = kube_cluster.run_as_service_account(
        kube_namespace, "reader", [str(kube_cluster.tool("kubectl")), "get", "secrets"]
    )
    assert no.returncode != 0
    assert (
        f'User "system:serviceaccount:{kube_namespace}:reader" cannot list resource "secrets"'
    ) in no.stderr


def _allowed(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException as exc:
        if exc.status == 403:
            return False
        raise
    return True

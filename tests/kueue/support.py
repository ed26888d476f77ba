"""Helpers of the Kueue tests: queues, plain Jobs, Workloads (Kueue's API is kueue.x-k8s.io/v1beta2)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from kubernetes.client.rest import ApiException

from tests.cluster.kueue import QUEUE_LABEL, condition
from tests.operator.cluster_support import Kube

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"


def create(kube: Kube, plural: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    body = {"apiVersion": API_VERSION, **body}
    if namespace is None:
        return dict(kube.custom.create_cluster_custom_object(GROUP, VERSION, plural, body))
    return dict(kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body))


def get(kube: Kube, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    if namespace is None:
        return dict(kube.custom.get_cluster_custom_object(GROUP, VERSION, plural, name))
    return dict(kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))


def workloads(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return list(kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"])


def workload_of(kube: Kube, namespace: str, kind: str, name: str, uid: str | None = None) -> dict[str, Any] | None:
    """The Workload whose controller is the object ``kind/name`` (and ``uid``), or None."""
    for wl in workloads(kube, namespace):
        for ref in wl["metadata"].get("ownerReferences", []):
            if ref.get("controller") and ref["kind"] == kind and ref["name"] == name and (uid is None or ref["uid"] == uid):
                return wl
    return None


def is_true(obj: dict[str, Any] | None, type_: str) -> bool:
    return obj is not None and condition(obj, type_).get("status") == "True"


@contextlib.contextmanager
def cluster_queue(kube: Kube, namespace: str, quota: dict[str, str], local_queue: str = "lq") -> Iterator[str]:
    """ResourceFlavor + ClusterQueue (``quota`` per resource, one flavor, only ``namespace``) +
    LocalQueue ``local_queue`` in ``namespace``; yields the ClusterQueue's name, which is deleted
    with the flavor afterwards."""
    suffix = uuid.uuid4().hex[:6]
    rf, cq = f"flavor-{suffix}", f"cq-{suffix}"
    create(kube, "resourceflavors", {"kind": "ResourceFlavor", "metadata": {"name": rf}})
    create(
        kube,
        "clusterqueues",
        {
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "resourceGroups": [
                    {
                        "coveredResources": sorted(quota),
                        "flavors": [{"name": rf, "resources": [{"name": k, "nominalQuota": v} for k, v in sorted(quota.items())]}],
                    }
                ],
            },
        },
    )
    create(kube, "localqueues", {"kind": "LocalQueue", "metadata": {"name": local_queue}, "spec": {"clusterQueue": cq}}, namespace)
    Kube.wait(lambda: is_true(get(kube, "clusterqueues", cq), "Active"), f"ClusterQueue {cq} Active", 30, lambda: get(kube, "clusterqueues", cq))
    Kube.wait(lambda: is_true(get(kube, "localqueues", local_queue, namespace), "Active"), f"LocalQueue {local_queue} Active", 30)
    try:
        yield cq
    finally:
        for plural, name in (("clusterqueues", cq), ("resourceflavors", rf)):
            with contextlib.suppress(ApiException):
                kube.custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_spec(cpu: str = "1", memory: str = "100Mi") -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "main",
                "image": "registry.invalid/sleep:1",
                "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": cpu, "memory": memory}},
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
            }
        ],
    }


def job_body(name: str, queue: str | None = "lq", labels: dict[str, str] | None = None, cpu: str = "1") -> dict[str, Any]:
    meta_labels = dict(labels or {})
    if queue:
        meta_labels[QUEUE_LABEL] = queue
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": meta_labels},
        "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 0, "template": {"spec": pod_spec(cpu)}},
    }

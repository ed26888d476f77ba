"""Issue 13 against the real API server: two releases side by side, each with its PDB and
NetworkPolicies; the installs that would share a cluster-wide object refused with the value to
change (templates/ownership.yaml); the docs' tenant NetworkPolicy applied; the operator pod, in
both security-context modes, admitted by Pod Security `restricted`.

Run: .venv/bin/python -m pytest tests/chart/test_releases.py   (builds/starts the control plane)

The releases use a renamed copy of the chart's API group (tests/chart/test_crd_upgrade.py's
`copy_chart`), so that the first can own its CRDs and presets without touching finetune.dev's.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import one, render, with_images
from tests.chart.test_chart_issue13 import OPENSHIFT, tenant_policy_from_docs
from tests.chart.test_crd_upgrade import _get, api_group, copy_chart
from tests.cluster.cluster import ControlPlane

pytestmark = pytest.mark.cluster


def _install(cluster: ControlPlane, group: Any, chart: Path, name: str, namespace: str, values: dict[str, Any],
             tmp: Path) -> Any:
    group.releases.append((name, namespace))
    path = tmp / f"values-{name}-{namespace}.yaml"
    path.write_text(yaml.safe_dump(with_images(values)))
    return cluster.helm("install", name, str(chart), "-n", namespace, "--create-namespace", "-f", str(path), check=False)


def _names(cluster: ControlPlane, path: str) -> set[str]:
    return {i["metadata"]["name"] for i in (_get(cluster, path) or {}).get("items", [])}


def test_two_releases_side_by_side_and_the_installs_that_would_collide(kube_cluster: ControlPlane, tmp_path: Path) -> None:
    cluster = kube_cluster
    with api_group(cluster) as group, cluster.namespace("team") as team_a, cluster.namespace("team") as team_b:
        chart = copy_chart(tmp_path / "chart", group)
        s = group.suffix
        (a, a_ns), (b, b_ns) = (f"ops-a-{s}", f"ops-a-{s}"), (f"ops-b-{s}", f"ops-b-{s}")
        common = {"replicaCount": 2, "networkPolicy": {"enabled": True}, "metrics": {"dashboard": {"enabled": True}}}
        # the first owns the CRDs and the presets; the second leaves them to it (docs/chart.md)
        first = _install(cluster, group, chart, a, a_ns, {**common, "watchNamespaces": [team_a]}, tmp_path)
        assert first.returncode == 0, first.stderr
        second_values = {**common, "watchNamespaces": [team_b], "crds": {"enabled": False}, "runtimePresets": {"enabled": False}}
        second = _install(cluster, group, chart, b, b_ns, second_values, tmp_path)
        assert second.returncode == 0, second.stderr

        for name, ns, team in ((a, a_ns, team_a), (b, b_ns, team_b)):
            full = f"{name}-finetune-operator"
            assert _names(cluster, f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets") == {full}
            assert _names(cluster, f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies") == {full}
            assert _names(cluster, f"/apis/networking.k8s.io/v1/namespaces/{team}/networkpolicies") == {f"{full}-trainers"}
            dep = _get(cluster, f"/apis/apps/v1/namespaces/{ns}/deployments/{full}")
            assert dep and dep["spec"]["replicas"] == 2
            assert dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]

        # refused before anything is created, naming the owner and the value to set
        refusals = [
            (f"c-{s}", {"crds": {"enabled": True}, "runtimePresets": {"enabled": False}},
             f"CustomResourceDefinition finetunejobs.{group.name} belongs to release {a} in namespace {a_ns}: "
             "one release owns the CRDs: set crds.enabled=false"),
            (f"d-{s}", {"crds": {"enabled": False}},
             f"ClusterFineTuneRuntime standard belongs to release {a} in namespace {a_ns}: presets are shared by the "
             "whole cluster: set runtimePresets.enabled=false"),
            (b, {"crds": {"enabled": False}, "runtimePresets": {"enabled": False}},
             f"ClusterRole {b}-finetune-operator-cluster belongs to release {b} in namespace {b_ns}: cluster-wide "
             "objects are named after the release: give this release another name, or set fullnameOverride"),
        ]
        for name, values, message in refusals:
            ns = f"ops-x-{uuid.uuid4().hex[:6]}"
            proc = _install(cluster, group, chart, name, ns, values, tmp_path)
            assert proc.returncode != 0 and message in proc.stderr, (message, proc.stderr)
            assert cluster.helm("status", name, "-n", ns, check=False).returncode != 0, "nothing installed"
        # the two releases are untouched
        for name, ns in ((a, a_ns), (b, b_ns)):
            assert "deployed" in cluster.helm("status", name, "-n", ns).stdout


def test_the_documented_tenant_policy_is_accepted(kube_cluster: ControlPlane) -> None:
    with kube_cluster.namespace("tenant") as ns:
        policy = tenant_policy_from_docs()
        policy["metadata"]["namespace"] = ns
        kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(policy))
        stored = _get(kube_cluster, f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{policy['metadata']['name']}")
        assert stored and stored["spec"]["ingress"] == policy["spec"]["ingress"]


@pytest.mark.parametrize("values", [None, OPENSHIFT], ids=["default", "openshift-no-ids"])
def test_operator_pod_is_admitted_by_pod_security_restricted(kube_cluster: ControlPlane, values: dict[str, Any] | None) -> None:
    """The Deployment's pod template, as a pod (server-side dry run) in a namespace that enforces
    `restricted`; a privileged variant is refused, so the check is on."""
    with kube_cluster.namespace("psa", labels={"pod-security.kubernetes.io/enforce": "restricted"}) as ns:
        spec = one(render(values), "Deployment")["spec"]["template"]["spec"]
        spec["serviceAccountName"] = "default"
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", "namespace": ns}, "spec": spec}
        ok = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
        assert ok.returncode == 0, ok.stderr
        spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        refused = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False)
        assert refused.returncode != 0 and "restricted" in refused.stderr, refused.stderr

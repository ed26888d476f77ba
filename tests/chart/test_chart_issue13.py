"""Chart hardening (issue 13), rendered: security contexts (and OpenShift's restricted-v2),
`global` values / use as a subchart, NetworkPolicies, PodDisruptionBudget and anti-affinity,
and names that let two releases coexist. tests/chart/test_releases.py installs them for real.

Run: .venv/bin/python -m pytest tests/chart/test_chart_issue13.py
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
import yaml
from finetune_trainer import contract

from tests.chart.chart import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    REPO,
    by_kind,
    helm,
    one,
    render,
    with_images,
)

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
OPENSHIFT = {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}}
IDS = ("runAsUser", "runAsGroup", "fsGroup")


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


# --- 1. security contexts -------------------------------------------------------------------

def test_security_contexts_default_to_psa_restricted_as_the_image_user() -> None:
    pod = _pod(render())
    assert pod["securityContext"] == DEFAULTS["podSecurityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["containers"][0]["securityContext"] == DEFAULTS["securityContext"]


def test_openshift_nulls_drop_the_fixed_ids_and_keep_the_rest() -> None:
    """restricted-v2 assigns the UID/GID from the namespace's range: the chart must name none."""
    pod = _pod(render(OPENSHIFT))
    assert not set(IDS) & set(pod["securityContext"]), pod["securityContext"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    container = pod["containers"][0]["securityContext"]
    assert container == DEFAULTS["securityContext"] and "runAsUser" not in container
    # other keys are overridden one by one, the rest stays
    assert _pod(render({"podSecurityContext": {"runAsUser": 1000}}))["securityContext"]["runAsGroup"] == 65532


# --- 2. global values, use as a subchart ------------------------------------------------------

def test_global_values_pass_the_schema() -> None:
    assert one(render({"global": {"imageRegistry": "registry.example", "foo": {"bar": 1}}}), "Deployment")


def test_the_chart_renders_as_a_subchart_with_global_values(tmp_path: pathlib.Path) -> None:
    """A parent chart with a file:// dependency on this chart: Helm hands the subchart `global`,
    which the schema must allow, and the parent's values (nulls included) reach it."""
    parent = tmp_path / "platform"
    (parent / "templates").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "finetune-operator", "version": "0.1.0", "repository": f"file://{CHART}"}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example", "team": "ml"},
        "finetune-operator": with_images({**OPENSHIFT, "replicaCount": 2, "networkPolicy": {"enabled": True}})}))
    env_dirs = ["--repository-config", str(tmp_path / "repositories.yaml"), "--repository-cache", str(tmp_path / "cache")]
    dep = helm("dependency", "update", str(parent), "--skip-refresh", *env_dirs, check=False)
    assert dep.returncode == 0, dep.stdout + dep.stderr
    proc = helm("template", "plat", str(parent), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    pod = _pod(docs)
    assert not set(IDS) & set(pod["securityContext"])
    assert one(docs, "PodDisruptionBudget") and len(by_kind(docs, "NetworkPolicy")) == 1
    assert {c["metadata"]["name"] for c in by_kind(docs, "CustomResourceDefinition")} == {
        "finetunejobs.finetune.dev", "clusterfinetuneruntimes.finetune.dev"}
    # bad values for the subchart are still refused by its schema
    (parent / "values.yaml").write_text(yaml.safe_dump({"global": {}, "finetune-operator": {"replicas": 2}}))
    bad = helm("template", "plat", str(parent), "--kube-version", KUBE_VERSION, check=False)
    assert bad.returncode != 0 and "replicas" in bad.stderr, bad.stderr


# --- 3. NetworkPolicies ---------------------------------------------------------------------

NP_ON: dict[str, Any] = {"networkPolicy": {"enabled": True}}
TRAINER_LABELS = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER}


def test_no_network_policy_by_default() -> None:
    assert not by_kind(render(), "NetworkPolicy")
    assert not by_kind(render({"watchNamespaces": ["team-a"]}), "NetworkPolicy")


def test_operator_policy_admits_prometheus_on_the_metrics_port_only() -> None:
    docs = render(NP_ON)
    (policy,) = by_kind(docs, "NetworkPolicy")  # all namespaces watched: no trainer policy rendered
    dep = one(docs, "Deployment")
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open (API server, S3, hub)"
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == DEFAULTS["networkPolicy"]["metricsFrom"]
    metrics_port = next(p["containerPort"] for p in _pod(docs)["containers"][0]["ports"] if p["name"] == "metrics")
    assert rule["ports"] == [{"port": metrics_port, "protocol": "TCP"}]
    # nobody may scrape: no rule at all (a rule without `from` would admit everyone)
    closed = one(render({"networkPolicy": {"enabled": True, "metricsFrom": []}}), "NetworkPolicy")
    assert closed["spec"]["ingress"] == []


def _trainer_policies(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["namespace"]: p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-trainers")}


def test_trainer_policies_go_to_the_watched_or_listed_namespaces() -> None:
    docs = render({**NP_ON, "watchNamespaces": ["team-a", "team-b"]})
    policies = _trainer_policies(docs)
    assert set(policies) == {"team-a", "team-b"}
    listed = render({"networkPolicy": {"enabled": True, "trainerNamespaces": ["team-c"]}})
    assert set(_trainer_policies(listed)) == {"team-c"}
    policy = policies["team-a"]
    assert policy["spec"]["podSelector"] == {"matchLabels": TRAINER_LABELS}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    from_operator, from_prometheus, between_trainers = policy["spec"]["ingress"]
    # the operator reads rank 0's /progress on the trainer's metrics port
    operator_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    (peer,) = from_operator["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert peer["podSelector"]["matchLabels"].items() <= operator_labels.items()
    assert from_operator["ports"] == [{"port": contract.METRICS_PORT, "protocol": "TCP"}]
    assert from_prometheus["from"] == DEFAULTS["networkPolicy"]["metricsFrom"]
    assert from_prometheus["ports"] == [{"port": contract.METRICS_PORT, "protocol": "TCP"}]
    # the ranks: every port (rendezvous RENDEZVOUS_PORT, NCCL's ephemeral ones), same namespace only
    assert between_trainers == {"from": [{"podSelector": {"matchLabels": TRAINER_LABELS}}]}
    no_scrape = _trainer_policies(render({"networkPolicy": {"enabled": True, "metricsFrom": [], "trainerNamespaces": ["x"]}}))
    assert len(no_scrape["x"]["spec"]["ingress"]) == 2


def test_trainer_policy_selects_the_pods_the_operator_builds() -> None:
    from finetune_operator import builders

    from tests.operator.helpers import minimal_spec
    from tests.operator.test_builders import resolved

    template = builders.build_job(resolved(minimal_spec(resources={"nodes": 2, "gpusPerNode": 0})), 0, False)["spec"]["template"]
    policy = _trainer_policies(render({**NP_ON, "watchNamespaces": ["team-a"]}))["team-a"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert contract.METRICS_PORT in ports


def tenant_policy_from_docs() -> dict[str, Any]:
    """The NetworkPolicy manifest docs/chart.md gives for tenant namespaces (one ```yaml block)."""
    text = (REPO / "docs" / "chart.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: NetworkPolicy" in b]
    assert len(blocks) == 1, "docs/chart.md: one ```yaml block with the tenant NetworkPolicy"
    doc: dict[str, Any] = yaml.safe_load(blocks[0])
    return doc


def test_the_documented_tenant_policy_is_what_the_chart_renders() -> None:
    """The docs' manifest (release finetune-operator in finetune-system, tenant team-a) equals the
    chart's trainer policy for that namespace, less Helm's labels."""
    documented = tenant_policy_from_docs()
    docs = render({"networkPolicy": {"enabled": True, "trainerNamespaces": ["team-a"]}},
                  release="finetune-operator", namespace="finetune-system")
    rendered = _trainer_policies(docs)["team-a"]
    assert documented["spec"] == rendered["spec"]
    assert documented["metadata"]["name"] == rendered["metadata"]["name"]
    assert documented["metadata"]["namespace"] == "team-a"


# --- 4. PodDisruptionBudget, anti-affinity ----------------------------------------------------

def test_one_replica_has_no_pdb_and_no_affinity() -> None:
    docs = render()
    assert not by_kind(docs, "PodDisruptionBudget")
    assert "affinity" not in _pod(docs)


def test_replicas_get_a_pdb_and_soft_anti_affinity_by_hostname() -> None:
    docs = render({"replicaCount": 2})
    pdb = one(docs, "PodDisruptionBudget")
    dep = one(docs, "Deployment")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    anti = _pod(docs)["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti, "soft: a one-node cluster still runs both"
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == dep["spec"]["selector"]


def test_the_users_affinity_wins() -> None:
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}}
    docs = render({"replicaCount": 3, "affinity": mine})
    assert _pod(docs)["affinity"] == mine
    assert one(docs, "PodDisruptionBudget")
    assert _pod(render({"replicaCount": 1, "affinity": mine}))["affinity"] == mine


# --- 5. two releases ----------------------------------------------------------------------------

SECOND = {"crds": {"enabled": False}, "runtimePresets": {"enabled": False}}
ALL_OPTIONAL: dict[str, Any] = {
    "replicaCount": 2, "networkPolicy": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True, "namespace": "monitoring"}},
}


def _keys(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs}


@pytest.mark.parametrize("names", [("ops-a", "ops-b"), ("finetune-operator", "finetune-operator")],
                         ids=["two-names", "one-name-different-fullnameOverride"])
def test_two_releases_in_two_namespaces_share_no_object(names: tuple[str, str]) -> None:
    """Everything either release renders is its own (kind, namespace, name), the dashboards have
    their own Grafana uid and title, and each PodMonitor scrapes its own namespaces, once the second
    release leaves the CRDs and presets to the first (cluster-wide, one owner)."""
    a = render({**ALL_OPTIONAL, "watchNamespaces": ["team-a"]}, release=names[0], namespace="ops-a")
    second: dict[str, Any] = {**ALL_OPTIONAL, **SECOND, "watchNamespaces": ["team-b"]}
    if names[0] == names[1]:
        second["fullnameOverride"] = "finetune-operator-b"
    b = render(second, release=names[1], namespace="ops-b")
    assert not _keys(a) & _keys(b), _keys(a) & _keys(b)
    boards = [json.loads(one(d, "ConfigMap")["data"]["finetune-jobs.json"]) for d in (a, b)]
    assert boards[0]["uid"] != boards[1]["uid"] and boards[0]["title"] != boards[1]["title"]
    assert all(len(board["uid"]) <= 40 for board in boards), "Grafana's uid limit"
    assert [one(d, "PodMonitor")["spec"]["namespaceSelector"] for d in (a, b)] == [{"matchNames": ["team-a"]}, {"matchNames": ["team-b"]}]


def test_the_same_name_in_two_namespaces_would_share_cluster_objects() -> None:
    """What tests/chart/test_releases.py shows the install refusing (templates/ownership.yaml)."""
    a = render(SECOND, release="ops", namespace="ops-a")
    b = render(SECOND, release="ops", namespace="ops-b")
    shared = {k for k in _keys(a) & _keys(b)}
    assert shared and all(kind.startswith("Cluster") and not ns for kind, ns, _ in shared), shared

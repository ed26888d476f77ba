"""values.schema.json: bad values fail `helm template`/`install` with a message naming the value.

Run: .venv/bin/python -m pytest tests/chart/test_values_schema.py
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.chart import render, template_error

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicas": 2}, "replicas"),
    ("negative replicas", {"replicaCount": -1}, "replicaCount"),
    ("replicas as a string", {"replicaCount": "two"}, "replicaCount"),
    ("bad pull policy", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ("image repository not a repository", {"image": {"repository": "Registry/Operator Image"}}, "repository"),
    ("trainer image not an image", {"trainerImage": "trainer image"}, "trainerImage"),
    ("watchNamespaces as a string", {"watchNamespaces": "team-a"}, "watchNamespaces"),
    ("namespace not a DNS label", {"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ("duplicate namespaces", {"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
    ("bad log level", {"logLevel": "verbose"}, "logLevel"),
    ("metrics port out of range", {"metrics": {"port": 70000}}, "port"),
    ("bad scrape interval", {"metrics": {"podMonitor": {"interval": "15 seconds"}}}, "interval"),
    ("stalledMinutes zero", {"metrics": {"prometheusRule": {"stalledMinutes": 0}}}, "stalledMinutes"),
    ("gpu idle percent above 100", {"metrics": {"prometheusRule": {"gpuIdlePercent": 150}}}, "gpuIdlePercent"),
    ("bad severity", {"metrics": {"prometheusRule": {"severity": "page"}}}, "severity"),
    ("memory not a quantity", {"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ("unknown resource name", {"resources": {"limits": {"gpu": 1}}}, "gpu"),
    ("typo under serviceMonitor", {"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
    ("preset without spec", {"runtimePresets": {"presets": [{"name": "x"}]}}, "spec"),
    ("preset name not a DNS name", {"runtimePresets": {"presets": [{"name": "A B", "spec": {}}]}}, "name"),
    ("preset method unknown", {"runtimePresets": {"presets": [{"name": "x", "spec": {"allowedMethods": ["sft"]}}]}},
     "allowedMethods"),
    ("preset above the node limit", {"runtimePresets": {"presets": [{"name": "x", "spec": {"maxNodes": 100}}]}}, "maxNodes"),
    ("preset field misspelled", {"runtimePresets": {"presets": [{"name": "x", "spec": {"resources": {"gpus": 2}}}]}},
     "gpus"),
    ("env var without name", {"extraEnv": [{"value": "x"}]}, "name"),
    ("rbac.create as a string", {"rbac": {"create": "yes"}}, "create"),
    ("crds.enabled as a string", {"crds": {"enabled": "yes"}}, "enabled"),
    ("crds.keep as a string", {"crds": {"keep": "true"}}, "keep"),
    ("unknown key under crds", {"crds": {"install": True}}, "install"),
    ("networkPolicy.enabled as a string", {"networkPolicy": {"enabled": "yes"}}, "enabled"),
    ("metricsFrom as a map", {"networkPolicy": {"metricsFrom": {"namespaceSelector": {}}}}, "metricsFrom"),
    ("metricsFrom peer misspelled", {"networkPolicy": {"metricsFrom": [{"namespaceSelecter": {}}]}}, "namespaceSelecter"),
    ("trainer namespace not a DNS label", {"networkPolicy": {"trainerNamespaces": ["Team_A"]}}, "trainerNamespaces"),
    ("negative UID", {"podSecurityContext": {"runAsUser": -1}}, "runAsUser"),
    ("UID as a string", {"podSecurityContext": {"runAsUser": "65532"}}, "runAsUser"),
    ("securityContext not a map", {"securityContext": "restricted"}, "securityContext"),
    ("global not a map", {"global": "x"}, "global"),
]


@pytest.mark.parametrize(("case", "values", "field"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(case: str, values: dict[str, Any], field: str) -> None:
    message = template_error(values)
    assert "values don't meet the specifications of the schema" in message, message
    assert field in message, f"{case}: the error does not name {field!r}:\n{message}"


def test_service_monitor_without_service_is_rejected() -> None:
    message = template_error({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in message


def test_a_warm_standby_works_with_a_namespace_list_too() -> None:
    """Leader election is a Lease in the release namespace, whatever the operator watches."""
    docs = render({"replicaCount": 2, "watchNamespaces": ["team-a"]})
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" not in args and f"--leader-election-id={dep['metadata']['name']}" in args
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election"))
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]


def test_good_values_are_accepted() -> None:
    docs = render({
        "replicaCount": 2,
        "image": {"repository": "registry.example.com/ml/finetune-operator", "tag": "0.1.0", "pullPolicy": "Always"},
        "logLevel": "debug",
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": 536870912}},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "metrics": {"port": 9090, "prometheusRule": {"enabled": True, "gpuIdlePercent": 2.5, "severity": "critical"}},
        "runtimePresets": {"enabled": False},
    })
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/ml/finetune-operator:0.1.0"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]
    assert not [d for d in docs if d["kind"] == "ClusterFineTuneRuntime"]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"trainerImage": "registry.example.com/finetune-trainer:0.1.0"}, "image.repository is required"),
        ({"image": {"repository": "registry.example.com/finetune-operator"}}, "trainerImage is required"),
    ],
)
def test_both_images_are_required_with_the_way_to_build_them(values: dict[str, Any], named: str) -> None:
    """No image is published for this chart: a default would only fail later, as ImagePullBackOff
    of the operator or of every job. helm refuses at once and says how to get one."""
    message = template_error(values, images=False)
    assert named in message and "README, Install" in message and "Dockerfile" in message, message

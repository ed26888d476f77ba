"""The Helm chart, rendered with the harness-built helm: lint, templates, security, RBAC, CRD sync.

Run: .venv/bin/python -m pytest tests/chart/test_chart_render.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, NAMESPACE, REPO, by_kind, helm, one, render

ALL_ON: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True, "stalledMinutes": 20},
        "dashboard": {"enabled": True},
    },
}


@pytest.mark.parametrize("values", [None, ALL_ON, {**ALL_ON, "replicaCount": 2, "watchNamespaces": ["team-a"],
                                                "networkPolicy": {"enabled": True}, "global": {"x": 1}}],
                         ids=["defaults", "all-features", "replicas-networkpolicy-global"])
def test_helm_lint_strict_passes(values: dict[str, Any] | None, tmp_path: Any) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    proc = helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_has_the_operator_and_nothing_optional() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 1
    assert kinds.count("ServiceAccount") == 1
    assert kinds.count("Service") == 1
    assert kinds.count("ClusterRole") == 2 + 3 and kinds.count("ClusterRoleBinding") == 2 + 1  # + the users' roles
    assert kinds.count("Role") == 1 and kinds.count("RoleBinding") == 1  # the leader Lease only
    assert kinds.count("ClusterFineTuneRuntime") == 3
    for optional in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"):
        assert optional not in kinds
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == "ftop", d["kind"]


def test_all_features_render_monitoring_objects() -> None:
    docs = render(ALL_ON)
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"]["finetune.dev/component"] == "trainer"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    rule = one(docs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"FineTuneJobFailed", "FineTuneJobStalled", "FineTuneJobGPUsIdle"} <= alerts
    stalled = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "FineTuneJobStalled")
    assert "[20m]" in stalled["expr"]
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_pod_monitor_port_and_labels_match_the_trainer_contract() -> None:
    from finetune_trainer import contract

    pm = one(render(ALL_ON), "PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == contract.PORT_NAME_METRICS
    assert pm["spec"]["podMetricsEndpoints"][0]["path"] == contract.HTTP_METRICS_PATH
    assert pm["spec"]["selector"]["matchLabels"] == {
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
        contract.LABEL_COMPONENT: contract.COMPONENT_TRAINER,
    }


def test_deployment_is_psa_restricted_with_probe_and_resources() -> None:
    dep = one(render(), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["serviceAccountName"] == one(render(), "ServiceAccount")["metadata"]["name"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert "add" not in sc["capabilities"]
    assert not any(v.get("hostPath") for v in pod.get("volumes", []))
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] in {p["name"] for p in container["ports"]}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in container["args"]


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's own rules (not the roles the chart gives the cluster's users)."""
    return [r for d in docs if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["labels"].get("finetune.dev/role-for") != "users" for r in d.get("rules", [])]


@pytest.mark.parametrize("values", [None, {"watchNamespaces": ["team-a", "team-b"]}], ids=["cluster", "namespaced"])
def test_rbac_never_grants_secrets_or_wildcards(values: dict[str, Any] | None) -> None:
    rules = _rules(render(values))
    assert rules
    for rule in rules:
        assert "secrets" not in rule.get("resources", []), rule
        assert "*" not in rule.get("resources", []) and "*" not in rule.get("verbs", []), rule
        assert "*" not in rule.get("apiGroups", []), rule
        assert not rule.get("nonResourceURLs"), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule.get("verbs", [])), rule
    # no exec/attach/port-forward/log access into pods, no access to nodes
    for rule in rules:
        assert not {"pods/exec", "pods/attach", "pods/portforward", "nodes", "serviceaccounts/token"} & set(rule.get("resources", [])), rule


def test_watch_namespaces_bind_per_namespace_and_pass_them_to_the_operator() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"]["name"].endswith("-jobs") for b in bindings)
    crbs = [b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")]
    assert not any(n.endswith("-jobs") for n in crbs), "namespaced mode must not bind job rights cluster-wide"
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    pm = one(render({**ALL_ON, "watchNamespaces": ["team-a"]}), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.mark.parametrize("values", [None, {"watchNamespaces": ["team-a"]}], ids=["cluster", "namespaced"])
def test_chart_rbac_equals_the_operators_own_rbac_file(values: dict[str, Any] | None) -> None:
    """operator/finetune_operator/rbac.yaml lists the operator's API calls; the chart grants exactly that."""
    path = REPO / "operator" / "finetune_operator" / "rbac.yaml"
    theirs = [r for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in ("ClusterRole", "Role")
              for r in d.get("rules", [])]
    assert _triples(_rules(render(values))) == _triples(theirs)


def test_chart_crds_are_in_sync_with_crds_dir() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "sync_chart_crds.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, "run `make chart-crds`:\n" + proc.stdout + proc.stderr


def test_rendered_crds_and_objects_equal_crds_dir() -> None:
    """What `helm install` creates from templates/crds.yaml is exactly what crds/ holds, plus the
    release's labels and the keep annotation on the metadata."""
    source = [d for p in sorted((REPO / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert any(d["kind"] == "CustomResourceDefinition" for d in source)
    rendered = render()
    for doc in source:
        matches = [r for r in rendered if r["kind"] == doc["kind"] and r["metadata"]["name"] == doc["metadata"]["name"]]
        assert len(matches) == 1, f"{doc['kind']} {doc['metadata']['name']} missing from the chart"
        got = matches[0]
        assert {k: v for k, v in got.items() if k != "metadata"} == {k: v for k, v in doc.items() if k != "metadata"}, \
            f"{doc['kind']} {doc['metadata']['name']} differs from crds/"
        assert set(got["metadata"]) <= {"name", "labels", "annotations"}
    assert not (CHART / "crds").exists(), "Helm installs a chart's crds/ folder once and never upgrades it"


def test_crds_carry_the_release_labels_and_keep_by_default() -> None:
    crds = by_kind(render(), "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == ["clusterfinetuneruntimes.finetune.dev", "finetunejobs.finetune.dev"]
    for crd in crds:
        meta = crd["metadata"]
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
        # Helm adopts an existing object only with these; crds/ says managed-by finetune-operator
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert meta["labels"]["app.kubernetes.io/instance"] == "ftop"


def test_crds_keep_false_drops_the_annotation_and_enabled_false_renders_no_crd() -> None:
    for crd in by_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    docs = render({"crds": {"enabled": False}})
    assert not by_kind(docs, "CustomResourceDefinition")
    assert one(docs, "Deployment") and len(by_kind(docs, "ClusterFineTuneRuntime")) == 3


def test_presets_are_a_post_install_hook_until_the_cluster_serves_their_kind() -> None:
    """Helm maps every release object to an API before creating any: on a cluster without the
    CRD the presets wait for it as a hook; once the kind is served they are release objects.
    Both forms carry the ownership metadata that lets the later upgrade adopt the hook's objects."""
    fresh = by_kind(render(), "ClusterFineTuneRuntime")
    served = by_kind(render(api_versions=["finetune.dev/v1alpha1/ClusterFineTuneRuntime"]), "ClusterFineTuneRuntime")
    assert len(fresh) == len(served) == 3
    for preset in fresh:
        assert preset["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    for preset in served:
        assert "helm.sh/hook" not in preset["metadata"]["annotations"]
    for preset in fresh + served:
        assert preset["metadata"]["annotations"]["meta.helm.sh/release-name"] == "ftop"
        assert preset["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == NAMESPACE
        assert preset["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_presets_are_valid_runtimes() -> None:
    """Every example preset parses with the operator's own ClusterFineTuneRuntime model."""
    from finetune_operator.api import parse_runtime

    runtimes = by_kind(render(), "ClusterFineTuneRuntime")
    assert {r["metadata"]["name"] for r in runtimes} == {"standard", "cpu-small", "a100-lora"}
    for r in runtimes:
        parse_runtime(r["spec"])
        assert r["spec"]["image"]


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_the_default_runtime_is_a_preset_the_chart_installs() -> None:
    """Jobs without spec.runtimeRef run under `defaultRuntime`: the operator is told its name, and
    the chart creates that preset (else every plain manifest waits for a runtime that never comes)."""
    docs = render()
    name = _operator_env(docs)["FINETUNE_OPERATOR_DEFAULT_RUNTIME"]
    assert name == "standard" and name in {r["metadata"]["name"] for r in by_kind(docs, "ClusterFineTuneRuntime")}
    # empty: no default (jobs must name a runtime), and the operator is given none
    assert "FINETUNE_OPERATOR_DEFAULT_RUNTIME" not in _operator_env(render({"defaultRuntime": ""}))


def _doc_comments(lines: list[str]) -> dict[str, bool]:
    """Dotted key path -> whether a `# --` comment block sits right above the key's line.

    Keys inside list items (the presets) are examples, not values, and are not listed.
    """
    stack: list[tuple[int, str]] = []
    list_indent: int | None = None
    found: dict[str, bool] = {}
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if list_indent is not None:
            if indent > list_indent or (indent == list_indent and text.startswith("- ")):
                continue
            list_indent = None
        if text.startswith("- "):
            list_indent = indent
            continue
        m = re.match(r"^([A-Za-z_][\w.-]*):", text)
        if not m:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m.group(1)])
        j, documented = i - 1, False
        while j >= 0 and lines[j].strip().startswith("#"):
            documented = documented or lines[j].strip().startswith("# --")
            j -= 1
        found[path] = documented
        stack.append((indent, m.group(1)))
    return found


def test_every_value_is_documented() -> None:
    """Each value has a `# --` comment above it, or above the map that holds it."""
    text = (CHART / "values.yaml").read_text()
    comments = _doc_comments(text.splitlines())
    values = yaml.safe_load(text)
    missing: list[str] = []

    def check(path: str, value: Any) -> None:
        if comments.get(path):
            return
        if isinstance(value, dict) and value:
            for k, v in value.items():
                check(f"{path}.{k}", v)
        else:
            missing.append(path)

    for key, value in values.items():
        check(key, value)
    assert not missing, f"values without a '# --' comment: {missing}"
    assert len(comments) > 30


def test_values_yaml_matches_the_schema_keys() -> None:
    """Every key in values.yaml is declared in values.schema.json (which forbids unknown keys)."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(v: Any, s: dict[str, Any], path: str) -> None:
        if "$ref" in s:
            s = schema["definitions"][s["$ref"].rsplit("/", 1)[1]]
        if isinstance(v, dict) and "properties" in s:
            for k, child in v.items():
                assert k in s["properties"], f"{path}{k} is not in values.schema.json"
                walk(child, s["properties"][k], f"{path}{k}.")

    walk(values, schema, "")


def test_operator_image_runs_as_the_chart_user() -> None:
    """operator/Dockerfile's USER is the UID/GID the chart's pod security context sets."""
    dockerfile = (REPO / "operator" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", dockerfile, re.M)
    assert users, "operator/Dockerfile must end as a numeric non-root USER"
    uid, gid = users[-1]
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]) and int(uid) != 0
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.M)
    assert entry, "operator/Dockerfile needs an exec-form ENTRYPOINT"
    import json

    argv = json.loads(entry.group(1))
    # the chart passes only arguments: the image must start the operator's main()
    assert argv in (["finetune-operator"], ["python", "-m", "finetune_operator.main"]), argv


def test_pod_monitor_selects_the_trainer_pods_the_operator_builds() -> None:
    """The PodMonitor's selector and port match the pod template of the training Job the
    operator's builders render for every example (and for a plain CPU job), called here rather
    than read from snapshots; the validation pod (no metrics) is not selected."""
    from finetune_operator import builders
    from finetune_operator.resolve import Resolved
    from finetune_trainer import contract as ct

    from tests.operator.helpers import minimal_spec
    from tests.operator.test_builders import EXAMPLES, resolved, resolved_example

    pm = one(render({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"]
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert EXAMPLES, "no example FineTuneJobs"
    plain = resolved(minimal_spec(resources={"nodes": 2, "gpusPerNode": 0}))
    for r in [*(resolved_example(p) for p in EXAMPLES), plain]:
        assert isinstance(r, Resolved), r
        job = builders.build_job(r, 0, False)
        template = job["spec"]["template"]
        assert selector.items() <= template["metadata"]["labels"].items(), r.meta.name
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert ports.get(endpoint["port"]) == ct.METRICS_PORT, (r.meta.name, ports)
        assert endpoint.get("path", "/metrics") == ct.HTTP_METRICS_PATH
        validator = builders.build_validator(r)
        assert not selector.items() <= validator["metadata"]["labels"].items(), "the validation pod serves no metrics"


def test_the_rbac_table_in_docs_is_what_the_chart_grants() -> None:
    """docs/chart.md's RBAC table lists exactly the (resource, verb) pairs the chart grants."""
    documented: set[tuple[str, str]] = set()
    for line in (REPO / "docs" / "chart.md").read_text().splitlines():
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ("cluster", "release ns", "watched ns"):
            resources = re.findall(r"`([^`]+)`", cells[1])
            verbs = [v.strip() for v in cells[2].split(",")]
            documented |= {(r, v) for r in resources for v in verbs}
    granted = {(r, v) for _, r, v in _triples(_rules(render()))}
    assert documented == granted, {"documented, not granted": documented - granted, "granted, not documented": granted - documented}


def test_monitoring_objects_only_where_the_prometheus_operator_is_served() -> None:
    """Without monitoring.coreos.com/v1 an install would fail on an unknown kind: the PodMonitor,
    ServiceMonitor and PrometheusRule are left out (NOTES.txt says so at install)."""
    served = {d["kind"] for d in render(ALL_ON)}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule"} <= served
    bare = {d["kind"] for d in render(ALL_ON, api_versions=[])}
    assert not {"PodMonitor", "ServiceMonitor", "PrometheusRule"} & bare and "Deployment" in bare


def test_dashboard_goes_to_its_namespace_with_the_sidecars_folder_annotation() -> None:
    values = {"metrics": {"dashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "ML training"}}}}
    cm = next(d for d in by_kind(render(values), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["annotations"] == {"grafana_folder": "ML training"}
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_trainer_pull_secrets_reach_the_operators_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's trainerImagePullSecrets become the operator's --image-pull-secrets, as its own
    argument parser and settings read them."""
    from finetune_operator.handlers import operator_config
    from finetune_operator.main import parse_args

    env = _operator_env(render({"trainerImagePullSecrets": ["site-registry", "mirror"]}))
    assert env["FINETUNE_OPERATOR_IMAGE_PULL_SECRETS"] == "site-registry,mirror"
    monkeypatch.setenv("FINETUNE_OPERATOR_IMAGE_PULL_SECRETS", env["FINETUNE_OPERATOR_IMAGE_PULL_SECRETS"])
    args = parse_args([])
    assert operator_config(vars(args)).default_image_pull_secrets == ("site-registry", "mirror")
    assert "FINETUNE_OPERATOR_IMAGE_PULL_SECRETS" not in _operator_env(render())

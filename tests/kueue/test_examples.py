"""Every example runs as written once its stated prerequisites exist, and needs each of them.

Each FineTuneJob in examples/ names its prerequisites in a header (`# - Kind [ns/]name ...`). For
each example in turn, on the real API server with the real Kueue manager and the operator
running: the test creates exactly the prerequisites it can (namespaces, Secrets with the keys
listed, presets, PriorityClasses, Kueue LocalQueues, the operator's default runtime), applies the
file unchanged with kubectl, and follows the job through validation to trainer pods created;
then removes everything again, so no example leans on another's prerequisites. The ones it cannot
make here (data in a bucket, GPU nodes) stay documentation.

A prerequisite missing from a header fails it: a missing preset leaves the job Pending, a Secret
or key the pods name is checked against what exists, a missing PriorityClass keeps the Job from
creating its pods (FailedCreate), a missing LocalQueue keeps the Workload from being admitted.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_trainer import contract as ct
from kubernetes.client.rest import ApiException

from tests.cluster.cluster import ControlPlane
from tests.cluster.kueue import Kueue
from tests.kueue.support import is_true
from tests.operator.cluster_support import DEFAULT_RUNTIME, REPO, Kube, OperatorProcess

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "examples"
CHART_VALUES = REPO / "charts" / "finetune-operator" / "values.yaml"
LINE = re.compile(
    r"^# - (?P<default>default )?(?P<kind>Namespace|Secret|ClusterFineTuneRuntime|PriorityClass|LocalQueue) "
    r"(?P<name>[a-z0-9./-]+)(?: with keys? (?P<keys>[A-Z0-9_, ]+))?"
)


@dataclasses.dataclass(frozen=True)
class Prerequisite:
    kind: str
    namespace: str | None
    name: str
    keys: tuple[str, ...] = ()
    default: bool = False  # the operator's default runtime


def prerequisites(path: Path) -> tuple[list[Prerequisite], list[str]]:
    """(what the test makes, what stays documentation) from the file's header."""
    made, manual = [], []
    header = path.read_text().split("apiVersion:", 1)[0]
    assert "# Prerequisites" in header, f"{path.name} states no prerequisites"
    for line in header.splitlines():
        if not line.startswith("# - "):
            continue
        m = LINE.match(line)
        if m is None:
            manual.append(line[4:])
            continue
        ns, _, name = m["name"].rpartition("/")
        keys = tuple(k.strip() for k in (m["keys"] or "").split(",") if k.strip())
        made.append(Prerequisite(m["kind"], ns or None, name, keys, bool(m["default"])))
    return made, manual


def job_examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.yaml") if yaml.safe_load(p.read_text()).get("kind") == ct.KIND_JOB)


def chart_preset(name: str) -> dict[str, Any]:
    presets = yaml.safe_load(CHART_VALUES.read_text())["runtimePresets"]["presets"]
    return dict(next(p["spec"] for p in presets if p["name"] == name))


class Made:
    """What one example's prerequisites created, removed again afterwards (namespaces last, and
    waited for: the next example may make the same one)."""

    def __init__(self, cluster: ControlPlane, kube: Kube) -> None:
        self.cluster, self.kube = cluster, kube
        self.docs: list[dict[str, Any]] = []
        self.default_runtime_changed = False

    def apply(self, doc: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
        self.docs.append(doc)

    def make(self, p: Prerequisite, operator: OperatorProcess) -> None:
        if p.kind == "Namespace":
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": p.name}})
        elif p.kind == "Secret":
            data = {k: base64.b64encode(b"example-" + k.encode()).decode() for k in p.keys}
            self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": p.name, "namespace": p.namespace}, "data": data})
        elif p.kind == "PriorityClass":
            self.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": p.name}, "value": 1000})
        elif p.kind == "ClusterFineTuneRuntime" and p.default:
            self.apply({"apiVersion": ct.API_VERSION, "kind": ct.KIND_RUNTIME, "metadata": {"name": p.name}, "spec": chart_preset(p.name)})
            operator.stop()
            operator.start(env={"FINETUNE_OPERATOR_DEFAULT_RUNTIME": p.name})
            self.default_runtime_changed = True
        elif p.kind == "ClusterFineTuneRuntime":
            doc = yaml.safe_load((EXAMPLES / f"runtime-{p.name}.yaml").read_text())
            assert doc["metadata"]["name"] == p.name
            self.apply(doc)
        elif p.kind == "LocalQueue":
            suffix = uuid.uuid4().hex[:6]
            flavor, cq = f"flavor-{suffix}", f"cq-{suffix}"
            quota = {"cpu": "1000", "memory": "10Ti", "nvidia.com/gpu": "64"}
            self.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor}})
            self.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cq}, "spec": {
                "namespaceSelector": {},
                "resourceGroups": [{"coveredResources": sorted(quota), "flavors": [{"name": flavor, "resources": [
                    {"name": k, "nominalQuota": v} for k, v in sorted(quota.items())]}]}]}})
            self.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": p.name, "namespace": p.namespace},
                        "spec": {"clusterQueue": cq}})
            Kube.wait(lambda: is_true(self.kube.custom.get_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", p.namespace, "localqueues", p.name), "Active"),
                      f"LocalQueue {p.namespace}/{p.name} active", 30)
        else:
            raise AssertionError(f"no way to make {p}")

    def remove(self) -> None:
        later = [d for d in self.docs if d["kind"] == "Namespace"]
        for doc in [d for d in reversed(self.docs) if d["kind"] != "Namespace"]:
            self.cluster.kubectl("delete", "-f", "-", "--wait=false", "--ignore-not-found", input=yaml.safe_dump(doc), check=False)
        for doc in later:
            self.cluster.kubectl("delete", "namespace", doc["metadata"]["name"], "--ignore-not-found", "--timeout=120s", check=False)


@pytest.fixture
def made(kube_cluster: ControlPlane, kube: Kube, ftop: OperatorProcess) -> Iterator[Made]:
    m = Made(kube_cluster, kube)
    try:
        yield m
    finally:
        m.remove()
        if m.default_runtime_changed:
            ftop.stop()
            ftop.start(env={"FINETUNE_OPERATOR_DEFAULT_RUNTIME": DEFAULT_RUNTIME})


def test_every_job_example_states_prerequisites_the_test_can_make() -> None:
    for path in job_examples():
        made, _manual = prerequisites(path)
        doc = yaml.safe_load(path.read_text())
        assert Prerequisite("Namespace", None, doc["metadata"]["namespace"]) in made, f"{path.name}: its namespace"
        names = {p.name for p in made}
        runtime = (doc["spec"].get("runtimeRef") or {}).get("name")
        assert runtime in names if runtime else any(p.default for p in made), f"{path.name}: its runtime"


def secret_refs(pod_spec: Any) -> set[tuple[str, str, bool]]:
    """(Secret, key, optional) of every secretKeyRef in the pod's containers."""
    return {
        (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key, bool(e.value_from.secret_key_ref.optional))
        for c in pod_spec.containers for e in c.env or [] if e.value_from is not None and e.value_from.secret_key_ref is not None
    }


def assert_secrets_exist(kube: Kube, namespace: str, pod_spec: Any, what: str) -> None:
    for secret, key, optional in secret_refs(pod_spec):
        try:
            data = kube.core.read_namespaced_secret(secret, namespace).data or {}
        except ApiException as err:
            raise AssertionError(f"{what} names Secret {namespace}/{secret}, which the example's prerequisites do not make ({err.status})") from None
        assert optional or key in data, f"{what} needs key {key} of Secret {namespace}/{secret}; its header lists {sorted(data)}"


@pytest.mark.parametrize("path", job_examples(), ids=lambda p: p.stem)
def test_example_runs_as_written_with_exactly_its_prerequisites(path: Path, kube_cluster: ControlPlane, kube: Kube, kueue: Kueue,
                                                                 ftop: OperatorProcess, made: Made) -> None:
    prereqs, manual = prerequisites(path)
    print(f"\n{path.name}: making {[(p.kind, p.name) for p in prereqs]}; documented only: {manual}")
    for p in prereqs:
        made.make(p, ftop)
    doc = yaml.safe_load(path.read_text())
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    out = kube_cluster.kubectl("apply", "-f", str(path))  # the file as is
    assert "created" in out.stdout, out.stdout + out.stderr
    made.docs.append(doc)

    validator = Kube.wait(lambda: next(iter(kube.pods(ns, f"{ct.LABEL_JOB_NAME}={name},{ct.LABEL_COMPONENT}={ct.COMPONENT_VALIDATOR}")), None),
                          f"{name}'s validation pod", 60, lambda: kube.status(ns, name))
    assert_secrets_exist(kube, ns, validator.spec, f"validation pod of {path.name}")
    kube.pass_validation(ns, name)
    job = Kube.wait(lambda: kube.job(ns, name), f"{name}'s training Job", 60, lambda: kube.status(ns, name))
    assert_secrets_exist(kube, ns, job.spec.template.spec, f"trainer pods of {path.name}")
    nodes = doc["spec"].get("resources", {}).get("nodes") or 1
    # the Job could make every trainer pod: the runtime, PriorityClass and (with a queue) the
    # admission by Kueue are all there (pods may stay Pending: no such GPU nodes here)
    Kube.wait(lambda: len(kube.pods(ns, f"{ct.LABEL_JOB_NAME}={name},{ct.LABEL_COMPONENT}={ct.COMPONENT_TRAINER}")) >= nodes,
              f"{nodes} trainer pods of {name}", 90, lambda: kube.status(ns, name))
    if doc["spec"].get("queueName"):
        # the job's own Workload, in the example's queue, with its pods' PriorityClass and value
        wl = kube.custom.get_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", ns, "workloads", name)
        assert wl["spec"]["queueName"] == doc["spec"]["queueName"] and is_true(wl, "Admitted"), wl.get("status")
        priority_class = job.spec.template.spec.priority_class_name
        if priority_class:
            value = kube_cluster.kubectl("get", "priorityclass", priority_class, "-o", "jsonpath={.value}").stdout
            assert wl["spec"]["priorityClassRef"]["name"] == priority_class and wl["spec"]["priority"] == int(value), wl["spec"]
    st = kube.status(ns, name)
    assert st.get("phase") not in ("Failed", "Pending"), st
    print(f"{path.name}: {st.get('phase')}: {st.get('message')}")

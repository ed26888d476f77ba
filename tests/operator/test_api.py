"""The API models, the generated CRDs (drift check), progress parsing and child views."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from finetune_operator import crdgen
from finetune_operator.api import InvalidResource, parse_job
from finetune_operator.progress import parse_progress, progress_url
from finetune_operator.views import job_view, pod_view

from tests.operator.helpers import REPO, example_jobs, load
from tests.operator.malformed import CASES, Case


def test_committed_crds_match_the_models() -> None:
    """crds/ is generated from operator/finetune_operator/api.py; run `make crds` after a change."""
    assert crdgen.main(["--check", str(REPO / "crds")]) == 0


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.get("properties", {}).items():
            out += _walk(v, f"{path}.{k}")
        if "items" in node:
            out += _walk(node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], path + "{}")
    return out


@pytest.mark.parametrize("crd", [crdgen.finetunejob_crd(), crdgen.runtime_crd()], ids=["finetunejobs", "runtimes"])
def test_schema_is_structural_and_bounded(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "title" not in node and "default" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
        if node.get("type") == "string" and path.count(".") > 1:
            assert "maxLength" in node or "enum" in node, f"{path} unbounded (CEL cost)"
        if node.get("type") == "array":
            assert "maxItems" in node, path
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"] and rule["rule"], path


def test_finetunejob_crd_shape() -> None:
    crd = crdgen.finetunejob_crd()
    spec = crd["spec"]
    version = spec["versions"][0]
    assert spec["scope"] == "Namespaced" and spec["names"]["shortNames"] == ["ftj"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {col["name"]: col["jsonPath"] for col in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Progress"] == ".status.progress.percent"
    assert columns["Loss"] == ".status.progress.loss" and columns["ETA"] == ".status.progress.eta"
    assert columns["Age"] == ".metadata.creationTimestamp"
    root = version["schema"]["openAPIV3Schema"]
    props = root["properties"]["spec"]["properties"]
    assert props["method"]["properties"]["type"]["enum"] == ["lora", "qlora", "full"]
    assert props["model"]["properties"]["uri"]["pattern"].startswith("^(hf://")
    assert root["properties"]["spec"]["required"] == ["dataset", "model"]
    assert root["properties"]["status"]["properties"]["phase"]["enum"][0] == "Pending"
    rules = root["x-kubernetes-validations"]
    immutable = [r for r in rules if "immutable" in r["message"]]
    assert {r["fieldPath"] for r in immutable} == {f".spec.{k}" for k in props if k not in crdgen.MUTABLE_AFTER_START}
    assert all("oldSelf.status.startTime" in r["rule"] for r in immutable)


def test_runtime_crd_is_cluster_scoped() -> None:
    crd = crdgen.runtime_crd()
    assert crd["spec"]["scope"] == "Cluster"
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"image", "resources", "nodeSelector", "tolerations", "allowedMethods", "maxNodes", "maxGpusPerNode", "defaultOutput"} <= props.keys()
    assert props["allowedMethods"]["x-kubernetes-list-type"] == "set"


@pytest.mark.parametrize("path", example_jobs(), ids=lambda p: p.stem)
def test_examples_parse(path: Any) -> None:
    """Every example parses, and what it wrote survives parsing: the fields it sets come back
    unchanged (by their camelCase names) and nothing it set was dropped or defaulted over."""
    doc = load(path)
    assert doc["apiVersion"] == "finetune.dev/v1alpha1" and doc["kind"] == "FineTuneJob" and doc["metadata"]["name"]
    spec = parse_job(doc["spec"])
    dumped = spec.model_dump(by_alias=True, exclude_none=True, mode="json")

    def written(given: Any, parsed: Any, where: str) -> None:
        if isinstance(given, dict):
            assert isinstance(parsed, dict), where
            for key, value in given.items():
                assert key in parsed, f"{where}.{key} was dropped by parse_job"
                written(value, parsed[key], f"{where}.{key}")
        elif isinstance(given, float | int) and not isinstance(given, bool):
            assert parsed == given, f"{where}: {given!r} became {parsed!r}"
        else:
            assert parsed == given, f"{where}: {given!r} became {parsed!r}"

    written(doc["spec"], dumped, "spec")
    assert spec.model.uri == doc["spec"]["model"]["uri"] and spec.dataset.uri == doc["spec"]["dataset"]["uri"]


@pytest.mark.parametrize("case", [c for c in CASES if c.parse_field is not None], ids=lambda c: c.id)
def test_malformed_rejected_by_the_models_too(case: Case) -> None:
    """Each CEL/schema rule has a pydantic twin: parse_job (used by ftctl) rejects the same specs."""
    with pytest.raises(InvalidResource) as err:
        parse_job(case.spec)
    assert (case.parse_field or case.field) in str(err.value)


def test_a_short_run_is_not_rejected_by_the_checkpoint_default() -> None:
    """checkpoint.everySteps defaults to 200; a user who sets only maxSteps: 6 wrote nothing
    wrong. An everySteps the user did write above maxSteps is still rejected (malformed.py)."""
    from tests.operator.helpers import minimal_spec

    spec = parse_job(minimal_spec(hyperparameters={"maxSteps": 6}))
    assert spec.hyperparameters.max_steps == 6
    spec = parse_job(minimal_spec(hyperparameters={"maxSteps": 6}, checkpoint={"keep": 2}))
    assert spec.checkpoint.keep == 2
    # the operator renders the parsed spec into the TrainerConfig and parses it again
    again = parse_job(spec.model_dump(by_alias=True, exclude_unset=True))
    assert again.hyperparameters.max_steps == 6
    with pytest.raises(InvalidResource, match="everySteps must not exceed"):
        parse_job(minimal_spec(hyperparameters={"maxSteps": 6}, checkpoint={"everySteps": 10}))


def test_progress_parsing() -> None:
    # the trainer's /progress document (finetune_trainer.metrics.Progress.to_json)
    p = parse_progress({"phase": "Running", "step": 30, "totalSteps": 120, "epoch": 0.25, "percent": 25.0, "loss": 0.123456, "evalLoss": None, "learningRate": 2e-4, "tokensPerSecond": 2712.33, "etaSeconds": 95.4, "trainedTokens": 4096, "worldSize": 2, "message": ""})
    assert p is not None and p.percent == 25.0 and p.loss == 0.1235 and p.tokens_per_second == 2712.3 and p.eta_seconds == 95
    assert p.trained_tokens == 4096 and p.stage == "Running" and p.eval_loss is None
    assert parse_progress({"global_step": 5, "max_steps": 10, "train_loss": "1.5"}) == parse_progress({"step": 5, "totalSteps": 10, "loss": 1.5})
    assert parse_progress("nonsense") is None and parse_progress({}) is None
    assert progress_url("10.1.2.3") == "http://10.1.2.3:9400/progress"
    assert progress_url("fd00::1") == "http://[fd00::1]:9400/progress"


def test_views_read_pods_and_jobs() -> None:
    body = yaml.safe_load(
        """
metadata:
  name: j-1-abcde
  labels: {finetune.dev/job-name: j, finetune.dev/component: trainer, finetune.dev/attempt: "2"}
  annotations: {batch.kubernetes.io/job-completion-index: "1"}
status:
  phase: Failed
  reason: Evicted
  podIP: 10.0.0.7
  startTime: "2026-01-01T00:00:00Z"
  conditions: [{type: DisruptionTarget, status: "True"}]
  containerStatuses:
  - name: trainer
    state: {terminated: {exitCode: 137, message: "oom", finishedAt: "2026-01-01T00:10:00Z"}}
"""
    )
    v = pod_view(body)
    assert (v.job, v.attempt, v.index, v.phase, v.exit_code, v.message, v.disrupted) == ("j", 2, 1, "Failed", 137, "oom", True)
    j = job_view({"metadata": {"name": "j", "labels": {"finetune.dev/attempt": "1"}}, "spec": {"suspend": True}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}})
    assert j.failed and j.failed_reason == "BackoffLimitExceeded" and j.suspended and j.attempt == 1 and not j.complete
    assert json.loads(json.dumps(v.__dict__))["name"] == "j-1-abcde"


def test_pod_view_names_what_keeps_a_pod_from_starting() -> None:
    def view(status: dict[str, Any]) -> str | None:
        return pod_view({"metadata": {"name": "p", "labels": {}}, "status": status}).blocked

    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3-creds" not found'}}
    assert view({"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": waiting}]}) == 'CreateContainerConfigError: secret "s3-creds" not found'
    pull = {"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}}
    assert view({"phase": "Pending", "initContainerStatuses": [{"name": "init", "state": pull}]}) == "ErrImagePull: pull access denied"
    unfit = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory."}
    assert view({"phase": "Pending", "conditions": [unfit]}) == "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."
    # transient states block nothing
    assert view({"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}]}) is None
    assert view({"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}) is None
    assert len(view({"phase": "Pending", "conditions": [{**unfit, "message": "x" * 5000}]}) or "") <= 400


def test_pod_view_knows_an_oom_kill_and_the_memory_limit() -> None:
    body = {
        "metadata": {"name": "p", "labels": {"finetune.dev/component": "trainer"}},
        "spec": {"containers": [{"name": "trainer", "resources": {"limits": {"memory": "8Gi"}}}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
    }
    v = pod_view(body)
    assert v.oom and v.memory_limit == "8Gi" and v.exit_code == 137
    body["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "Error"
    assert not pod_view(body).oom


def documented_fields(section: str) -> tuple[set[str], dict[str, set[str]]]:
    """The field paths a docs/api.md table documents, from the first column of each row
    (`a.b`, `c` -> a.b and a.c; `x[]` -> x), and per row path the names its other cells
    document in backticks (an object's members described in one row)."""
    import re

    paths: set[str] = set()
    members: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or set(cells[0]) <= {"-"} or cells[0] == "Field":
            continue
        row: list[str] = []
        prefix = ""
        for token in re.findall(r"`([^`]+)`", cells[0]):
            token = token.removesuffix("[]")
            if "." in token:
                prefix = token.rsplit(".", 1)[0] + "."
                row.append(token)
            else:
                row.append(prefix + token)
        paths.update(row)
        names = {t for cell in cells[1:] for t in re.findall(r"`([A-Za-z][A-Za-z0-9]*)`", cell)}
        for path in row:
            members.setdefault(path, set()).update(names)
    return paths, members


def undocumented(schema: dict[str, Any], section: str, depth: int = 2) -> list[str]:
    """Fields of `schema` (to `depth` levels) that the section's tables do not name exactly."""
    paths, members = documented_fields(section)

    def named(path: str) -> bool:
        parent, _, leaf = path.rpartition(".")
        return path in paths or any(p.startswith(path + ".") for p in paths) or (bool(parent) and leaf in members.get(parent, set()))

    missing = []

    def walk(node: dict[str, Any], prefix: str, level: int) -> None:
        for name, sub in node.get("properties", {}).items():
            path = prefix + name
            if not named(path):
                missing.append(path)
            elif level < depth and path not in members.get(path, set()):
                walk(sub, path + ".", level + 1)

    walk(schema, "", 1)
    return missing


def api_doc_sections() -> dict[str, str]:
    doc = (REPO / "docs" / "api.md").read_text()
    spec_at, status_at, runtime_at = doc.index("### spec"), doc.index("### status"), doc.index("## ClusterFineTuneRuntime")
    return {"spec": doc[spec_at:status_at], "status": doc[status_at:runtime_at], "runtime": doc[runtime_at:]}


def test_every_spec_field_is_documented() -> None:
    """Each field path of the CRDs (two levels) is named in its own table of docs/api.md: as a
    path in the first column, or as a member listed in its parent's row. A word that appears
    anywhere in the text (`uri`, `name`, `type`) does not count."""
    sections = api_doc_sections()
    schema = {name: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"] for name, crd in (("job", crdgen.finetunejob_crd()), ("runtime", crdgen.runtime_crd()))}
    assert undocumented(schema["job"]["spec"], sections["spec"]) == [], "FineTuneJob spec fields missing from docs/api.md"
    assert undocumented(schema["job"]["status"], sections["status"]) == [], "FineTuneJob status fields missing from docs/api.md"
    assert undocumented(schema["runtime"]["spec"], sections["runtime"]) == [], "ClusterFineTuneRuntime spec fields missing from docs/api.md"


def test_the_docs_check_wants_exact_paths() -> None:
    """The check itself: a field named only elsewhere in the text is missing."""
    table = "| Field | Type |\n|---|---|\n| `model.uri`, `endpoint` | string |\n| `output` | `uri`, `secretRef` |\n| `hyperparameters.seed` | int |\n"
    schema = {"properties": {
        "model": {"properties": {"uri": {}, "endpoint": {}, "name": {}}},
        "output": {"properties": {"uri": {}, "secretRef": {}, "endpoint": {}}},
        "hyperparameters": {"properties": {"seed": {}, "uri": {}}},
        "suspend": {},
    }}
    assert undocumented(schema, table) == ["model.name", "output.endpoint", "hyperparameters.uri", "suspend"]

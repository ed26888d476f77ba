"""Shared helpers for the operator tests: example manifests and Observed builders."""

from __future__ import annotations

import pathlib
from datetime import datetime, timedelta, timezone
from typing import Any

import yaml
from finetune_operator.api import ClusterFineTuneRuntimeSpec, FineTuneJobStatus, parse_runtime
from finetune_operator.plan import Observed
from finetune_operator.resolve import JobMeta, OperatorConfig
from finetune_operator.views import JobView, PodView

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GOLDEN = pathlib.Path(__file__).parent / "golden"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
UID = "11111111-2222-3333-4444-555555555555"


#: The operator settings of these tests: jobs without spec.runtimeRef run under runtime "default",
#: a permissive one (no limits, image overrides allowed) that names no image of its own.
DEFAULT_RUNTIME_NAME = "default"
DEFAULT_RUNTIME = ClusterFineTuneRuntimeSpec(allow_image_override=True)
CONFIG = OperatorConfig(default_runtime=DEFAULT_RUNTIME_NAME)
#: The runtime index of a Reconciler under test (as `runtime_record` keeps it).
RUNTIMES: dict[str, list[dict[str, Any]]] = {
    DEFAULT_RUNTIME_NAME: [{"spec": DEFAULT_RUNTIME.model_dump(by_alias=True, exclude_none=True, mode="json"), "generation": 1, "finalizers": (), "deleting": False}]
}


def runtime_copy(runtime: ClusterFineTuneRuntimeSpec = DEFAULT_RUNTIME, name: str = DEFAULT_RUNTIME_NAME) -> dict[str, Any]:
    """status.runtime as the operator writes it when a job starts under `runtime`."""
    spec = runtime if runtime.image else runtime.model_copy(update={"image": CONFIG.default_image})
    return {"name": name, "spec": spec.model_dump(by_alias=True, exclude_none=True, mode="json")}


def load(path: pathlib.Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def example_jobs() -> list[pathlib.Path]:
    return sorted(p for p in EXAMPLES.glob("*.yaml") if load(p)["kind"] == "FineTuneJob")


def example_runtimes() -> dict[str, ClusterFineTuneRuntimeSpec]:
    out = {}
    for p in sorted(EXAMPLES.glob("*.yaml")):
        doc = load(p)
        if doc["kind"] == "ClusterFineTuneRuntime":
            out[doc["metadata"]["name"]] = parse_runtime(doc["spec"])
    return out


def minimal_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "hf://org/tiny-llama"},
        "dataset": {"uri": "s3://data-bucket/train.jsonl", "format": "chat"},
        "resources": {"nodes": 2, "gpusPerNode": 4},
        "output": {"uri": "s3://out-bucket/run/", "secretRef": {"name": "s3-creds"}},
        "maxRestarts": 2,
    }
    spec.update(over)
    return spec


def pod(
    name: str,
    *,
    component: str = "trainer",
    attempt: int | None = 0,
    index: int | None = 0,
    phase: str = "Running",
    ready: bool = True,
    exit_code: int | None = None,
    message: str | None = None,
    disrupted: bool = False,
    deleting: bool = False,
    start: datetime | None = T0,
    finish: datetime | None = None,
    pod_ip: str = "10.0.0.1",
    uid: str | None = None,
    blocked: str | None = None,
    oom: bool = False,
    memory_limit: str | None = None,
    deletion_deadline: datetime | None = None,
    node: str | None = None,
) -> PodView:
    return PodView(
        name=name,
        job="job",
        component=component,
        attempt=attempt,
        index=index,
        phase=phase,
        ready=ready,
        start_time=start.isoformat().replace("+00:00", "Z") if start else None,
        finish_time=finish.isoformat().replace("+00:00", "Z") if finish else None,
        exit_code=exit_code,
        message=message,
        reason="Evicted" if disrupted else None,
        disrupted=disrupted,
        pod_ip=pod_ip,
        uid=uid or "",
        blocked=blocked,
        oom=oom,
        memory_limit=memory_limit,
        # a pod being deleted whose deadline a test does not name is well inside it
        deletion_deadline=(deletion_deadline or T0 + timedelta(days=1)).isoformat().replace("+00:00", "Z") if deleting or deletion_deadline else None,
        node=node,
    )


def job(attempt: int = 0, **over: Any) -> JobView:
    values: dict[str, Any] = dict(
        name="job",
        attempt=attempt,
        suspended=False,
        complete=False,
        failed=False,
        failed_reason=None,
        failed_message=None,
        deleting=False,
        active=2,
        ready=2,
        succeeded=0,
        failed_pods=0,
    )
    values.update(over)
    return JobView(**values)


def observed(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    *,
    validator: PodView | None = None,
    job_view: JobView | None = None,
    pods: tuple[PodView, ...] = (),
    runtime: ClusterFineTuneRuntimeSpec | None = None,
    runtime_found: bool = False,
    now: datetime = T0 + timedelta(minutes=10),
    generation: int = 1,
    **kw: Any,
) -> Observed:
    """What a reconcile observes. A job without spec.runtimeRef runs under the default runtime
    (unless `runtime` is given); a status with a phase (a job that started) carries its copy, and
    the job resolves against that copy, as the reconciler does."""
    spec = spec or minimal_spec()
    status = dict(status or {})
    config = kw.pop("config", CONFIG)
    if runtime is None and "runtimeRef" not in spec and config.default_runtime == DEFAULT_RUNTIME_NAME:
        runtime, runtime_found = DEFAULT_RUNTIME, True
        if status.get("phase") and "runtime" not in status:
            status["runtime"] = runtime_copy()
    parsed = FineTuneJobStatus.model_validate(status)
    if parsed.runtime is not None and parsed.runtime.name == config.runtime_name(spec):
        runtime, runtime_found = parsed.runtime.spec, True
    return Observed(
        meta=JobMeta(name="job", namespace="ns", uid=UID, generation=generation),
        spec=spec,
        status=parsed,
        runtime=runtime,
        runtime_found=runtime_found,
        config=config,
        validator=validator,
        job=job_view,
        pods=pods,
        now=now,
        **kw,
    )


VALIDATED = {
    "type": "Validated",
    "status": "True",
    "reason": "ValidationPassed",
    "message": "ok",
    "lastTransitionTime": "2026-01-01T12:00:00Z",
}

"""ftctl's rendering of FineTuneJobs (pure functions: job dicts in, rich renderables out).

Run: .venv/bin/python -m pytest tests/cli/test_views.py
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ftctl.views import fmt_age, fmt_duration, jobs_table, percent_of, status_view
from rich.console import Console


def text_of(renderable: Any) -> str:
    console = Console(width=140, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def job(name: str, status: dict[str, Any] | None = None, ns: str = "team-a") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T12:00:00Z"},
            "spec": {"model": {"uri": "hf://org/m"}, "method": {"type": "qlora"}}, "status": status or {}}


def test_durations_and_percent() -> None:
    assert [fmt_duration(s) for s in (5, 95, 3900, None, -1)] == ["5s", "1m35s", "1h05m", "-", "-"]
    now = dt.datetime(2026, 1, 1, 12, 2, 5, tzinfo=dt.timezone.utc)
    assert fmt_age("2026-01-01T12:00:00Z", now) == "2m05s"
    assert percent_of({"step": 30, "totalSteps": 120}) == 25.0
    assert percent_of({"percent": 12.5, "step": 1, "totalSteps": 2}) == 12.5
    assert percent_of({}) is None


def test_list_table_shows_progress_and_hides_eta_when_done() -> None:
    text = text_of(jobs_table([
        job("running", {"phase": "Running", "progress": {"step": 30, "totalSteps": 120, "loss": 0.5, "etaSeconds": 95}}),
        job("done", {"phase": "Succeeded", "progress": {"step": 120, "totalSteps": 120, "etaSeconds": 0}}),
        job("new"),
    ], all_namespaces=True))
    lines = {line.split()[1]: line for line in text.splitlines()[1:] if line.strip()}
    assert "25%" in lines["running"] and "0.5000" in lines["running"] and "1m35s" in lines["running"]
    assert "Succeeded" in lines["done"] and "100%" in lines["done"]
    assert "Pending" in lines["new"]
    assert all(line.strip().startswith("team-a") for line in lines.values())


def test_status_view_shows_message_conditions_and_output_verbatim() -> None:
    text = text_of(status_view(job("x", {
        "phase": "Failed", "message": "dataset line 7: missing field 'label' [x]", "restarts": 2,
        "workers": {"ready": 1, "total": 2},
        "output": {"adapterUri": "s3://b/p/adapter/", "manifestUri": "s3://b/p/manifest.json"},
        "conditions": [{"type": "Failed", "status": "True", "reason": "DataError", "message": "bad [row] 7"}],
    })))
    for shown in ("Failed", "dataset line 7: missing field 'label' [x]", "1/2 ready", "qlora",
                  "s3://b/p/manifest.json", "DataError: bad [row] 7"):
        assert shown in text, shown


def _v1pod(name: str, *, rank: int | None, attempt: int, created: int, component: str = "trainer") -> Any:
    from kubernetes import client

    annotations = {} if rank is None else {"batch.kubernetes.io/job-completion-index": str(rank)}
    labels = {"finetune.dev/component": component, "finetune.dev/attempt": str(attempt)}
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels, annotations=annotations,
                                     creation_timestamp=dt.datetime(2026, 1, 1, 12, created, tzinfo=dt.timezone.utc)),
        spec=client.V1PodSpec(containers=[], node_name="node-a"),
        status=client.V1PodStatus(phase="Running", container_statuses=[client.V1ContainerStatus(
            name="trainer", image="i", image_id="", ready=True, restart_count=2)]))


def test_pick_trainer_pod_by_rank_and_attempt() -> None:
    from ftctl.kube import pick_trainer_pod

    pods = [_v1pod("a0r0", rank=0, attempt=0, created=0), _v1pod("a1r1", rank=1, attempt=1, created=5),
            _v1pod("a1r0-old", rank=0, attempt=1, created=4), _v1pod("a1r0", rank=0, attempt=1, created=6)]
    assert pick_trainer_pod(pods, rank=0).metadata.name == "a1r0"  # newest attempt, newest pod
    assert pick_trainer_pod(pods, rank=1).metadata.name == "a1r1"
    assert pick_trainer_pod(pods, rank=0, attempt=0).metadata.name == "a0r0"
    assert pick_trainer_pod(pods, rank=1, attempt=0) is None
    assert pick_trainer_pod(pods, rank=2) is None


def test_describe_view_lists_events_oldest_first_and_pods_by_attempt_and_rank() -> None:
    from ftctl.views import describe_view

    j = job("d", {"phase": "Running", "message": "attempt 1", "attempt": 1, "restarts": 1,
                  "progress": {"step": 10, "totalSteps": 40},
                  "conditions": [{"type": "Validated", "status": "True", "reason": "ValidationPassed"}]})
    events = [{"type": "Warning", "reason": "Late", "message": "second", "lastTimestamp": "2026-01-01T12:05:00Z"},
              {"type": "Normal", "reason": "Early", "message": "first", "lastTimestamp": "2026-01-01T12:01:00Z", "count": 3}]
    pods = [_v1pod("t-1", rank=1, attempt=1, created=3), _v1pod("t-0", rank=0, attempt=1, created=3),
            _v1pod("old", rank=0, attempt=0, created=1), _v1pod("v", rank=None, attempt=0, created=0, component="validator")]
    text = text_of(describe_view(j, pods, events))
    assert "step 10/40" in text and "1 (restarts 1)" in text and "ValidationPassed" in text
    assert text.index("Early") < text.index("Late") and "(x3)" in text
    order = [line.split()[0] for line in text[text.index("Pods"):].splitlines()[2:] if line.strip()]
    assert order == ["old", "v", "t-0", "t-1"]
    assert "node-a" in text and " 2 " in text  # node and container restarts
    empty = text_of(describe_view(job("e"), [], "not allowed to list events in namespace 'x'"))
    assert "Conditions: <none>" in empty and "Pods: <none>" in empty
    assert "Events: not allowed to list events" in empty

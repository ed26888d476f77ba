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

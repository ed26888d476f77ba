"""Rich rendering of FineTuneJobs: the `list` table, the `status` panel and its live progress bar.

Pure functions from the job objects (plain dicts as the API server returns them) to renderables,
so they are tested without a terminal or a cluster.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
PHASE_STYLE = {
    "Succeeded": "green", "Failed": "red", "Running": "cyan", "Uploading": "cyan",
    "Suspended": "yellow", "Queued": "yellow", "Validating": "magenta", "Deleted": "dim",
}


def phase_of(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def fmt_age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    if not timestamp:
        return "-"
    try:
        t = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    now = now or dt.datetime.now(dt.timezone.utc)
    return fmt_duration((now - t).total_seconds())


def _fmt_float(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def percent_of(progress: dict[str, Any]) -> float | None:
    pct = progress.get("percent")
    if isinstance(pct, int | float):
        return float(pct)
    step, total = progress.get("step"), progress.get("totalSteps")
    if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
        return 100.0 * step / total
    return None


WIDE_COLUMNS = ("ATTEMPT", "RESTARTS", "WORKERS", "METHOD", "MODEL")


#: Column widths of the `list` table, so that the rows `list --watch` prints one by one line up.
COLUMN_WIDTHS = {"NAMESPACE": 16, "NAME": 24, "PHASE": 12, "PROGRESS": 8, "LOSS": 8, "TOKENS/S": 8, "ETA": 8, "AGE": 6}


def jobs_table(jobs: list[dict[str, Any]], *, all_namespaces: bool, wide: bool = False, header: bool = True) -> Table:
    """The `list` table; `wide` adds attempt, restarts, workers, method and model (`-o wide`);
    `header` False: rows only (one change of `list --watch`), in the same columns."""
    table = Table(box=None, header_style="bold", show_header=header)
    if all_namespaces:
        table.add_column("NAMESPACE", min_width=COLUMN_WIDTHS["NAMESPACE"])
    for col in ("NAME", "PHASE", "PROGRESS", "LOSS", "TOKENS/S", "ETA", "AGE", *(WIDE_COLUMNS if wide else ())):
        table.add_column(col, min_width=COLUMN_WIDTHS.get(col))
    for job in sorted(jobs, key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"])):
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        pct = percent_of(progress)
        phase = phase_of(job)
        row = [
            job["metadata"]["name"],
            Text(phase, style=PHASE_STYLE.get(phase, "")),
            f"{pct:.0f}%" if pct is not None else "-",
            _fmt_float(progress.get("loss")),
            _fmt_float(progress.get("tokensPerSecond"), 0),
            fmt_duration(progress.get("etaSeconds")) if phase not in TERMINAL_PHASES else "-",
            fmt_age(job["metadata"].get("creationTimestamp")),
        ]
        if wide:
            spec = job.get("spec") or {}
            workers = status.get("workers") or {}
            row += [
                str(status.get("attempt", 0)),
                str(status.get("restarts", 0)),
                f"{workers.get('ready', 0)}/{workers.get('total', '?')}" if workers else "-",
                str((spec.get("method") or {}).get("type", "lora")),
                str((spec.get("model") or {}).get("uri", "-")),
            ]
        if all_namespaces:
            row.insert(0, job["metadata"].get("namespace", ""))
        table.add_row(*row)
    return table


def details_table(job: dict[str, Any]) -> Table:
    """Key facts of one job: phase, workers, restarts, timing, output, conditions."""
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    phase = phase_of(job)
    t.add_row("Job", f"{job['metadata'].get('namespace', '')}/{job['metadata']['name']}")
    t.add_row("Phase", Text(phase, style=PHASE_STYLE.get(phase, "")))
    if status.get("message"):
        t.add_row("Message", Text(str(status["message"])))
    t.add_row("Model", str((spec.get("model") or {}).get("uri", "-")))
    t.add_row("Method", str((spec.get("method") or {}).get("type", "lora")))
    workers = status.get("workers") or {}
    if workers:
        t.add_row("Workers", f"{workers.get('ready', 0)}/{workers.get('total', '?')} ready")
    t.add_row("Restarts", str(status.get("restarts", 0)))
    if status.get("startTime"):
        t.add_row("Started", str(status["startTime"]))
    if status.get("completionTime"):
        t.add_row("Completed", str(status["completionTime"]))
    if status.get("trainedTokens") is not None:
        t.add_row("Tokens", f"{status['trainedTokens']:,}")
    output = status.get("output") or {}
    for key, label in (("adapterUri", "Adapter"), ("manifestUri", "Manifest")):
        if output.get(key):
            t.add_row(label, str(output[key]))
    for cond in status.get("conditions") or []:
        true = cond.get("status") == "True"
        t.add_row(f"  {cond.get('type')}", Text.assemble(
            (str(cond.get("status")), "green" if true else "dim"), " ",
            f"{cond.get('reason', '')}: {cond.get('message', '')}"))
    return t


def progress_bar(job: dict[str, Any]) -> Progress:
    """A one-task rich Progress reflecting `.status.progress` (recreated on every refresh)."""
    progress = (job.get("status") or {}).get("progress") or {}
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=40),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        auto_refresh=False,
    )
    total = progress.get("totalSteps")
    step = progress.get("step") or 0
    pct = percent_of(progress)
    if not isinstance(total, int | float) or total <= 0:
        total, step = 100.0, pct or 0.0
    detail = "  ".join(
        part for part in (
            f"step {progress.get('step', 0)}/{progress.get('totalSteps', '?')}",
            f"loss {_fmt_float(progress.get('loss'))}",
            f"{_fmt_float(progress.get('tokensPerSecond'), 0)} tok/s",
            f"ETA {fmt_duration(progress.get('etaSeconds'))}",
        )
    )
    bar.add_task(phase_of(job), total=float(total), completed=int(step), detail=detail)
    return bar


def status_view(job: dict[str, Any]) -> Group:
    return Group(details_table(job), Text(""), progress_bar(job))


# --- describe ---------------------------------------------------------------------------------
def _get(obj: Any, *path: str) -> Any:
    """Attribute path on a kubernetes client model, or key path on a dict (tests pass either)."""
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def summary_table(job: dict[str, Any]) -> Table:
    """Phase, message, attempt/restarts, workers, progress, timing and output of one job."""
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    meta = job["metadata"]
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    phase = phase_of(job)
    t.add_row("Name", f"{meta.get('namespace', '')}/{meta['name']}")
    t.add_row("Phase", Text(phase, style=PHASE_STYLE.get(phase, "")))
    t.add_row("Message", Text(str(status.get("message") or "-")))
    t.add_row("Model", f"{(spec.get('model') or {}).get('uri', '-')} ({(spec.get('method') or {}).get('type', 'lora')})")
    max_restarts = spec.get("maxRestarts")
    restarts = f"{status.get('restarts', 0)}" + (f" of {max_restarts}" if max_restarts is not None else "")
    disruptions = f", disruptions {status['disruptions']}" if status.get("disruptions") else ""
    t.add_row("Attempt", f"{status.get('attempt', 0)} (restarts {restarts}{disruptions})")
    workers = status.get("workers") or {}
    if workers:
        t.add_row("Workers", f"{workers.get('ready', 0)}/{workers.get('total', '?')} ready")
    progress = status.get("progress") or {}
    if progress:
        pct = percent_of(progress)
        parts = [f"step {progress.get('step', 0)}/{progress.get('totalSteps', '?')}"]
        if pct is not None:
            parts.append(f"{pct:.0f}%")
        parts += [f"loss {_fmt_float(progress.get('loss'))}",
                  f"{_fmt_float(progress.get('tokensPerSecond'), 0)} tok/s"]
        if phase not in TERMINAL_PHASES:
            parts.append(f"ETA {fmt_duration(progress.get('etaSeconds'))}")
        t.add_row("Progress", "  ".join(parts))
    t.add_row("Age", fmt_age(meta.get("creationTimestamp")))
    for key, label in (("startTime", "Started"), ("completionTime", "Completed")):
        if status.get(key):
            t.add_row(label, str(status[key]))
    output = status.get("output") or {}
    for key, label in (("adapterUri", "Adapter"), ("manifestUri", "Manifest")):
        if output.get(key):
            t.add_row(label, str(output[key]))
    return t


def conditions_table(job: dict[str, Any]) -> Table:
    table = Table(title="Conditions", title_justify="left", title_style="bold", box=None, header_style="bold")
    for col in ("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"):
        table.add_column(col)
    for cond in (job.get("status") or {}).get("conditions") or []:
        true = cond.get("status") == "True"
        table.add_row(str(cond.get("type", "")), Text(str(cond.get("status", "")), style="green" if true else "dim"),
                      str(cond.get("reason") or ""), fmt_age(cond.get("lastTransitionTime")),
                      Text(str(cond.get("message") or "")))
    return table


def event_time(event: Any) -> str | None:
    """When an event last happened (lastTimestamp, else eventTime, else firstTimestamp)."""
    for key in ("last_timestamp", "event_time", "first_timestamp", "lastTimestamp", "eventTime", "firstTimestamp"):
        value = _iso(_get(event, key))
        if value:
            return value
    return _iso(_get(event, "metadata", "creation_timestamp") or _get(event, "metadata", "creationTimestamp"))


def sorted_events(events: list[Any]) -> list[Any]:
    """Oldest first, as `kubectl describe` lists them (the newest is next to the prompt)."""
    def key(e: Any) -> dt.datetime:
        text = event_time(e)
        try:
            return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else _EPOCH
        except ValueError:
            return _EPOCH

    return sorted(events, key=key)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def events_table(events: list[Any]) -> Table:
    table = Table(title="Events", title_justify="left", title_style="bold", box=None, header_style="bold")
    for col in ("TYPE", "REASON", "AGE", "FROM", "MESSAGE"):
        table.add_column(col)
    for e in sorted_events(events):
        kind = str(_get(e, "type") or "Normal")
        count = _get(e, "count")
        age = fmt_age(event_time(e))
        source = _get(e, "source", "component") or _get(e, "reporting_component") or _get(e, "reportingComponent") or ""
        table.add_row(Text(kind, style="red" if kind == "Warning" else ""), str(_get(e, "reason") or ""),
                      f"{age} (x{count})" if isinstance(count, int) and count > 1 else age,
                      str(source), Text(str(_get(e, "message") or "").strip()))
    return table


def pods_table(pods: list[Any]) -> Table:
    """The job's pods: validator and trainers, by attempt then rank."""
    from finetune_trainer import contract

    from .kube import pod_attempt, pod_rank

    table = Table(title="Pods", title_justify="left", title_style="bold", box=None, header_style="bold")
    for col in ("NAME", "COMPONENT", "ATTEMPT", "RANK", "PHASE", "RESTARTS", "NODE", "AGE"):
        table.add_column(col)

    def key(p: Any) -> tuple[int, str, int, str]:
        rank = pod_rank(p)
        return (pod_attempt(p) or 0, str((_get(p, "metadata", "labels") or {}).get(contract.LABEL_COMPONENT, "")),
                -1 if rank is None else rank, str(_get(p, "metadata", "name")))

    for p in sorted(pods, key=key):
        labels = _get(p, "metadata", "labels") or {}
        rank, attempt = pod_rank(p), pod_attempt(p)
        phase = str(_get(p, "status", "phase") or "Pending")
        restarts = sum(int(_get(c, "restart_count") or 0) for c in _get(p, "status", "container_statuses") or [])
        table.add_row(str(_get(p, "metadata", "name")), str(labels.get(contract.LABEL_COMPONENT, "-")),
                      "-" if attempt is None else str(attempt), "-" if rank is None else str(rank),
                      Text(phase, style=PHASE_STYLE.get(phase, "")), str(restarts),
                      str(_get(p, "spec", "node_name") or "-"),
                      fmt_age(_iso(_get(p, "metadata", "creation_timestamp"))))
    return table


def describe_view(job: dict[str, Any], pods: list[Any] | str, events: list[Any] | str) -> Group:
    """`ftctl describe`: summary, conditions, events and pods on one screen. `pods`/`events` may
    be a message instead (e.g. listing them was not allowed)."""
    parts: list[Any] = [summary_table(job)]
    conditions = (job.get("status") or {}).get("conditions") or []
    sections: list[tuple[str, list[Any] | str, Any]] = [
        ("Conditions", conditions, lambda _: conditions_table(job)),
        ("Events", events, events_table),
        ("Pods", pods, pods_table),
    ]
    for title, rows, render in sections:
        parts.append(Text(""))
        if isinstance(rows, str):
            parts.append(Text.assemble((f"{title}: ", "bold"), (rows, "yellow")))
        elif not rows:
            parts.append(Text.assemble((f"{title}: ", "bold"), ("<none>", "dim")))
        else:
            parts.append(render(rows))
    return Group(*parts)

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
    "Suspended": "yellow", "Queued": "yellow", "Validating": "magenta",
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


def jobs_table(jobs: list[dict[str, Any]], *, all_namespaces: bool) -> Table:
    table = Table(box=None, header_style="bold")
    if all_namespaces:
        table.add_column("NAMESPACE")
    for col in ("NAME", "PHASE", "PROGRESS", "LOSS", "TOKENS/S", "ETA", "AGE"):
        table.add_column(col)
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

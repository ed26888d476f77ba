"""Operator metrics (prometheus-client, `finetune_operator_` prefix), served by `main`.

Labels are constants (phase, error kind, failure reason), never job names, namespaces or anything
from a spec, so cardinality stays fixed however many jobs come and go, and no user data (let alone
a Secret) can reach a label. Which job failed is in its status, its events and `kubectl get ftj -A`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client import Counter, Gauge, Histogram

from finetune_operator import constants as c

LEADER = Gauge("finetune_operator_leader", "1 on the replica that holds the leader Lease and acts, 0 on a standby")
JOBS = Gauge("finetune_operator_jobs", "FineTuneJobs known to the operator, by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "finetune_operator_reconcile_duration_seconds",
    "Time to reconcile one FineTuneJob (compute + API calls)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# prometheus-client adds the _total suffix to counters.
ERRORS = Counter("finetune_operator_errors", "Reconciles that failed (retried with backoff)", ["kind"])
RESTARTS = Counter("finetune_operator_restarts", "Group restarts of FineTuneJobs after a failed attempt")
# For the chart's FineTuneJobFailed alert; every reason is exported at 0 from the start.
JOB_FAILURES = Counter("finetune_operator_job_failures", "FineTuneJobs that entered phase Failed, by reason", ["reason"])
APPLIES = Counter("finetune_operator_applies", "Server-side applies of child objects", ["kind"])
STATUS_PATCHES = Counter("finetune_operator_status_patches", "Status subresource patches")
COALESCED = Counter(
    "finetune_operator_reconciles_coalesced",
    "Watch events covered by a reconcile already queued for the same FineTuneJob",
)
UNCHANGED = Counter(
    "finetune_operator_reconciles_unchanged",
    "Watch events that changed nothing a reconcile reads (answered without computing a plan)",
)

for _phase in c.PHASES:
    JOBS.labels(_phase).set(0)
for _reason in c.FAILURE_REASONS:
    JOB_FAILURES.labels(_reason)


class PhaseBook:
    """Phase of every FineTuneJob seen, so `finetune_operator_jobs{phase}` is exact."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            JOBS.labels(old).dec()
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
            JOBS.labels(phase).inc()

    def forget(self, key: tuple[str, str]) -> None:
        self.set(key, None)


class GpuBook:
    """(start, GPUs) of the running trainer pods of every job, as the last reconcile saw them:
    `finetune_operator_running_gpus` and `finetune_operator_running_gpu_seconds` (the GPU time
    of pods still running, which status.gpuSeconds adds once each pod ends) are computed from
    it at scrape time, so the live figure moves without a status write."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], tuple[tuple[datetime, int], ...]] = {}

    def set(self, key: tuple[str, str], running: tuple[tuple[datetime, int], ...]) -> None:
        if running:
            self._running[key] = running
        else:
            self._running.pop(key, None)

    def forget(self, key: tuple[str, str]) -> None:
        self._running.pop(key, None)

    def gpus(self) -> float:
        return float(sum(g for pods in self._running.values() for _, g in pods))

    def seconds(self, now: datetime | None = None) -> float:
        now = now or datetime.now(timezone.utc)
        return sum(max((now - start).total_seconds(), 0.0) * g for pods in self._running.values() for start, g in pods)


GPU_BOOK = GpuBook()
RUNNING_GPUS = Gauge("finetune_operator_running_gpus", "GPUs held by running trainer pods of all FineTuneJobs")
RUNNING_GPUS.set_function(GPU_BOOK.gpus)
RUNNING_GPU_SECONDS = Gauge(
    "finetune_operator_running_gpu_seconds",
    "GPU-seconds so far of trainer pods still running (not yet in any FineTuneJob's status.gpuSeconds)",
)
RUNNING_GPU_SECONDS.set_function(GPU_BOOK.seconds)

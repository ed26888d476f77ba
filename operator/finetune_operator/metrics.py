"""Operator metrics (prometheus-client, `finetune_operator_` prefix), served by `main`.

Labels are constants (phase, error kind), never job names or anything from a spec, so cardinality
stays fixed and no user data (let alone a Secret) can reach a label.
"""

from __future__ import annotations

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
# Per job, for alerts that name the job (FineTuneJobFailed in the chart); reasons are constants.
JOB_FAILURES = Counter("finetune_operator_job_failures", "FineTuneJobs that entered phase Failed", ["namespace", "name", "reason"])
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

"""Reconcile one FineTuneJob: gather what the watches saw, `plan.decide`, execute the plan.

Level-triggered: any event on a FineTuneJob, its runtime, its Job or its pods, and a periodic
resync, runs the same function for that job; a per-job lock serializes runs. The plan is
executed in a fixed order (a plan that deletes writes its status first, conditional on the observed
resourceVersion, then deletes by UID; then children are applied, one status patch if the status changed, then
events), so a run interrupted half-way is completed by the next one. Failed runs are retried with
exponential backoff.

Watch handlers only `enqueue` the job's key and return, as a controller's work queue does: kopf
drops the event's body at once, and `concurrency` workers take keys from the queue. A key is in
the queue at most once, so the events that arrive while it waits are covered by that one run
(it reads the indexes when it starts); an event that changed nothing the plan reads (the echo of
the operator's own status write, a pod scheduled but still Pending) is answered without running
`decide`. A burst of thousands of jobs therefore holds a bounded number of bodies and rendered
plans in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from finetune_operator import constants as c
from finetune_operator import metrics
from finetune_operator.api import (
    ClusterFineTuneRuntimeSpec,
    FineTuneJobStatus,
    InvalidResource,
    Progress,
    parse_runtime,
    parse_status,
)
from finetune_operator.kube import Kube, KubeError
from finetune_operator.plan import Observed, Plan, decide
from finetune_operator.progress import progress_url
from finetune_operator.resolve import JobMeta, OperatorConfig
from finetune_operator.views import JobView, PodView, WorkloadView, parse_time, workload_view

ct = c.contract
log = logging.getLogger(__name__)
Key = tuple[str, str]
Index = Mapping[Any, Collection[Any]]

RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
#: Crash points for the chaos suite (tests/chaos): FINETUNE_OPERATOR_FAILPOINTS=restart-recorded
#: makes the process SIGKILL itself at that point of a restart, once the status is written and
#: before the failed attempt's Job is deleted (restart-deleted: after the delete, before the new
#: Job). Read once at start; unset in any real deployment.
FAILPOINTS = frozenset(filter(None, os.environ.get("FINETUNE_OPERATOR_FAILPOINTS", "").split(",")))


def _failpoint(name: str) -> None:
    if name in FAILPOINTS:
        log.warning("failpoint %s reached: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)
@dataclass
class _Request:
    """A queued reconcile: forced (timers), with fresh progress (the progress loop), or neither."""

    force: bool = False
    progress: Progress | None = None


@dataclass
class Indexes:
    """The kopf indexes (live, updated in place by kopf) the reconciler reads from."""

    jobs: Index  # (ns, name) -> [FineTuneJob record]
    runtimes: Index  # name -> [runtime record: spec, generation, finalizers, deleting]
    children: Index  # (ns, job) -> [JobView]
    pods: Index  # (ns, job) -> [PodView]

    def ftj(self, key: Key) -> dict[str, Any] | None:
        store = self.jobs.get(key)
        return next(iter(store), None) if store else None

    def runtime(self, name: str) -> dict[str, Any] | None:
        """The runtime's record (`runtime_record`), None when there is none by that name."""
        store = self.runtimes.get(name)
        return next(iter(store), None) if store else None

    def training_job(self, key: Key) -> JobView | None:
        return pick_training_job(self.job_views(key))

    def job_views(self, key: Key) -> list[JobView]:
        return [v for v in (self.children.get(key) or ()) if isinstance(v, JobView)]

    def pod_views(self, key: Key) -> tuple[PodView, ...]:
        pods = tuple(v for v in (self.pods.get(key) or ()) if isinstance(v, PodView))
        if all(p.attempt is not None or p.component != ct.COMPONENT_TRAINER for p in pods):
            return pods
        # Kueue, when it stops a Job (eviction, a deactivated Workload), resets its pod template's
        # labels to the Workload's, which cannot name the attempt (one Workload serves them all):
        # such a pod's attempt is that of the Job that controls it.
        attempts = {j.uid: j.attempt for j in self.job_views(key) if j.uid}
        return tuple(
            replace(p, attempt=attempts.get(p.owner_uid)) if p.attempt is None and p.component == ct.COMPONENT_TRAINER else p for p in pods
        )

    def keys_using_runtime(self, name: str, config: OperatorConfig) -> list[Key]:
        """Jobs that name this runtime (or use it as the default) and have no copy of it yet."""
        return [
            k
            for k, store in self.jobs.items()
            for rec in store
            if config.runtime_name(rec.get("spec") or {}) == name and not (rec.get("status") or {}).get("runtime")
        ]


def runtime_record(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the runtime index keeps per ClusterFineTuneRuntime."""
    meta = body.get("metadata") or {}
    return {
        "spec": _plain(body.get("spec") or {}),
        "generation": meta.get("generation"),
        "resourceVersion": meta.get("resourceVersion"),
        "finalizers": tuple(meta.get("finalizers") or ()),
        "deleting": meta.get("deletionTimestamp") is not None,
    }


def pick_training_job(views: list[JobView]) -> JobView | None:
    """Normally one; while an attempt is replaced, the newest attempt wins."""
    return max(views, key=lambda v: (v.attempt or 0, not v.deleting), default=None)


#: What a finished job's record keeps (see `ftj_record`).
FINISHED_SPEC_KEYS = ("ttlSecondsAfterFinished", "runtimeRef")
FINISHED_STATUS_KEYS = ("phase", "completionTime", "observedGeneration", "attempt", "restarts")


def ftj_record(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the FineTuneJob index keeps per job.

    A finished job (Succeeded, or Failed for a reason an edit of the spec cannot retry) keeps only
    what is still decided about it: its TTL, its runtime's name (for the index), its phase and
    completion time, and its Failed condition. Thousands of finished jobs kept without a TTL so
    cost a few hundred bytes each instead of their whole spec and status. `settled`: a finished
    job without a TTL, which no reconcile needs to look at again.
    """
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    finished = _finished(status)
    if finished:
        conditions = [_plain(x) for x in status.get("conditions") or () if isinstance(x, Mapping) and x.get("type") == c.COND_FAILED]
        spec = {k: spec[k] for k in FINISHED_SPEC_KEYS if k in spec}
        status = {**{k: status[k] for k in FINISHED_STATUS_KEYS if k in status}, **({"conditions": conditions} if conditions else {})}
    return {
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion"),
        "generation": int(meta.get("generation") or 1),
        "deleting": meta.get("deletionTimestamp") is not None,
        "spec": _plain(spec),
        "status": _plain(status),
        "settled": finished and spec.get("ttlSecondsAfterFinished") is None,
    }


def _finished(status: Mapping[str, Any]) -> bool:
    phase = status.get("phase")
    if phase == c.PHASE_SUCCEEDED:
        return True
    if phase != c.PHASE_FAILED:
        return False
    failed = next((x for x in status.get("conditions") or () if isinstance(x, Mapping) and x.get("type") == c.COND_FAILED), None)
    return failed is not None and failed.get("reason") not in c.SPEC_FAILURE_REASONS


def _snapshot(status: FineTuneJobStatus | Mapping[str, Any]) -> tuple[str | None, Any, Any]:
    """(name, spec, generation) of the runtime copy in a status (the spec parsed already when the
    status is this process's own)."""
    if isinstance(status, FineTuneJobStatus):
        snap = status.runtime
        return (snap.name, snap.spec, snap.generation) if snap else (None, None, None)
    raw = status.get("runtime")
    if not isinstance(raw, Mapping):
        return None, None, None
    return raw.get("name"), raw.get("spec"), raw.get("generation")


def _ours(metadata: Mapping[str, Any], job: str) -> bool:
    """An existing object with a child's name is this operator's to update when it carries the
    operator's labels for this job name (a namesake's leftover included: it is replaced)."""
    labels = metadata.get("labels") or {}
    return bool(labels.get(ct.LABEL_MANAGED_BY) == ct.MANAGED_BY and labels.get(ct.LABEL_JOB_NAME) == job)


_WORKLOADS = frozenset({"Job", "Pod"})  # children that use the ConfigMap and Service
#: API answers to a child's create/apply that retrying at once cannot change (reported on the job).
REJECTED_STATUSES = frozenset({400, 403, 404, 422})


def _child_key(manifest: dict[str, Any]) -> tuple[str, str]:
    return (manifest["kind"], manifest["metadata"]["name"])


def _digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        clock: Callable[[], datetime] | None = None,
        concurrency: int = 32,
    ) -> None:
        self.kube = kube
        self.config = config
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.indexes: Indexes | None = None
        self.phases = metrics.PhaseBook()
        #: Queue workers: the bound on reconciles (and rendered plans) in flight at once.
        self.concurrency = concurrency
        self._locks: dict[Key, asyncio.Lock] = {}
        #: The work queue: keys waiting for a reconcile, each at most once.
        self._pending: dict[Key, _Request] = {}
        self._work: asyncio.Queue[Key] = asyncio.Queue()
        #: Keys a worker holds now: an event for one waits in _pending (client-go's dirty set)
        #: instead of parking a second worker on the key's lock.
        self._processing: set[Key] = set()
        #: What the last completed reconcile of each job read; the same inputs give the same plan.
        self._inputs: dict[Key, tuple[Any, ...]] = {}
        #: Last status this process wrote, per job (uid, status): newer than the watch cache.
        self._written: dict[Key, tuple[str, FineTuneJobStatus]] = {}
        self._retry: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        #: Keys whose last run could not finish its plan (they keep their backoff count).
        self._incomplete: set[Key] = set()
        #: (namespace, kind, name) -> digest of the manifest this process last applied.
        #: Per job: (kind, name) -> digest of the manifest this process last applied. Only saves
        #: requests: dropped when the child is deleted or the job forgotten.
        self._applied: dict[Key, dict[tuple[str, str], str]] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: Per job: ConfigMaps and Services the watch has shown with our labels (kind, name).
        self._seen: dict[Key, set[tuple[str, str]]] = {}
        #: Per job: children whose names objects of someone else hold (kind, name), as the last
        #: create found them; looked at again (with backoff) until the name is free.
        self._taken: dict[Key, tuple[tuple[str, str], ...]] = {}
        #: Per job: the child the API server last refused ("Kind name: message", a 400/403/404/
        #: 422: a quota, Pod Security, a missing ServiceAccount): said on the job until it goes in.
        self._rejected: dict[Key, str] = {}
        #: Per job whose Job has no pods: (when the Job controller's FailedCreate events were last
        #: read, the newest message). Read at most every c.FAILED_CREATE_SECONDS, only in that state.
        self._failed_create: dict[Key, tuple[float, str | None]] = {}
        #: Ended jobs (by FineTuneJob UID) whose Workload was seen holding no quota: not read again.
        self._settled_workloads: dict[Key, str] = {}
        #: Unfinished jobs per runtime their status.runtime copy names (and the reverse): a
        #: runtime with users carries RUNTIME_FINALIZER. Built from the index once, then kept.
        self._users: dict[str, set[Key]] = {}
        self._uses: dict[Key, str] = {}
        self._users_built = False

    # --- entry points -------------------------------------------------------------------------
    def enqueue(self, key: Key, force: bool = False, progress: Progress | None = None) -> None:
        """Ask for a reconcile of `key`; returns at once. `force` runs `decide` even if nothing it
        reads has changed (the periodic resync and timed retries: time itself moved on);
        `progress` is rank 0's latest report, folded into the status."""
        queued = self._pending.get(key)
        if queued is not None:
            queued.force = queued.force or force
            queued.progress = progress or queued.progress
            metrics.COALESCED.inc()
            return
        self._pending[key] = _Request(force, progress)
        if key in self._processing:
            return  # dirty: queued again when the worker holding it is done (never a second worker)
        self._work.put_nowait(key)

    def start(self) -> list[asyncio.Task[None]]:
        """The queue's workers (cancel them to stop)."""
        return [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]

    async def _worker(self) -> None:
        while True:
            key = await self._work.get()
            req = self._pending.pop(key, None) or _Request()
            self._processing.add(key)
            try:
                await self.reconcile(key, progress=req.progress, force=req.force)
            except Exception:  # reconcile handles its own errors; a worker must never die
                log.exception("work queue: %s/%s failed", key[0], key[1])
            finally:
                self._processing.discard(key)
                if key in self._pending:  # events that came in meanwhile: one more run
                    self._work.put_nowait(key)

    async def reconcile(self, key: Key, progress: Progress | None = None, force: bool = False) -> Plan | None:
        """Reconcile one job now (the queue's workers call this)."""
        if self.indexes is None or (rec := self.indexes.ftj(key)) is None:
            return None  # not (or no longer) a FineTuneJob: events of its children's deletion
        if rec.get("settled"):
            # Finished, no TTL: nothing is left to decide. What this process kept about the job
            # goes (the record in the index says all there is), so memory follows live work.
            self._drop_state(key)
            self.phases.set(key, rec["status"].get("phase"))
            return None
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            started = time.perf_counter()
            try:
                plan = await self._reconcile(key, progress, force)
            except (KubeError, OSError) as err:
                metrics.ERRORS.labels("api").inc()
                self._schedule_retry(key, failed=True)
                log.warning("reconcile %s/%s failed (will retry): %r", key[0], key[1], err)
                return None
            except Exception:
                metrics.ERRORS.labels("internal").inc()
                self._schedule_retry(key, failed=True)
                log.exception("reconcile %s/%s crashed (will retry)", key[0], key[1])
                return None
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
            if key not in self._incomplete:
                self._failures.pop(key, None)
            if plan is not None and plan.requeue_after is not None:
                self._schedule_retry(key, delay=plan.requeue_after)
            return plan

    def active_keys(self) -> list[Key]:
        """Jobs not yet Succeeded/Failed (for the periodic resync)."""
        if self.indexes is None:
            return []
        return [k for k, store in list(self.indexes.jobs.items()) for rec in store if self._phase(k, rec) not in c.TERMINAL_PHASES]

    def progress_targets(self) -> list[tuple[Key, str]]:
        """(job, rank 0's /progress URL) for every job whose trainers may be running."""
        if self.indexes is None:
            return []
        out = []
        for key, store in list(self.indexes.jobs.items()):
            for rec in store:
                if self._phase(key, rec) not in c.PROGRESS_PHASES:
                    continue
                attempt = (rec.get("status") or {}).get("attempt", 0)
                written = self._written.get(key)
                if written is not None:
                    attempt = written[1].attempt
                rank0 = next(
                    (
                        p
                        for p in self.indexes.pod_views(key)
                        if p.component == ct.COMPONENT_TRAINER
                        and p.index == 0
                        and p.attempt == attempt
                        and p.job_uid in ("", rec.get("uid"))
                        and p.phase == "Running"
                        and p.pod_ip
                    ),
                    None,
                )
                if rank0 is not None and rank0.pod_ip:
                    out.append((key, progress_url(rank0.pod_ip)))
        return out

    def _phase(self, key: Key, rec: dict[str, Any]) -> str | None:
        written = self._written.get(key)
        if written is not None and written[0] == rec.get("uid"):
            return written[1].phase
        return (rec.get("status") or {}).get("phase")

    def forget(self, key: Key) -> None:
        self._drop_state(key)
        self.phases.forget(key)
        self._use_runtime(key, None)

    # --- runtimes in use ----------------------------------------------------------------------------
    def runtime_changed(self, name: str) -> None:
        """A runtime's watch event: its finalizer is brought in line with its users."""
        self._background_task(self._sync_finalizer(name))

    def _build_users(self) -> None:
        """Once, from the FineTuneJob index (complete before any handler runs): unfinished jobs
        with a runtime copy. From then on every status write and forget keeps it."""
        if self._users_built or self.indexes is None:
            return
        self._users_built = True
        for key, store in self.indexes.jobs.items():
            for rec in store:
                status = rec.get("status") or {}
                copy = status.get("runtime")
                name = copy.get("name") if isinstance(copy, Mapping) else None
                if name and not rec.get("deleting") and status.get("phase") not in c.TERMINAL_PHASES and key not in self._uses:
                    self._uses[key] = name
                    self._users.setdefault(name, set()).add(key)

    def _use_runtime(self, key: Key, name: str | None) -> None:
        """Job `key` now uses runtime `name` (None: none, it finished or is gone)."""
        self._build_users()
        old = self._uses.get(key)
        if old == name:
            return
        if old is not None:
            del self._uses[key]
            users = self._users.get(old, set())
            users.discard(key)
            if not users:
                self._users.pop(old, None)
                self.runtime_changed(old)
        if name is not None:
            self._uses[key] = name
            users = self._users.setdefault(name, set())
            users.add(key)
            if len(users) == 1:
                self.runtime_changed(name)

    async def _sync_finalizer(self, name: str) -> None:
        """Add RUNTIME_FINALIZER to a runtime that has users, remove it from one that has none
        (deleting it then completes). Conditional on the observed version: a conflict is settled
        by the watch event that follows it."""
        self._build_users()
        rec = self.indexes.runtime(name) if self.indexes is not None else None
        if rec is None:
            return
        want = bool(self._users.get(name))
        finalizers = list(rec.get("finalizers") or ())
        has = c.RUNTIME_FINALIZER in finalizers
        if want == has or (want and rec.get("deleting")):
            return  # (no finalizer can be added to an object being deleted)
        wanted = [f for f in finalizers if f != c.RUNTIME_FINALIZER] + ([c.RUNTIME_FINALIZER] if want else [])
        try:
            await self.kube.set_runtime_finalizers(name, wanted, str(rec.get("resourceVersion") or ""))
        except KubeError as err:
            log.warning("could not %s the finalizer of runtime %s: %s", "add" if want else "remove", name, err)

    def _background_task(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a synchronous caller in tests): nothing to send
            coro.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _drop_state(self, key: Key) -> None:
        self._taken.pop(key, None)
        self._rejected.pop(key, None)
        self._failed_create.pop(key, None)
        self._settled_workloads.pop(key, None)
        self._seen.pop(key, None)
        self._written.pop(key, None)
        self._inputs.pop(key, None)
        self._applied.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self._failures.pop(key, None)
        self._incomplete.discard(key)
        handle = self._retry.pop(key, None)
        if handle is not None:
            handle.cancel()
        metrics.GPU_BOOK.forget(key)

    def child_gone(self, namespace: str, job: str, kind: str, name: str) -> None:
        """A child was deleted: what this process applied to it is no longer there (the next
        plan that wants it sends it again)."""
        self._applied.get((namespace, job), {}).pop((kind, name), None)
        self._seen.get((namespace, job), set()).discard((kind, name))

    def child_seen(self, namespace: str, job: str, kind: str, name: str) -> None:
        """A ConfigMap or Service with the operator's labels for `job` exists (watch event): the
        next apply of it needs no create-or-inspect round first. Not kept for settled jobs."""
        key = (namespace, job)
        rec = self.indexes.ftj(key) if self.indexes is not None else None
        if rec is not None and not rec.get("settled"):
            self._seen.setdefault(key, set()).add((kind, name))

    def observed_phase(self, key: Key) -> str | None:
        written = self._written.get(key)
        return written[1].phase if written else None

    # --- internals ----------------------------------------------------------------------------
    async def _reconcile(self, key: Key, progress: Progress | None, force: bool = False) -> Plan | None:
        assert self.indexes is not None
        rec = self.indexes.ftj(key)
        if rec is None or rec["deleting"]:
            return None
        ns, name = key
        meta = JobMeta(name=name, namespace=ns, uid=rec["uid"], generation=rec["generation"])
        ref, raw, found, generation = self._runtime(key, rec)
        # Children belong to a UID, not a name: those labelled for another FineTuneJob UID (a
        # deleted namesake) are never adopted. Unlabelled ones predate the label and count as ours.
        uid = rec["uid"]
        all_pods = self.indexes.pod_views(key)
        pods = tuple(p for p in all_pods if p.job_uid in ("", uid))
        jobs = self.indexes.job_views(key)
        job = pick_training_job([j for j in jobs if j.job_uid in ("", uid)])
        leftovers: tuple[PodView | JobView, ...] = (
            *(j for j in jobs if j.job_uid not in ("", uid)),
            # a leftover Job's trainer pods go with it; a validator pod is owned by the FineTuneJob
            *(p for p in all_pods if p.job_uid not in ("", uid) and p.component == ct.COMPONENT_VALIDATOR),
        )
        # Everything `decide` reads except the clock. Views are frozen dataclasses, compared by
        # identity first, so this costs little next to `decide`.
        if key in self._taken:
            await self._recheck_taken(key)
        taken = tuple(f"{kind} {child}" for kind, child in self._taken.get(key, ()))
        create_error = await self._job_create_error(key, job, pods)
        workload, workload_api = await self._workload(key, rec)
        inputs = (meta, rec["spec"], self._last_status(key, rec), raw, found, job, pods, leftovers, taken, self._rejected.get(key), create_error, workload, workload_api)
        if progress is None and not force and self._inputs.get(key) == inputs:
            metrics.UNCHANGED.inc()
            return None
        self._inputs.pop(key, None)  # recorded again only once this run completes
        last = inputs[2]
        previous = last if isinstance(last, FineTuneJobStatus) else parse_status(last)

        runtime = None
        if raw is not None:
            try:
                runtime = raw if isinstance(raw, ClusterFineTuneRuntimeSpec) else parse_runtime(raw)
            except InvalidResource as err:
                log.warning("ClusterFineTuneRuntime %s is invalid: %s", ref, err)
                found = False
        validator = next((p for p in pods if p.component == ct.COMPONENT_VALIDATOR), None)
        observed = Observed(
            meta=meta,
            spec=rec["spec"],
            status=previous,
            runtime=runtime,
            runtime_found=found,
            runtime_generation=generation if isinstance(generation, int) else None,
            validator=validator,
            job=job,
            pods=tuple(p for p in pods if p.component == ct.COMPONENT_TRAINER),
            now=self.clock(),
            config=self.config,
            progress=progress,
            leftovers=leftovers,
            taken=taken,
            rejected=self._rejected.get(key),
            job_create_error=create_error,
            workload=workload,
            workload_api=workload_api,
        )
        t0 = time.perf_counter()
        plan = decide(observed)
        t1 = time.perf_counter()
        complete = await self._execute(meta, previous, plan, rec.get("resourceVersion"))
        metrics.GPU_BOOK.set(key, plan.running_gpus)
        if key in self._taken:
            # A name held by someone else is not watched (it lacks our labels): look again, later.
            self._schedule_retry(key, failed=True)
        if not complete:
            # An apply conflict or a status changed since it was read: decide again, backing off
            # per key (a hot conflict is not retried every second).
            self._incomplete.add(key)
            self._schedule_retry(key, failed=True)
        else:
            self._incomplete.discard(key)
        if complete and plan.requeue_after is None:
            # The status this run wrote is what the next event's `inputs` will hold.
            # (with the runtime copy that status now holds, when this run took it)
            self._inputs[key] = (*inputs[:2], self._last_status(key, rec), *self._runtime(key, rec)[1:3], *inputs[5:])
        log.debug(
            "reconciled %s/%s: phase %s, decide %.1f ms, execute %.1f ms (%d applies, %d deletes)",
            ns, name, plan.status.phase, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000, len(plan.apply), len(plan.delete),
        )
        return plan

    async def _job_create_error(self, key: Key, job: JobView | None, pods: tuple[PodView, ...]) -> str | None:
        """Why the Job controller cannot create the current attempt's pods (its newest FailedCreate
        event), read only while a running Job has none, at most every c.FAILED_CREATE_SECONDS."""
        waiting = (
            job is not None
            and not (job.suspended or job.deleting or job.complete or job.failed)
            and job.active == 0
            and not any(p.component == ct.COMPONENT_TRAINER and p.attempt == job.attempt for p in pods)
        )
        if not waiting or job is None or not job.uid:
            self._failed_create.pop(key, None)
            return None
        created = parse_time(job.created)
        if created is not None and (self.clock() - created).total_seconds() < c.FAILED_CREATE_SECONDS:
            return None  # pods normally appear within a second: no read for a Job that is new
        now = time.monotonic()
        checked = self._failed_create.get(key)
        if checked is not None and now - checked[0] < c.FAILED_CREATE_SECONDS:
            return checked[1]
        try:
            message = await self.kube.failed_create(key[0], job.uid)
        except KubeError as err:
            log.warning("could not read the events of Job %s/%s: %s", key[0], job.name, err)
            message = checked[1] if checked else None
        self._failed_create[key] = (now, message)
        return message

    async def _workload(self, key: Key, rec: Mapping[str, Any]) -> tuple[WorkloadView | None, bool]:
        """(the Kueue Workload of a job with a queue, whether Kueue's Workload API is served).
        Read, not watched (Kueue may not be installed, and only queued jobs need it), until the
        job ended and its Workload holds no quota."""
        if not (rec["spec"] or {}).get("queueName"):
            return None, True
        last = self._last_status(key, rec)
        phase = last.phase if isinstance(last, FineTuneJobStatus) else (last or {}).get("phase")
        if phase in c.TERMINAL_PHASES and self._settled_workloads.get(key) == rec["uid"]:
            return None, True
        # A failed read propagates (the reconcile is retried with backoff): "no Workload" must mean
        # none, or the job would act on a Workload it did not see.
        body, served = await self.kube.workload(key[0], key[1])
        if body is None:
            self._applied.get(key, {}).pop(("Workload", key[1]), None)  # (gone: the next plan sends it again)
        view = workload_view(body) if body is not None else None
        if phase in c.TERMINAL_PHASES and (view is None or view.finished or not view.active):
            self._settled_workloads[key] = rec["uid"]
        return view, served

    async def _with_priority(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """A Workload with `spec.priorityClassRef` gets the PriorityClass's value as
        `spec.priority` (Kueue requires both). Without that PriorityClass the reference goes and
        the Workload queues at priority 0 (the pods could not be created either: said on the job)."""
        ref = manifest["spec"].get("priorityClassRef")
        if not ref:
            return manifest
        value = await self.kube.priority_value(ref["name"])
        spec = dict(manifest["spec"])
        if value is None:
            spec.pop("priorityClassRef")
        else:
            spec["priority"] = value
        return {**manifest, "spec": spec}

    def _known_children(self, key: Key) -> set[tuple[str, str]]:
        """Children that exist with the operator's labels for this job, as the watches show them."""
        known = set(self._seen.get(key, ()))
        if self.indexes is not None:
            known |= {("Job", v.name) for v in self.indexes.job_views(key)}
            known |= {("Pod", v.name) for v in self.indexes.pod_views(key)}
        return known

    async def _recheck_taken(self, key: Key) -> None:
        still = []
        for kind, child in self._taken.get(key, ()):
            holder = await self.kube.metadata(kind, key[0], child)
            if holder is not None and not _ours(holder, key[1]):
                still.append((kind, child))
        if still:
            self._taken[key] = tuple(still)
        else:
            self._taken.pop(key, None)

    def _runtime(self, key: Key, rec: Mapping[str, Any]) -> tuple[str | None, Any, bool, Any]:
        """(name, spec, found, generation) of the job's runtime: the copy taken when the job
        started (status.runtime), else the live one from the index."""
        assert self.indexes is not None
        ref = self.config.runtime_name(rec["spec"])
        copied, raw, generation = _snapshot(self._last_status(key, rec))
        if raw is not None and copied == ref:
            return ref, raw, True, generation
        live = self.indexes.runtime(ref) if ref else None
        return (ref, live["spec"], True, live["generation"]) if live else (ref, None, False, None)

    def _last_status(self, key: Key, rec: Mapping[str, Any]) -> FineTuneJobStatus | dict[str, Any]:
        """The status this process last wrote for this job (newer than the watch cache), else
        the one the index holds."""
        written = self._written.get(key)
        return written[1] if written is not None and written[0] == rec["uid"] else rec["status"]

    async def _execute(self, meta: JobMeta, previous: FineTuneJobStatus, plan: Plan, resource_version: str | None = None) -> bool:
        """Carry out the plan; False when part of it must be tried again (an apply conflict, or a
        status that changed since it was read).

        Record, then act: a plan that deletes (a failed attempt's Job, a pod, the FineTuneJob)
        first writes the status that explains it, conditional on the FineTuneJob's observed
        resourceVersion, and deletes only once that write landed; each delete names the UID it
        observed. So a crash or a failed write between the two never loses a counted restart,
        and a decision taken on a stale view deletes nothing.
        """
        key = (meta.namespace, meta.name)
        if plan.delete:
            written = await self._write_status(meta, previous, plan, resource_version)
            if written is None:
                return False  # changed since read: decide again from what is there now
            if written is False:
                return True  # the FineTuneJob is gone: nothing left to do
            restart = plan.status.restarts > previous.restarts
            # The events that explain the deletes go out with the record, before anything is
            # deleted (a crash after this point loses neither the restart nor its event).
            await asyncio.gather(*(self.kube.event(meta, event, self.clock()) for event in plan.events))
            if restart:
                _failpoint("restart-recorded")
            for item in plan.delete:
                await self.kube.delete(meta.namespace, item)
                self._applied.get(key, {}).pop((item.kind, item.name), None)
            if restart:
                _failpoint("restart-deleted")
        # Independent children go out together (a pod waits for its ConfigMap by itself); an
        # object already applied with the same content by this process is not sent again.
        todo = [(m, _digest(m)) for m in plan.apply]
        applied = self._applied.setdefault(key, {})
        todo = [(m, d) for m, d in todo if applied.get(_child_key(m)) != d]
        taken: list[tuple[str, str]] = []

        known = self._known_children(key)

        rejected: list[str] = []

        async def send(manifest: dict[str, Any]) -> bool:
            try:
                if manifest["kind"] == "Workload":
                    manifest = await self._with_priority(manifest)
                if _child_key(manifest) not in applied and _child_key(manifest) not in known:
                    # Not sent by this process yet: create it, or find out whose the name is.
                    holder = await self.kube.create(manifest)
                    if holder is None:
                        return True
                    if holder and not _ours(holder, meta.name):
                        taken.append(_child_key(manifest))
                        return False
                return await self.kube.apply(manifest)
            except KubeError as err:
                if err.terminating:
                    return False  # the namespace is being deleted, and the job with it
                if err.status not in REJECTED_STATUSES:
                    raise
                # Refused for a reason only a change elsewhere fixes (a quota, Pod Security, a
                # missing ServiceAccount or PriorityClass): said on the job, tried again with backoff.
                kind, name = _child_key(manifest)
                rejected.append(f"{kind} {name}: {err.message}")
                return False

        # Workloads (the training Job, the validator pod) go out only once the ConfigMap and
        # Service they use are known to be ours: never a pod that mounts someone else's ConfigMap.
        # A Job that names a Kueue Workload goes out only once that Workload is in and free of
        # the earlier attempt's Job (else Kueue would not give it the admission).
        todo.sort(key=lambda item: item[0]["kind"] in _WORKLOADS)
        first = [m for m, _ in todo if m["kind"] not in _WORKLOADS]
        if plan.workload_release is not None:
            released = await self.kube.drop_workload_owners(meta.namespace, *plan.workload_release)
        else:
            released = True
        done = list(await asyncio.gather(*(send(m) for m in first)))
        later = [m for m, _ in todo if m["kind"] in _WORKLOADS]
        queue_ready = released and all(ok for m, ok in zip(first, done, strict=True) if m["kind"] == "Workload")
        done += list(await asyncio.gather(*(send(m) for m in later))) if not taken and queue_ready else [False] * len(later)
        for (m, d), ok in zip(todo, done, strict=True):
            if ok:
                applied[_child_key(m)] = d
                metrics.APPLIES.labels(m["kind"]).inc()
        # Names in the way: those this plan found taken, plus those it did not try again (a plan
        # that only reports them sends nothing; `_recheck_taken` looks at those).
        before = set(self._taken.get(key, ()))
        after = (before - {_child_key(m) for m, _ in todo}) | set(taken)
        if after != before:
            # What is in the way changed: decide again, so the status says so (or stops saying it).
            if after:
                self._taken[key] = tuple(sorted(after))
            else:
                self._taken.pop(key, None)
            self._incomplete.add(key)
        before_rejected = self._rejected.get(key)
        if rejected:
            self._rejected[key] = rejected[0]
        elif todo:
            self._rejected.pop(key, None)  # everything this plan sent went in
        if self._rejected.get(key) != before_rejected:
            self._incomplete.add(key)  # decide again, so the status says so (or stops saying it)
        complete = all(done)
        if plan.suspend_job is not None:
            # Never cached: whoever else set the field since, the observed Job says it differs.
            await self.kube.suspend_job(meta.namespace, *plan.suspend_job)
        if plan.workload_active is not None:
            await self.kube.set_workload_active(meta.namespace, *plan.workload_active)
        if not plan.delete and await self._write_status(meta, previous, plan) is False:
            return True  # the FineTuneJob is gone: nothing left to do
        if plan.status.phase == c.PHASE_FAILED and previous.phase != c.PHASE_FAILED:
            failed = plan.status.condition(c.COND_FAILED)
            reason = failed.reason if failed and failed.reason in c.FAILURE_REASONS else "Unknown"
            metrics.JOB_FAILURES.labels(reason).inc()
        if plan.status.restarts > previous.restarts:
            metrics.RESTARTS.inc(plan.status.restarts - previous.restarts)
        self.phases.set(key, plan.status.phase)
        copy = plan.status.runtime
        self._use_runtime(key, copy.name if copy is not None and plan.status.phase not in c.TERMINAL_PHASES else None)
        for event in () if plan.delete else plan.events:  # best effort, off the critical path
            task = asyncio.create_task(self.kube.event(meta, event, self.clock()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return complete

    async def _write_status(self, meta: JobMeta, previous: FineTuneJobStatus, plan: Plan, resource_version: str | None = None) -> bool | None:
        """Patch the status when it changed: True when written (or nothing to write), False when
        the FineTuneJob is gone, None when `resource_version` is no longer current."""
        old, new = previous.to_wire(), plan.status.to_wire()
        if new == old:
            return True
        patch: dict[str, Any] = {k: None for k in old if k not in new}
        patch.update(new)
        written = await self.kube.patch_status(meta.namespace, meta.name, patch, resource_version)
        if written:
            metrics.STATUS_PATCHES.inc()
            self._written[(meta.namespace, meta.name)] = (meta.uid, plan.status)
        return written

    def _schedule_retry(self, key: Key, failed: bool = False, delay: float | None = None) -> None:
        if failed:
            n = self._failures[key] = self._failures.get(key, 0) + 1
            # exponential per key, with jitter so keys that failed together do not retry together
            delay = min(RETRY_MIN_SECONDS * 2 ** (n - 1), RETRY_MAX_SECONDS) * random.uniform(0.8, 1.2)
        if delay is None:
            return
        old = self._retry.pop(key, None)
        if old is not None:
            old.cancel()
        self._retry[key] = asyncio.get_running_loop().call_later(delay, self._retried, key)

    def _retried(self, key: Key) -> None:
        self._retry.pop(key, None)
        self.enqueue(key, force=True)

"""Status computation: (FineTuneJob, runtime, observed children, clock value) -> Plan.

Pure. `decide` reads the previous status and what the watches saw, and returns the next status,
the manifests to apply, the children to delete and the events to post. `reconcile` executes the
plan; running `decide` again on the same observations gives the same plan, so a reconcile that
is interrupted (operator killed, API error) is simply run again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from finetune_operator import builders
from finetune_operator import constants as c
from finetune_operator.api import (
    ClusterFineTuneRuntimeSpec,
    Condition,
    FineTuneJobSpec,
    FineTuneJobStatus,
    InvalidResource,
    OutputStatus,
    Progress,
    RuntimeSnapshot,
    Workers,
    parse_job,
)
from finetune_operator.resolve import JobMeta, OperatorConfig, Problem, Resolved, resolve
from finetune_operator.views import JobView, PodView, WorkloadView, format_time, parse_time

ct = c.contract


@dataclass(frozen=True)
class Observed:
    meta: JobMeta
    spec: dict[str, Any]
    status: FineTuneJobStatus
    #: The job's runtime: the copy in its status once it started, else the live one.
    runtime: ClusterFineTuneRuntimeSpec | None
    runtime_found: bool
    validator: PodView | None
    job: JobView | None
    pods: tuple[PodView, ...]
    now: datetime
    config: OperatorConfig = field(default_factory=OperatorConfig)
    #: Fresh progress from the rank-0 trainer (None: not polled this time; keep the last one).
    progress: Progress | None = None
    #: Children with this job's name made for another FineTuneJob UID (a deleted namesake):
    #: never adopted; removed before this job makes its own.
    leftovers: tuple[PodView | JobView, ...] = ()
    #: Children whose names are held by objects that are not this operator's ("Kind name").
    taken: tuple[str, ...] = ()
    #: metadata.generation of the runtime (recorded with the copy a starting job takes).
    runtime_generation: int | None = None
    #: The child the API server refused on the last try ("Kind name: message"), if any.
    rejected: str | None = None
    #: The Job controller's newest FailedCreate message while the Job has no pods (quota, Pod
    #: Security, a missing ServiceAccount or PriorityClass).
    job_create_error: str | None = None
    #: The job's Kueue Workload (jobs with spec.queueName; read each reconcile), if it exists.
    workload: WorkloadView | None = None
    #: Whether the cluster serves Kueue's Workload API (kueue.x-k8s.io/v1beta2). Without it a job
    #: with a queue gets only the queue label on its Job (an older Kueue makes the Workload).
    workload_api: bool = True


@dataclass(frozen=True)
class Delete:
    kind: str  # "Job" | "Pod" | "FineTuneJob" | "Workload"
    name: str
    propagation: str = "Background"
    #: The UID of the object observed: the delete is refused if the name now holds another one.
    uid: str | None = None
    #: gracePeriodSeconds of the delete (0: the API server removes the pod without waiting for
    #: its kubelet); None: the object's own.
    grace_seconds: int | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: FineTuneJobStatus
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Delete] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Seconds after which the job should be looked at again even without a watch event.
    requeue_after: float | None = None
    #: (Job name, Job UID, value): set the existing Job's spec.suspend with a patch of its own
    #: (another manager, e.g. Kueue, may own the field; a started Job's template is immutable).
    suspend_job: tuple[str, str, bool] | None = None
    #: (start, GPUs) of the current attempt's running trainer pods: the GPU time not yet in
    #: status.gpuSeconds (exported live as finetune_operator_running_gpu_seconds).
    running_gpus: tuple[tuple[datetime, int], ...] = ()
    #: (Workload name, Job UIDs): drop these Jobs (earlier attempts, deleted) from the Workload's
    #: owners before the next attempt's Job is created, so Kueue lets that Job take it over at once.
    workload_release: tuple[str, tuple[str, ...]] | None = None
    #: (Workload name, Workload UID, value): set the Workload's spec.active (false gives the quota
    #: back and Kueue suspends the Job: a user suspend, or a job that ended with its Job alive).
    workload_active: tuple[str, str, bool] | None = None


def clip(text: str, limit: int = c.MAX_MESSAGE_LENGTH) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decision(head: str, what: str, tail: str, limit: int = c.MAX_MESSAGE_LENGTH) -> str:
    """``head + what + tail`` within ``limit``, shortening only ``what``: a long failure text
    (a log tail) must never cut off what the operator decided."""
    return head + clip(what, max(limit - len(head) - len(tail), 16)) + tail


class _Next:
    """The status being computed, starting from the previous one."""

    def __init__(self, obs: Observed) -> None:
        self.obs = obs
        self.prev = obs.status
        # The runtime copy goes over as the (frozen) model it is: never dumped and validated again.
        self.data: dict[str, Any] = obs.status.model_dump(exclude={"runtime"})
        self.data["runtime"] = obs.status.runtime
        self.data["observed_generation"] = obs.meta.generation
        self.conditions: dict[str, Condition] = {x.type: x for x in obs.status.conditions}
        self.now = format_time(obs.now)
        self.running_gpus: tuple[tuple[datetime, int], ...] = ()

    def set(self, **values: Any) -> None:
        self.data.update(values)

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        flag: Literal["True", "False"] = "True" if status else "False"
        old = self.conditions.get(type_)
        since = old.last_transition_time if old is not None and old.status == flag else self.now
        self.conditions[type_] = Condition(
            type=type_,  # type: ignore[arg-type]
            status=flag,
            reason=reason,
            message=clip(message),
            last_transition_time=since,
            observed_generation=self.obs.meta.generation,
        )

    def clear(self, type_: str, reason: str, message: str = "") -> None:
        """Set a condition False only if it was ever reported (keeps the list short)."""
        if type_ in self.conditions:
            self.condition(type_, False, reason, message)

    def started(self) -> None:
        if not self.data.get("start_time"):
            self.data["start_time"] = self.now

    def finished(self) -> None:
        if not self.data.get("completion_time"):
            self.data["completion_time"] = self.now

    def build(self) -> FineTuneJobStatus:
        order = {t: i for i, t in enumerate(c.CONDITION_TYPES)}
        self.data["conditions"] = sorted(self.conditions.values(), key=lambda x: order.get(x.type, 99))
        return FineTuneJobStatus.model_validate(self.data)


def decide(obs: Observed) -> Plan:
    plan = _decide(obs)
    if obs.rejected and plan.status.phase not in c.TERMINAL_PHASES and (plan.apply or plan.delete):
        _report_rejection(obs, plan)
    _workload_activity(obs, plan)
    return plan


def _workload_activity(obs: Observed, plan: Plan) -> None:
    """With a Kueue Workload, Kueue alone sets Job.spec.suspend (from the Workload's admission);
    the operator says what it wants through the Workload: active while the job is meant to run,
    inactive when the user suspends it or the job ended (Kueue then stops its pods and frees the
    quota). A finished Workload (the Job completed or failed) is left as it is."""
    wl = obs.workload
    if wl is None:
        return
    plan.suspend_job = None
    if wl.deleting or wl.finished:
        return
    want = not obs.spec.get("suspend") and plan.status.phase not in c.TERMINAL_PHASES
    if wl.active != want:
        plan.workload_active = (wl.name, wl.uid, want)


def _report_rejection(obs: Observed, plan: Plan) -> None:
    """The API server refused a child this plan sends again (a quota, Pod Security, a missing
    ServiceAccount or PriorityClass): the job says which and why (condition + one Warning), and
    the executor tries again with backoff; once it goes in the plain status comes back."""
    status = plan.status
    type_ = c.COND_VALIDATED if status.phase == c.PHASE_VALIDATING else c.COND_RUNNING
    message = clip(f"{status.message or status.phase}; the API server refused {obs.rejected}")
    before = obs.status.condition(type_)
    since = before.last_transition_time if before is not None and before.status == "False" else format_time(obs.now)
    cond = Condition(type=type_, status="False", reason=c.REASON_CHILD_REJECTED, message=message, last_transition_time=since, observed_generation=obs.meta.generation)  # type: ignore[arg-type]
    plan.status = status.model_copy(update={"message": message, "conditions": [cond if x.type == type_ else x for x in status.conditions] + ([] if status.condition(type_) else [cond])})
    if before is None or before.reason != c.REASON_CHILD_REJECTED or before.message != message:
        plan.events.append(Event("Warning", c.REASON_CHILD_REJECTED, message))


def _decide(obs: Observed) -> Plan:
    nxt = _Next(obs)
    prev = obs.status
    if prev.phase in c.TERMINAL_PHASES:
        if not _spec_failure_retry(obs):
            return _finished_plan(obs, nxt)
        # The edited spec is evaluated afresh: the old verdict and its completion time go (a
        # kept completionTime would let ttlSecondsAfterFinished delete the job as soon as it ends).
        nxt.clear(c.COND_FAILED, c.REASON_SPEC_EDITED, f"spec edited (generation {obs.meta.generation}); evaluated again")
        nxt.set(completion_time=None)

    if obs.leftovers:
        return _remove_leftovers(obs, nxt)
    if obs.taken:
        return _name_taken(obs, nxt)
    try:
        spec = parse_job(obs.spec)
    except InvalidResource as err:
        return _fail(obs, nxt, c.REASON_INVALID_SPEC, str(err))
    runtime, found, generation = obs.runtime, obs.runtime_found, obs.runtime_generation
    if _started_before_runtime_copies(obs, spec):
        runtime, found, generation = ClusterFineTuneRuntimeSpec(), True, None
    resolved = resolve(obs.meta, spec, runtime, found, obs.config)
    if isinstance(resolved, Problem):
        if resolved.waiting:
            nxt.set(phase=c.PHASE_PENDING, message=resolved.message)
            nxt.condition(c.COND_VALIDATED, False, resolved.reason, resolved.message)
            return _plan(obs, nxt)
        return _fail(obs, nxt, resolved.reason, resolved.message)
    _keep_runtime(obs, nxt, runtime, generation)
    nxt.set(workers=Workers(ready=_ready(obs), total=resolved.nodes).model_dump())

    validated = prev.condition(c.COND_VALIDATED)
    if validated is None or validated.status != "True":
        plan = _validation_step(obs, nxt, spec, resolved)
        if plan is not None:
            return plan
    return _training_step(obs, nxt, spec, resolved)


def _started_before_runtime_copies(obs: Observed, spec: FineTuneJobSpec) -> bool:
    """A job that passed validation under an operator that took no runtime copies and named no
    runtime: it was admitted with no preset's limits, and its pods may hold GPUs now. Judging it
    by today's default runtime would fail it (or change its image) mid-run, so it keeps the terms
    it started under: a copy with no limits and the operator's default image."""
    if spec.runtime_ref is not None or obs.status.runtime is not None:
        return False
    validated = obs.status.condition(c.COND_VALIDATED)
    return validated is not None and validated.status == "True"


def _keep_runtime(obs: Observed, nxt: _Next, runtime: ClusterFineTuneRuntimeSpec | None, generation: int | None) -> None:
    """The runtime a job resolved against is copied into its status the first time it resolves,
    and that copy serves the job for its whole life: tightening a preset's limits, editing its
    image or output, or deleting it (a `helm upgrade` that renames presets) changes nothing for a
    job that already started. The image is recorded as resolved (the operator's default trainer
    image where the runtime names none), so a later operator setting does not change it either."""
    name = obs.config.runtime_name(obs.spec)
    if runtime is None or name is None or (obs.status.runtime is not None and obs.status.runtime.name == name):
        return
    spec = runtime if runtime.image else runtime.model_copy(update={"image": obs.config.default_image})
    nxt.set(runtime=RuntimeSnapshot(name=name, generation=generation, spec=spec))


def _name_taken(obs: Observed, nxt: _Next) -> Plan:
    """A child's name is held by an object this operator did not make: it is never overwritten
    (creating FineTuneJobs must not become a way to replace ConfigMaps or Services). The job
    waits, saying what is in the way; it goes on once that object is gone."""
    one = len(obs.taken) == 1
    message = clip(
        f"{', '.join(obs.taken)} already exist{'s' if one else ''} and {'does' if one else 'do'} not belong to "
        "this FineTuneJob; it is never overwritten: delete or rename it, or rename the FineTuneJob"
    )
    nxt.set(phase=c.PHASE_PENDING, message=message)
    nxt.condition(c.COND_RUNNING, False, c.REASON_CHILD_NAME_TAKEN, message)
    plan = _plan(obs, nxt)
    if obs.status.message != message:
        plan.events.append(Event("Warning", c.REASON_CHILD_NAME_TAKEN, message))
    return plan


def _remove_leftovers(obs: Observed, nxt: _Next) -> Plan:
    """A Job or validator pod with this name made for an earlier FineTuneJob (deleted, maybe with
    --cascade=orphan, and re-created under the same name): its result is not this job's. Delete
    it (by UID) and wait until it is gone; this job then validates and trains afresh."""
    names = ", ".join(f"{'Job' if isinstance(v, JobView) else 'pod'} {v.name}" for v in obs.leftovers)
    nxt.set(phase=obs.status.phase or c.PHASE_PENDING, message=clip(f"removing {names}, left by an earlier FineTuneJob named {obs.meta.name}"))
    deletes = [
        Delete("Job" if isinstance(v, JobView) else "Pod", v.name, "Foreground" if isinstance(v, JobView) else "Background", v.uid or None)
        for v in obs.leftovers
        if not v.deleting
    ]
    return _plan(obs, nxt, delete=deletes)


# --- steps ----------------------------------------------------------------------------------------
def _validation_step(obs: Observed, nxt: _Next, spec: FineTuneJobSpec, r: Resolved) -> Plan | None:
    """Returns a plan while validation is pending or failed; None once it passed."""
    pod = obs.validator
    if spec.suspend and pod is None:
        nxt.set(phase=c.PHASE_SUSPENDED, message="suspended before validation")
        nxt.condition(c.COND_SUSPENDED, True, c.REASON_SUSPENDED, "spec.suspend is true")
        return _plan(obs, nxt)
    nxt.clear(c.COND_SUSPENDED, c.REASON_NOT_SUSPENDED)
    apply: list[dict[str, Any]] = []
    deletes: list[Delete] = []
    if pod is None:
        # Every name the job will hold is claimed now, so a name in the way is reported before
        # anything runs, all of them at once (the validator pod waits for its ConfigMap).
        apply = [builders.build_configmap(r), builders.build_service(r), builders.build_validator(r, obs.status.validation_retries or 0)]
        reason, message = c.REASON_VALIDATION_RUNNING, f"validation pod {builders.validator_name(r.meta.name)} created"
    elif pod.phase == "Succeeded":
        nxt.condition(c.COND_VALIDATED, True, c.REASON_VALIDATION_PASSED, "model and dataset are reachable and the dataset parses")
        return None
    elif pod.phase == "Failed" and (pod.disrupted or pod.deleting):
        if not pod.deleting:
            deletes = [Delete("Pod", pod.name, uid=pod.uid or None)]
        reason, message = c.REASON_VALIDATION_PENDING, f"validation pod {pod.name} was disrupted; retrying"
    elif pod.phase == "Failed" and pod.exit_code == ct.EXIT_TRAINING_ERROR and (
        (pod.attempt or 0) < (obs.status.validation_retries or 0) or (obs.status.validation_retries or 0) < c.MAX_VALIDATION_RETRIES
    ):
        # A source that did not answer (429/5xx, a timeout): it may next time. Data errors (3)
        # and configuration errors (2) stay final. Each pod's failure counts once (its attempt
        # label is the number of pods before it).
        counted = (pod.attempt or 0) < (obs.status.validation_retries or 0)
        tries = (obs.status.validation_retries or 0) if counted else (pod.attempt or 0) + 1
        detail = _failure_text(pod) or "see its log"
        nxt.set(validation_retries=tries)
        if not pod.deleting:
            deletes = [Delete("Pod", pod.name, uid=pod.uid or None)]
        reason = c.REASON_VALIDATION_PENDING
        message = clip(f"validation pod {pod.name} failed with a retryable error ({detail}); trying again ({tries}/{c.MAX_VALIDATION_RETRIES})")
    elif pod.phase == "Failed" and pod.oom:
        # Not the user's data: the platform's sizing. The same limit gives the same result.
        limit = f" (limit {pod.memory_limit})" if pod.memory_limit else ""
        message = (
            f"validation pod {pod.name} was killed for using more memory than it may{limit}: the runtime's validator.memory is "
            f"too small for this model or dataset; a platform admin can raise it in ClusterFineTuneRuntime {r.runtime_name!r}, "
            "then re-apply the job (delete and create it)"
        )
        nxt.condition(c.COND_VALIDATED, False, c.REASON_OUT_OF_MEMORY, message)
        return _fail(obs, nxt, c.REASON_OUT_OF_MEMORY, message)
    elif pod.phase == "Failed":
        detail = _failure_text(pod) or pod.reason or "no message (see the pod's log)"
        code = f"exit code {pod.exit_code}, {_exit_meaning(pod.exit_code)}" if pod.exit_code is not None else "no exit code"
        message = f"validation pod {pod.name} failed ({code}): {detail}"
        nxt.condition(c.COND_VALIDATED, False, c.REASON_VALIDATION_FAILED, message)
        return _fail(obs, nxt, c.REASON_VALIDATION_FAILED, message)
    elif pod.blocked and not pod.deleting:
        reason, _, _ = pod.blocked.partition(":")
        message = clip(f"validation pod {pod.name} cannot start: {pod.blocked}")
    else:
        # Pending or Running: one reason for both, so the pod starting costs no status write.
        reason, message = c.REASON_VALIDATION_RUNNING, f"validation pod {pod.name} created"
    nxt.started()
    nxt.set(phase=c.PHASE_VALIDATING, message=message)
    nxt.condition(c.COND_VALIDATED, False, reason, message)
    plan = _plan(obs, nxt, apply=apply, delete=deletes)
    if pod is not None and pod.blocked and not pod.deleting:
        _warn_on_new_reason(obs, plan, c.COND_VALIDATED, reason, message)
    return plan


def _training_step(obs: Observed, nxt: _Next, spec: FineTuneJobSpec, r: Resolved) -> Plan:
    prev = obs.status
    attempt = prev.attempt
    job = obs.job
    nxt.started()
    if obs.progress is not None:
        nxt.set(progress=_merged_progress(prev.progress, obs.progress).model_dump())

    # A Job from an earlier attempt: wait until it is gone, then create the next one.
    if job is not None and (job.attempt != attempt or job.deleting):
        deletes = [] if job.deleting else [Delete("Job", job.name, "Foreground", job.uid or None)]
        message = f"waiting for attempt {job.attempt} to be removed"
        unconfirmed, wait_s = _unconfirmed_deletions(obs, job.attempt)
        if unconfirmed:
            # Their kubelet is gone (a node lost or partitioned): it would never confirm, and the
            # Foreground delete would wait for good. Said first, then done (the executor writes
            # this status before it deletes).
            who = ", ".join(f"{p.name} (node {p.node or '?'})" for p in unconfirmed)
            message = clip(
                f"{message}: {who} not confirmed gone {obs.config.unconfirmed_deletion_seconds:.0f}s past the grace period (node unreachable?); "
                "removed without waiting for the kubelet"
            )
            deletes += [Delete("Pod", p.name, uid=p.uid or None, grace_seconds=0) for p in unconfirmed]
        nxt.set(phase=c.PHASE_INITIALIZING, message=message)
        plan = _plan(obs, nxt, delete=deletes)
        if unconfirmed:
            plan.events.append(Event("Warning", c.REASON_POD_DELETION_FORCED, message))
        return _wake(plan, wait_s)

    own_workload = bool(spec.queue_name) and obs.workload_api
    if job is not None and job.workload_name is None:
        own_workload = False  # a Job made before the operator made Workloads: Kueue made its own
    wl = obs.workload if own_workload else None
    if wl is not None and not wl.active and not wl.finished and not wl.deleting and not spec.suspend and not _suspended_by_user(prev):
        # Not the operator's doing (it deactivates only for a suspend or a job that ended): Kueue's
        # own policy (requeuing limit, maximum execution time, a rejected admission check). The
        # operator does not undo an administrator's rule; the job ends, saying which.
        return _fail(obs, nxt, c.REASON_WORKLOAD_DEACTIVATED, f"Kueue deactivated the job's Workload {wl.name}: {wl.waiting or 'no reason given'}")
    failed_here = job is not None and any(p.attempt == job.attempt and p.phase == "Failed" for p in obs.pods)
    if own_workload and job is not None and not (job.complete or job.failed or failed_here) and (wl is None or wl.finished):
        # Kueue stops a Job whose Workload is gone or finished (deleted by someone, or out of sync
        # with it after an operator upgrade changed the pod template): the Job goes, and the next
        # reconcile makes a new Workload and Job for the same attempt (not a restart). A Job that
        # failed, or has a failed worker, is judged as a failure below instead.
        what = "was deleted" if wl is None else f"finished ({wl.finished_why})"
        message = clip(f"the Kueue Workload {job.workload_name} of attempt {attempt} {what}; making it and the Job again (no restart counted)")
        nxt.set(phase=c.PHASE_QUEUED, message=message)
        _suspension(nxt, spec, suspended=True)
        plan = _plan(obs, nxt, delete=[Delete("Job", job.name, "Foreground", job.uid or None)])
        plan.events.append(Event("Warning", c.REASON_WORKLOAD_RECREATED, message))
        return plan
    if job is None:
        if wl is not None and (wl.finished or wl.deleting):
            # Kueue finished it (its Job failed, or drifted from it): it is never admitted again.
            # A new one goes to the back of the queue; said, then done.
            nxt.set(phase=c.PHASE_QUEUED, message=clip(f"{_held_message(spec)}: the Kueue Workload {wl.name} of an earlier attempt finished; making a new one"))
            _suspension(nxt, spec, suspended=True)
            return _wake(_plan(obs, nxt, delete=[] if wl.deleting else [Delete("Workload", wl.name, uid=wl.uid or None)]), 2.0)
        suspend = bool(spec.suspend or spec.queue_name)
        if suspend:
            nxt.set(phase=c.PHASE_SUSPENDED if spec.suspend else c.PHASE_QUEUED, message=_held_message(spec, wl, obs.workload_api))
        else:
            nxt.set(phase=c.PHASE_INITIALIZING, message=_workers_message(attempt, 0, r.nodes))
            nxt.condition(c.COND_RUNNING, False, c.REASON_WORKERS_STARTING, f"0/{r.nodes} workers running")
        _suspension(nxt, spec, suspended=suspend)
        # gpuSeconds is reported from here on, so the Job appearing costs no status write of its own.
        _gpu_seconds(obs, nxt, r)
        children = builders.build_children(r, attempt, suspend, own_workload)
        # An existing Workload is never applied again: its pod set is immutable while admitted
        # (an operator upgrade that changed the template would be refused). Its `active` is set
        # by a patch of that field (decide's _workload_activity).
        plan = _plan(obs, nxt, apply=[m for m in children if not (wl is not None and m["kind"] == "Workload")])
        if wl is not None and wl.job_owners:
            # The earlier attempt's Job is gone but still the Workload's controller until the
            # garbage collector notices (seconds); until then Kueue would ignore the Workload
            # for the new Job, which would wait unadmitted.
            plan.workload_release = (wl.name, wl.job_owners)
        return plan

    # The Job of the current attempt exists. Its ConfigMap and Service are wanted all along (the
    # executor sends only what it has not already applied, so a deleted one comes back).
    apply: list[dict[str, Any]] = [] if job.complete else [builders.build_configmap(r), builders.build_service(r)]
    desired = _desired_suspend(spec, job)
    suspend_job = (job.name, job.uid, desired) if desired is not None and desired != job.suspended else None
    suspended = job.suspended if desired is None else desired
    if wl is not None and spec.suspend:
        suspended = True  # the Workload is deactivated: Kueue stops the pods, then suspends the Job
    _gpu_seconds(obs, nxt, r)

    if suspended and not job.complete:
        phase = c.PHASE_SUSPENDED if spec.suspend else c.PHASE_QUEUED
        nxt.set(phase=phase, message=_held_message(spec, wl, obs.workload_api))
        _suspension(nxt, spec, suspended=True)
        nxt.clear(c.COND_RUNNING, c.REASON_SUSPENDED if spec.suspend else c.REASON_QUEUED)
        plan = _with_suspend(_plan(obs, nxt, apply=apply), suspend_job)
        # Workloads are read, not watched: why it waits is looked at again now and then.
        return _wake(plan, c.KUEUE_RECHECK_SECONDS) if wl is not None and not spec.suspend else plan
    _suspension(nxt, spec, suspended=False)

    pods = [p for p in obs.pods if p.attempt == attempt and p.component == ct.COMPONENT_TRAINER]
    # The root cause is the earliest failure: when one rank dies its peers fail after it with a
    # collective error (gloo "Connection closed by peer", an NCCL timeout) that only echoes it.
    failed = sorted(
        (p for p in pods if p.phase == "Failed" and not p.disrupted and p.exit_code != ct.EXIT_PREEMPTED),
        key=lambda p: (p.finish_time or "~", p.index if p.index is not None else 1 << 30, p.name),
    )
    too_many = _count_disruptions(obs, nxt, spec, job, pods)
    if too_many is not None:
        return too_many
    if failed and failed[0].oom:
        # The same memory gives the same result: not retried, and said as what it is.
        p = failed[0]
        limit = f", limit {p.memory_limit}" if p.memory_limit else ""
        return _fail(
            obs,
            nxt,
            c.REASON_OUT_OF_MEMORY,
            f"{_who(p)} was killed for using more memory than it may (OOMKilled{limit}); not retried with the same memory: "
            "raise spec.resources.memory, or lower hyperparameters.batchSize or maxSeqLength (gradientCheckpointing also helps)",
        )
    fatal = [p for p in failed if p.exit_code in ct.NON_RETRYABLE_EXIT_CODES]
    if fatal:
        p = fatal[0]
        reason = c.REASON_CONFIG_ERROR if p.exit_code == ct.EXIT_CONFIG_ERROR else c.REASON_DATA_ERROR
        return _fail(obs, nxt, reason, f"{_who(p)} exited with code {p.exit_code} ({_exit_meaning(p.exit_code)}): {_failure_text(p) or 'see its log'}")
    if (failed or job.failed) and not job.complete:
        what = (
            f"{_who(failed[0])} exited with code {failed[0].exit_code}" + (f": {text}" if (text := _failure_text(failed[0])) else "")
            if failed
            else f"Job {job.name} failed ({job.failed_reason}): {job.failed_message or ''}"
        )
        if prev.restarts >= spec.max_restarts:
            return _fail(
                obs,
                nxt,
                c.REASON_RESTART_LIMIT_EXCEEDED,
                _decision(f"attempt {attempt} failed: ", what, f"; maxRestarts ({spec.max_restarts}) reached"),
            )
        message = _decision(
            f"attempt {attempt} failed: ",
            what,
            f"; restarting the group as attempt {attempt + 1} ({prev.restarts + 1}/{spec.max_restarts})",
        )
        nxt.set(
            phase=c.PHASE_INITIALIZING,
            message=clip(message),
            attempt=attempt + 1,
            restarts=prev.restarts + 1,
            # The failed attempt's pods still running are stopped now: their time so far is added,
            # and the next attempt's pods start a fresh count on top of it.
            prior_gpu_seconds=float(round((nxt.data.get("gpu_seconds") or 0.0) + _live_seconds(obs, r.gpus_per_node))),
            gpu_counted_pods=None,
            disrupted_pods=None,
        )
        nxt.set(gpu_seconds=nxt.data["prior_gpu_seconds"] if r.gpus_per_node > 0 else None)
        nxt.running_gpus = ()
        nxt.condition(c.COND_RUNNING, False, c.REASON_RESTARTING, message)
        plan = _plan(obs, nxt, apply=apply, delete=[Delete("Job", job.name, "Foreground", job.uid or None)])
        plan.events.append(Event("Warning", c.REASON_RESTARTING, clip(message)))
        return plan

    if job.complete:
        nxt.finished()
        summary = _summary(pods)
        out = {
            "adapterUri": summary.get("adapterUri"),
            "manifestUri": summary.get("manifestUri"),
            "sha256": summary.get("manifestSha256") or summary.get("sha256"),
        }
        if any(out.values()):
            nxt.set(output=OutputStatus.model_validate({k: v for k, v in out.items() if isinstance(v, str)}).model_dump())
        tokens = summary.get("trainedTokens")
        if isinstance(tokens, int) and tokens >= 0:
            nxt.set(trained_tokens=tokens)
        progress = dict(nxt.data.get("progress") or {})
        progress.update(percent=100.0, eta_seconds=0, eta="0s", stage="done")
        # The last poll may predate the last step (or the first: a short run between two
        # polls); the summary has the final figures.
        steps = summary.get("steps")
        if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0:
            progress.update(step=steps, total_steps=steps)
        for key, field in (
            ("loss", "loss"),
            ("evalLoss", "eval_loss"),
            ("evalAccuracy", "eval_accuracy"),
            ("evalF1", "eval_f1"),
            ("evalExactMatch", "eval_exact_match"),
            ("evalRougeL", "eval_rouge_l"),
        ):
            value = summary.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                progress[field] = float(value)
        nxt.set(progress=progress, phase=c.PHASE_SUCCEEDED, message="training finished; adapter uploaded")
        nxt.condition(c.COND_RUNNING, False, c.REASON_TRAINING_SUCCEEDED, "all workers finished")
        nxt.condition(c.COND_SUCCEEDED, True, c.REASON_TRAINING_SUCCEEDED, f"adapter at {out.get('adapterUri') or r.output.uri}")
        return _finished_plan(obs, nxt, apply=apply)

    ready = _ready(obs, attempt)
    # A worker whose container exited 0 is done, whether or not the kubelet has moved its pod to
    # Succeeded yet (for a moment it is Running and not Ready).
    done = sum(1 for p in pods if p.phase == "Succeeded" or (p.exit_code == 0 and p.phase != "Failed"))
    if done and ready + done >= r.nodes:
        # The workers leave the final barrier one by one: the group is finishing, not starting.
        nxt.set(phase=c.PHASE_UPLOADING, message=f"attempt {attempt}: {done}/{r.nodes} workers finished")
        nxt.condition(c.COND_RUNNING, True, c.REASON_UPLOADING, f"{done}/{r.nodes} workers finished")
    elif ready >= r.nodes:
        stage = ((nxt.data.get("progress") or {}).get("stage") or "").lower()
        uploading = stage == "uploading"
        nxt.set(
            phase=c.PHASE_UPLOADING if uploading else c.PHASE_RUNNING,
            message="uploading the adapter" if uploading else _workers_message(attempt, ready, r.nodes),
        )
        nxt.condition(c.COND_RUNNING, True, c.REASON_UPLOADING if uploading else c.REASON_WORKERS_RUNNING, f"{ready}/{r.nodes} workers running")
    else:
        stuck = sorted((p for p in pods if p.blocked and not p.deleting), key=lambda p: (p.index if p.index is not None else 1 << 30, p.name))
        late = _startup_deadline(obs, nxt, r, job, attempt, ready, stuck)
        if isinstance(late, Plan):
            return late
        if stuck:
            # Said on the job, with the kubelet's or scheduler's reason: a wrong image, a missing
            # Secret or no node that fits is never just "0/N workers running".
            p = stuck[0]
            reason, _, _ = (p.blocked or "").partition(":")
            message = clip(f"{_workers_message(attempt, ready, r.nodes)}; {_who(p)} cannot start: {p.blocked}")
            nxt.set(phase=c.PHASE_INITIALIZING, message=message)
            nxt.condition(c.COND_RUNNING, False, reason, message)
            plan = _plan(obs, nxt, apply=apply)
            _warn_on_new_reason(obs, plan, c.COND_RUNNING, reason, message)
            return _wake(_with_suspend(plan, suspend_job), late)
        if not pods:
            if obs.job_create_error:
                message = clip(f"{_workers_message(attempt, ready, r.nodes)}; the Job cannot create its pods: {obs.job_create_error}")
                nxt.set(phase=c.PHASE_INITIALIZING, message=message)
                nxt.condition(c.COND_RUNNING, False, c.REASON_FAILED_CREATE, message)
                plan = _plan(obs, nxt, apply=apply)
                _warn_on_new_reason(obs, plan, c.COND_RUNNING, c.REASON_FAILED_CREATE, message)
            else:
                nxt.set(phase=c.PHASE_INITIALIZING, message=_workers_message(attempt, ready, r.nodes))
                nxt.condition(c.COND_RUNNING, False, c.REASON_WORKERS_STARTING, f"{ready}/{r.nodes} workers running")
                plan = _plan(obs, nxt, apply=apply)
            # No pod event will come while the Job controller cannot create them: look again.
            return _wake(_with_suspend(plan, suspend_job), min(c.FAILED_CREATE_SECONDS, late or c.FAILED_CREATE_SECONDS))
        nxt.set(phase=c.PHASE_INITIALIZING, message=_workers_message(attempt, ready, r.nodes))
        nxt.condition(c.COND_RUNNING, False, c.REASON_WORKERS_STARTING, f"{ready}/{r.nodes} workers running")
        tokens = (nxt.data.get("progress") or {}).get("trained_tokens")
        if isinstance(tokens, int):
            nxt.set(trained_tokens=tokens)
        return _wake(_with_suspend(_plan(obs, nxt, apply=apply), suspend_job), late)
    tokens = (nxt.data.get("progress") or {}).get("trained_tokens")
    if isinstance(tokens, int):
        nxt.set(trained_tokens=tokens)
    return _with_suspend(_plan(obs, nxt, apply=apply), suspend_job)


def _count_disruptions(obs: Observed, nxt: _Next, spec: FineTuneJobSpec, job: JobView, pods: list[PodView]) -> Plan | None:
    """Count the current attempt's worker pods taken away (DisruptionTarget: evicted, preempted;
    or exit 143 after SIGTERM), each pod once by UID. The Job controller replaces them (its
    podFailurePolicy ignores them, and so does maxRestarts), but not forever: past
    spec.maxDisruptions the job fails (the pods keep being taken away: evict, download again,
    evict) and its Job is suspended. Returns that Failed plan, else None."""
    counted = list(obs.status.disrupted_pods or [])
    total = obs.status.disruptions or 0
    for p in pods:
        if p.uid and p.uid not in counted and (p.disrupted or p.exit_code == ct.EXIT_PREEMPTED):
            counted.append(p.uid)
            total += 1
    nxt.set(disruptions=total or None, disrupted_pods=counted or None)
    if total <= spec.max_disruptions or job.complete:
        return None
    plan = _fail(
        obs,
        nxt,
        c.REASON_DISRUPTION_LIMIT_EXCEEDED,
        f"{total} worker pods were taken away (evicted, preempted or stopped) and replaced, more than maxDisruptions "
        f"({spec.max_disruptions}); see the Warning events of the pods (kubectl get events) for what took them",
    )
    return _with_suspend(plan, (job.name, job.uid, True)) if not job.suspended else plan


def _unconfirmed_deletions(obs: Observed, attempt: int | None) -> tuple[list[PodView], float | None]:
    """Pods of `attempt` still there `unconfirmed_deletion_seconds` past their deletion deadline (a
    live kubelet kills the container at the deadline and confirms at once), and the seconds until
    the next one would be, for a wake-up (None when no pod of the attempt is being deleted)."""
    overdue: list[PodView] = []
    soonest: float | None = None
    for p in obs.pods:
        deadline = parse_time(p.deletion_deadline) if p.attempt == attempt else None
        if deadline is None:
            continue
        left = (deadline - obs.now).total_seconds() + obs.config.unconfirmed_deletion_seconds
        if left <= 0:
            overdue.append(p)
        else:
            soonest = left if soonest is None else min(soonest, left)
    return sorted(overdue, key=lambda p: p.name), soonest


def _wake(plan: Plan, seconds: float | None) -> Plan:
    """Look at the job again after `seconds` (no event may come meanwhile), or sooner."""
    if seconds is not None:
        plan.requeue_after = seconds if plan.requeue_after is None else min(plan.requeue_after, seconds)
    return plan


def _startup_deadline(obs: Observed, nxt: _Next, r: Resolved, job: JobView, attempt: int, ready: int, stuck: list[PodView]) -> Plan | float | None:
    """With the runtime's startupDeadlineSeconds: a Failed plan once the attempt's workers have
    not all been running for that long (the Job is suspended, so its pods stop retrying a pull or
    waiting for a node), else the seconds left (None without a deadline). The attempt's start is
    when the Running condition last became False (a restart or resume sets it again)."""
    deadline = r.startup_deadline_seconds
    running = obs.status.condition(c.COND_RUNNING)
    since = parse_time(running.last_transition_time) if running is not None and running.status == "False" else None
    if deadline is None or since is None:
        return None
    left = (since + timedelta(seconds=deadline) - obs.now).total_seconds()
    if left > 0:
        return left
    cause = stuck[0].blocked if stuck else obs.job_create_error and f"the Job cannot create its pods: {obs.job_create_error}"
    plan = _fail(
        obs,
        nxt,
        c.REASON_STARTUP_DEADLINE_EXCEEDED,
        f"attempt {attempt}: {ready}/{r.nodes} workers running after {deadline}s (startupDeadlineSeconds of the runtime)"
        + (f"; {_who(stuck[0])} cannot start: {cause}" if stuck else f"; {cause}" if cause else ""),
    )
    return _with_suspend(plan, (job.name, job.uid, True)) if not job.suspended else plan


def _warn_on_new_reason(obs: Observed, plan: Plan, type_: str, reason: str, message: str) -> None:
    """One Warning event when a condition takes a reason it did not have (not on every resync)."""
    before = obs.status.condition(type_)
    if before is None or before.reason != reason:
        plan.events.append(Event("Warning", reason, message))


# --- helpers ----------------------------------------------------------------------------------------
def _held_message(spec: FineTuneJobSpec, wl: WorkloadView | None = None, workload_api: bool = True) -> str:
    if spec.suspend:
        return "spec.suspend is true"
    message = f"waiting for admission by Kueue queue {spec.queue_name!r}"
    if not workload_api:
        return f"{message}; this cluster does not serve Kueue's Workload API ({c.KUEUE_API_VERSION}): is Kueue installed?"
    return clip(f"{message}: {wl.waiting}") if wl is not None and wl.waiting else message


def _suspended_by_user(status: FineTuneJobStatus) -> bool:
    cond = status.condition(c.COND_SUSPENDED)
    return cond is not None and cond.status == "True" and cond.reason == c.REASON_SUSPENDED


def _workers_message(attempt: int, ready: int, total: int) -> str:
    return f"attempt {attempt}: {ready}/{total} workers running"


def _desired_suspend(spec: FineTuneJobSpec, job: JobView) -> bool | None:
    """Job.spec.suspend to apply. None leaves the field to its other owner (Kueue): with a queue,
    the operator keeps a Job suspended until Kueue admits it, and never unsuspends it itself."""
    if spec.suspend:
        return True
    if spec.queue_name:
        return True if job.suspended else None
    return False


def _suspension(nxt: _Next, spec: FineTuneJobSpec, suspended: bool) -> None:
    if suspended and spec.suspend:
        nxt.condition(c.COND_SUSPENDED, True, c.REASON_SUSPENDED, "spec.suspend is true")
    elif suspended:
        nxt.condition(c.COND_SUSPENDED, True, c.REASON_QUEUED, f"queued in Kueue queue {spec.queue_name!r}")
    else:
        nxt.clear(c.COND_SUSPENDED, c.REASON_RESUMED, "running")


def _spec_failure_retry(obs: Observed) -> bool:
    """A job that failed because of its spec is looked at again once the spec was edited."""
    failed = obs.status.condition(c.COND_FAILED)
    return (
        obs.status.phase == c.PHASE_FAILED
        and failed is not None
        and failed.reason in c.SPEC_FAILURE_REASONS
        and obs.status.observed_generation != obs.meta.generation
    )


def _ready(obs: Observed, attempt: int | None = None) -> int:
    att = obs.status.attempt if attempt is None else attempt
    return sum(
        1
        for p in obs.pods
        if p.component == ct.COMPONENT_TRAINER and p.attempt == att and p.phase == "Running" and p.ready and not p.deleting
    )


def _who(p: PodView) -> str:
    return f"worker {p.index} (pod {p.name})" if p.index is not None else f"pod {p.name}"


def _failure_text(p: PodView) -> str | None:
    """The readable part of a failed pod's termination message.

    The trainer writes JSON ({"status", "reason", "message", "exitCode"}): show "reason: message"
    instead of the raw document; anything else (an OOM kill's text, a cut file) is shown as it is.
    """
    if not p.message:
        return None
    try:
        data = json.loads(p.message)
    except ValueError:
        return p.message.strip() or None
    if not isinstance(data, dict):
        return p.message.strip() or None
    reason = str(data.get("reason") or "").strip()
    message = str(data.get("message") or "").strip()
    if reason and message:
        return f"{reason}: {message}"
    return message or reason or None


def _exit_meaning(code: int | None) -> str:
    return {
        ct.EXIT_CONFIG_ERROR: "configuration error",
        ct.EXIT_DATA_ERROR: "model or dataset error",
        ct.EXIT_TRAINING_ERROR: "training error",
        ct.EXIT_PREEMPTED: "preempted",
        137: "killed (out of memory?)",
    }.get(code or -1, f"exit code {code}")


def _summary(pods: list[PodView]) -> dict[str, Any]:
    """The rank-0 trainer's final JSON summary (its termination message), if any."""
    for p in sorted(pods, key=lambda x: (x.index or 0, x.phase != "Succeeded")):
        if p.index in (0, None) and p.message:
            try:
                data = json.loads(p.message)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return {}


def _gpu_seconds(obs: Observed, nxt: _Next, r: Resolved) -> None:
    """Add the GPU time of the current attempt's pods that have ended (finished, or being deleted)
    and are not counted yet, each pod once by UID. Monotonic, and it survives the pods' deletion;
    a running pod changes nothing here (its time so far is a metric, not a status write)."""
    if r.gpus_per_node <= 0:
        return
    st = obs.status
    total = float(st.gpu_seconds if st.gpu_seconds is not None else st.prior_gpu_seconds or 0.0)
    counted = list(st.gpu_counted_pods or [])
    for p in _current_trainers(obs):
        if not p.uid or p.uid in counted:
            continue
        start = parse_time(p.start_time)
        end = parse_time(p.finish_time) or (obs.now if p.deleting else None)
        if p.phase not in ("Succeeded", "Failed") and not p.deleting:
            continue
        if start and end and end > start:
            total += (end - start).total_seconds() * r.gpus_per_node
        counted.append(p.uid)
    nxt.set(gpu_seconds=float(round(total)), gpu_counted_pods=counted or None)
    nxt.running_gpus = tuple(running_gpu_seconds(obs, r.gpus_per_node))


def _current_trainers(obs: Observed) -> list[PodView]:
    return [p for p in obs.pods if p.attempt == obs.status.attempt and p.component == ct.COMPONENT_TRAINER]


def running_gpu_seconds(obs: Observed, gpus_per_node: int) -> list[tuple[datetime, int]]:
    """(start, GPUs) of the current attempt's pods that run now: the live part of the GPU time."""
    if gpus_per_node <= 0:
        return []
    counted = set(obs.status.gpu_counted_pods or [])
    out = []
    for p in _current_trainers(obs):
        start = parse_time(p.start_time)
        if start and p.uid not in counted and p.phase == "Running" and not p.deleting:
            out.append((start, gpus_per_node))
    return out


def _live_seconds(obs: Observed, gpus_per_node: int) -> float:
    return sum((obs.now - start).total_seconds() * gpus for start, gpus in running_gpu_seconds(obs, gpus_per_node) if obs.now > start)


#: What a report that lags behind the status keeps from the status (the step counts); the rest
#: (stage, loss, throughput) is the report's.
_COUNTS = ("step", "total_steps", "epoch", "percent", "trained_tokens")


def _merged_progress(prev: Progress | None, new: Progress) -> Progress:
    """The new report, except that progress never goes backwards: a trainer that is starting
    again (after a restart, a resume or a suspend) reports 0/0 or a step behind the last one
    while it loads the model and its checkpoint; the status keeps the last counts meanwhile
    (without an ETA) and follows the trainer again once it is past them."""
    if prev is None or not prev.total_steps:
        return _with_eta(new)
    behind = not new.total_steps or (new.total_steps == prev.total_steps and (new.step or 0) < (prev.step or 0))
    if not behind:
        return _with_eta(new)
    return new.model_copy(update={**{k: getattr(prev, k) for k in _COUNTS}, "eta_seconds": None, "eta": None})


def _with_eta(p: Progress) -> Progress:
    if p.eta_seconds is None:
        return p
    return p.model_copy(update={"eta": human_duration(p.eta_seconds)})


def human_duration(seconds: int) -> str:
    d = timedelta(seconds=max(int(seconds), 0))
    h, rem = divmod(int(d.total_seconds()), 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _fail(obs: Observed, nxt: _Next, reason: str, message: str) -> Plan:
    nxt.set(phase=c.PHASE_FAILED, message=clip(message))
    nxt.finished()
    nxt.condition(c.COND_FAILED, True, reason, message)
    nxt.clear(c.COND_RUNNING, reason, "the job failed")
    return _finished_plan(obs, nxt)


def _finished_plan(obs: Observed, nxt: _Next, apply: list[dict[str, Any]] | None = None) -> Plan:
    plan = _plan(obs, nxt, apply=apply or [])
    ttl = obs.spec.get("ttlSecondsAfterFinished")
    done = parse_time(plan.status.completion_time)
    if isinstance(ttl, int) and done is not None:
        left = (done + timedelta(seconds=ttl) - obs.now).total_seconds()
        if left <= 0:
            plan.delete.append(Delete("FineTuneJob", obs.meta.name, uid=obs.meta.uid or None))
        else:
            plan.requeue_after = left
    return plan


def _with_suspend(plan: Plan, suspend_job: tuple[str, str, bool] | None) -> Plan:
    plan.suspend_job = suspend_job
    return plan


def _plan(obs: Observed, nxt: _Next, apply: list[dict[str, Any]] | None = None, delete: list[Delete] | None = None) -> Plan:
    status = nxt.build()
    plan = Plan(status=status, apply=list(apply or []), delete=list(delete or []), running_gpus=nxt.running_gpus)
    if status.phase != obs.status.phase and status.phase is not None and (status.phase in NOTABLE_PHASES or obs.status.phase == c.PHASE_SUSPENDED):
        failed = status.phase == c.PHASE_FAILED
        reason = _main_reason(status) or c.EVENT_PHASE_CHANGED
        plan.events.append(
            Event("Warning" if failed else "Normal", reason, clip(f"{obs.status.phase or 'New'} -> {status.phase}: {status.message or ''}"))
        )
    return plan


#: Phases whose entry is an Event (besides every Warning): what a user acts on or waits for. The
#: steps in between (Validating, Queued, Initializing, Uploading) are in the status only, which
#: keeps a job to six API writes from apply to running (four children, two status patches).
NOTABLE_PHASES = (c.PHASE_PENDING, c.PHASE_RUNNING, c.PHASE_SUCCEEDED, c.PHASE_FAILED, c.PHASE_SUSPENDED)


def _main_reason(status: FineTuneJobStatus) -> str | None:
    for type_ in (c.COND_FAILED, c.COND_SUCCEEDED, c.COND_SUSPENDED, c.COND_RUNNING, c.COND_VALIDATED):
        cond = status.condition(type_)
        if cond is not None and (cond.status == "True" or type_ in (c.COND_RUNNING, c.COND_VALIDATED)):
            return cond.reason
    return None

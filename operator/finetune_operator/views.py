"""Small immutable views of the children the operator watches (pure: dict in, dataclass out).

kopf indexes keep these (not whole bodies) in memory, which keeps the operator's footprint small
with thousands of jobs, and the status computation reads only these fields.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from finetune_operator import constants as c

ct = c.contract


@dataclass(frozen=True)
class PodView:
    name: str
    job: str
    component: str
    attempt: int | None
    index: int | None
    phase: str
    ready: bool
    start_time: str | None
    finish_time: str | None
    exit_code: int | None
    #: Termination message of the main container (the trainer's JSON summary or its error).
    message: str | None
    reason: str | None
    disrupted: bool
    pod_ip: str | None
    uid: str = ""
    #: The FineTuneJob UID the pod was made for ("" on children made before the label existed).
    job_uid: str = ""
    #: Why the pod cannot start, as "Reason: message" (an image that cannot be pulled, a missing
    #: Secret or ConfigMap key, no node that fits); None while nothing is in its way.
    blocked: str | None = None
    #: The main container was killed for exceeding its memory limit (terminated reason OOMKilled).
    oom: bool = False
    #: The main container's memory limit as written in the pod ("8Gi"), for the OOM message.
    memory_limit: str | None = None
    #: metadata.deletionTimestamp: the time by which a live kubelet has removed the pod (the
    #: delete's time plus its grace period); None while the pod is not being deleted.
    deletion_deadline: str | None = None
    node: str | None = None
    #: UID of the Job that controls the pod ("" for the validation pod).
    owner_uid: str = ""

    @property
    def deleting(self) -> bool:
        return self.deletion_deadline is not None


#: Container waiting reasons that do not clear by themselves (the kubelet retries, with backoff,
#: what only a change elsewhere can fix): shown on the job as the reason it is not starting.
BLOCKING_WAITING_REASONS = frozenset({
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
})
BLOCKED_TEXT_LIMIT = 400


def _blocked(status: dict[str, Any]) -> str | None:
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in BLOCKING_WAITING_REASONS:
            text = f"{waiting['reason']}: {waiting.get('message') or 'container ' + str(cs.get('name'))}"
            return text[:BLOCKED_TEXT_LIMIT]
    if status.get("phase", "Pending") == "Pending":
        scheduled = next((x for x in status.get("conditions") or [] if x.get("type") == "PodScheduled"), None)
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return f"Unschedulable: {scheduled.get('message') or 'no node fits the pod'}"[:BLOCKED_TEXT_LIMIT]
    return None


@dataclass(frozen=True)
class JobView:
    name: str
    attempt: int | None
    suspended: bool
    complete: bool
    failed: bool
    failed_reason: str | None
    failed_message: str | None
    deleting: bool
    active: int
    ready: int
    succeeded: int
    failed_pods: int
    uid: str = ""
    job_uid: str = ""
    #: metadata.creationTimestamp (RFC 3339).
    created: str | None = None
    #: The Kueue Workload the Job names (kueue.x-k8s.io/prebuilt-workload-name): the job's own.
    workload_name: str | None = None


def _int(value: Any) -> int | None:
    with contextlib.suppress(TypeError, ValueError):
        return int(value)
    return None


def pod_view(body: dict[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = body.get("status") or {}
    conditions = {x.get("type"): x for x in status.get("conditions") or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    disrupted = (conditions.get("DisruptionTarget") or {}).get("status") == "True" or status.get("reason") in (
        "Evicted",
        "Preempting",
        "Terminated",
    )
    exit_code = None
    message = None
    finish = None
    oom = False
    main = (labels.get(ct.LABEL_COMPONENT) == ct.COMPONENT_VALIDATOR and c.VALIDATOR_CONTAINER) or c.TRAINER_CONTAINER
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != main:
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            exit_code = _int(term.get("exitCode"))
            message = term.get("message") or None
            finish = term.get("finishedAt")
            oom = term.get("reason") == "OOMKilled"
    container: dict[str, Any] = next((x for x in (body.get("spec") or {}).get("containers") or [] if x.get("name") == main), {})
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return PodView(
        name=meta.get("name", ""),
        job=labels.get(ct.LABEL_JOB_NAME, ""),
        component=labels.get(ct.LABEL_COMPONENT, ""),
        attempt=_int(labels.get(ct.LABEL_ATTEMPT)),
        index=_int(annotations.get(ct.ANNOTATION_JOB_COMPLETION_INDEX) or labels.get(ct.ANNOTATION_JOB_COMPLETION_INDEX)),
        phase=status.get("phase") or "Pending",
        ready=ready,
        start_time=status.get("startTime"),
        finish_time=finish,
        exit_code=exit_code,
        message=message,
        reason=status.get("reason"),
        disrupted=disrupted,
        pod_ip=status.get("podIP"),
        uid=meta.get("uid", ""),
        job_uid=labels.get(ct.LABEL_JOB_UID, ""),
        blocked=_blocked(status),
        oom=oom,
        memory_limit=str(limit) if limit is not None else None,
        deletion_deadline=meta.get("deletionTimestamp"),
        node=(body.get("spec") or {}).get("nodeName"),
        owner_uid=next((r.get("uid", "") for r in meta.get("ownerReferences") or [] if r.get("kind") == "Job" and r.get("controller")), ""),
    )


def job_view(body: dict[str, Any]) -> JobView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    conds = {x.get("type"): x for x in status.get("conditions") or [] if x.get("status") == "True"}
    failed = conds.get("Failed") or conds.get("FailureTarget")
    return JobView(
        name=meta.get("name", ""),
        attempt=_int(labels.get(ct.LABEL_ATTEMPT)),
        suspended=bool(spec.get("suspend")),
        complete="Complete" in conds,
        failed=failed is not None,
        failed_reason=(failed or {}).get("reason"),
        failed_message=(failed or {}).get("message"),
        deleting=meta.get("deletionTimestamp") is not None,
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed_pods=int(status.get("failed") or 0),
        uid=meta.get("uid", ""),
        job_uid=labels.get(ct.LABEL_JOB_UID, ""),
        created=meta.get("creationTimestamp"),
        workload_name=labels.get(ct.LABEL_KUEUE_PREBUILT_WORKLOAD) or None,
    )


@dataclass(frozen=True)
class WorkloadView:
    """The Kueue Workload of a job with a queue (read, not watched)."""

    name: str
    uid: str
    #: spec.active (false: deactivated, Kueue keeps its Job suspended and holds no quota).
    active: bool
    #: UIDs of the Jobs in its ownerReferences (Kueue makes the Job it serves the controller; a
    #: deleted attempt's stays until the garbage collector drops it).
    job_owners: tuple[str, ...]
    quota_reserved: bool
    admitted: bool
    finished: bool
    #: Why it waits or was evicted, in Kueue's words ("Reason: message"), else None.
    waiting: str | None = None
    deleting: bool = False
    #: Kueue's words on why it finished ("Reason: message"), when it did.
    finished_why: str | None = None


def workload_view(body: dict[str, Any]) -> WorkloadView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conds = {x.get("type"): x for x in status.get("conditions") or []}

    def true(kind: str) -> bool:
        return (conds.get(kind) or {}).get("status") == "True"

    waiting = None
    for kind, flag in (("Evicted", "True"), ("QuotaReserved", "False")):
        cond = conds.get(kind) or {}
        if cond.get("status") == flag and (cond.get("message") or cond.get("reason")):
            waiting = f"{cond.get('reason') or kind}: {cond.get('message') or ''}".strip()
            break
    return WorkloadView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        active=(body.get("spec") or {}).get("active") is not False,
        job_owners=tuple(r.get("uid", "") for r in meta.get("ownerReferences") or [] if r.get("kind") == "Job"),
        quota_reserved=true("QuotaReserved"),
        admitted=true("Admitted"),
        finished=true("Finished"),
        waiting=waiting,
        deleting=meta.get("deletionTimestamp") is not None,
        finished_why=(f"{(conds.get('Finished') or {}).get('reason') or 'Finished'}: {(conds.get('Finished') or {}).get('message') or ''}".strip() if true("Finished") else None),
    )


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")

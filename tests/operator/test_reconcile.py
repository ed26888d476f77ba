"""Reconciler bookkeeping, without a cluster: which watch events lead to a plan, which API calls a
plan turns into, retries after an apply conflict, the bound on concurrent reconciles, and timer
work held back while a peer outranks this replica.

`RecordingKube` stands in for `finetune_operator.kube.Kube` (the one I/O module) and records
the calls it is asked to make; what those calls do on a real API server is covered by
`test_integration.py`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from finetune_operator import constants as c
from finetune_operator import metrics
from finetune_operator.api import Progress
from finetune_operator.kube import KubeError
from finetune_operator.reconcile import Indexes, Reconciler, ftj_record

from tests.operator.helpers import CONFIG, RUNTIMES, UID, VALIDATED, job, minimal_spec, pod

ct = c.contract

KEY = ("ns", "job")


class RecordingKube:
    """Records applies and status patches; `conflicts` names kinds whose next apply gets a 409."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.conflicts: set[str] = set()
        self.foreign: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.patches: list[dict[str, Any]] = []
        self.resource_versions: list[str | None] = []
        self.deleted: list[Any] = []
        #: What patch_status returns (None: the resourceVersion was stale) or raises.
        self.status_result: bool | Exception | None = True
        #: kind -> the KubeError its create gets (the API server refusing it)
        self.refused: dict[str, Exception] = {}

    async def apply(self, manifest: dict[str, Any]) -> bool:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            kind = manifest["kind"]
            self.calls.append(("apply", kind))
            if kind in self.conflicts:
                self.conflicts.discard(kind)
                return False
            return True
        finally:
            self.in_flight -= 1

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """As if the object existed already, made by the operator: the executor goes on to apply
        (what these tests record). `foreign` names kinds whose name someone else holds."""
        if manifest["kind"] in self.refused:
            self.calls.append(("refused", manifest["kind"]))
            raise self.refused[manifest["kind"]]
        if manifest["kind"] in self.foreign:
            self.calls.append(("taken", manifest["kind"]))
            return {"labels": {}}
        return {"labels": manifest["metadata"].get("labels") or {}}

    async def failed_create(self, namespace: str, uid: str) -> str | None:
        return None

    async def metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return {"labels": {}} if kind in self.foreign else None

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None = None) -> bool | None:
        self.calls.append(("status", str(patch.get("phase"))))
        self.patches.append(patch)
        self.resource_versions.append(resource_version)
        if isinstance(self.status_result, Exception):
            raise self.status_result
        return self.status_result

    async def suspend_job(self, namespace: str, name: str, uid: str, suspend: bool) -> None:
        self.calls.append(("suspend", str(suspend)))

    async def delete(self, namespace: str, item: Any) -> None:
        self.calls.append(("delete", item.kind))
        self.deleted.append(item)

    async def event(self, meta: Any, event: Any, now: Any) -> None:
        self.calls.append(("event", event.reason))


def record(status: dict[str, Any] | None = None, uid: str = UID) -> dict[str, Any]:
    return ftj_record({"metadata": {"uid": uid, "generation": 1}, "spec": minimal_spec(), "status": status or {}})


def reconciler(kube: RecordingKube, jobs: dict[Any, Any], pods: dict[Any, Any], concurrency: int = 32) -> Reconciler:
    r = Reconciler(kube, CONFIG, concurrency=concurrency)  # type: ignore[arg-type]
    r.indexes = Indexes(jobs=jobs, runtimes=RUNTIMES, children={}, pods=pods)
    return r


def counter(c: Any) -> float:
    return float(c._value.get())


async def until(done: Any, tries: int = 100) -> None:
    """Let the workers run until `done()` holds (at most `tries` x 10 ms)."""
    for _ in range(tries):
        if done():
            return
        await asyncio.sleep(0.01)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_echo_of_its_own_status_write_computes_no_plan() -> None:
    async def go() -> None:
        kube = RecordingKube()
        jobs: dict[Any, Any] = {KEY: [record()]}
        r = reconciler(kube, jobs, {})
        first = await r.reconcile(KEY)
        await settle()
        assert first is not None and first.status.phase == "Validating"
        assert [c for c in kube.calls if c[0] != "event"] == [("apply", "ConfigMap"), ("apply", "Service"), ("apply", "Pod"), ("status", "Validating")]
        # The watch brings back the status just written: same inputs, no plan, no calls.
        jobs[KEY] = [record(first.status.to_wire())]
        kube.calls.clear()
        before = counter(metrics.UNCHANGED)
        assert await r.reconcile(KEY) is None
        assert kube.calls == [] and counter(metrics.UNCHANGED) == before + 1
        # Forced (resync, timed retry): the plan is computed; nothing changed, so nothing is sent.
        assert await r.reconcile(KEY, force=True) is not None
        assert kube.calls == []

    asyncio.run(go())


def test_a_changed_child_is_reconciled() -> None:
    async def go() -> None:
        kube = RecordingKube()
        jobs: dict[Any, Any] = {KEY: [record()]}
        pods: dict[Any, Any] = {}
        r = reconciler(kube, jobs, pods)
        first = await r.reconcile(KEY)
        await settle()
        assert first is not None
        jobs[KEY] = [record(first.status.to_wire())]
        pods[KEY] = [pod("job-validate", component="validator", index=None, phase="Succeeded", ready=False, exit_code=0)]
        kube.calls.clear()
        plan = await r.reconcile(KEY)
        await settle()
        assert plan is not None and plan.status.phase == "Initializing"
        # The ConfigMap and Service are unchanged since the validation step: only the Job is sent.
        assert [c for c in kube.calls if c[0] == "apply"] == [("apply", "Job")]

    asyncio.run(go())


def test_apply_conflict_is_retried_even_without_a_new_event() -> None:
    async def go() -> None:
        kube = RecordingKube()
        kube.conflicts = {"Pod"}
        jobs: dict[Any, Any] = {KEY: [record()]}
        r = reconciler(kube, jobs, {})
        first = await r.reconcile(KEY)
        await settle()
        assert first is not None
        jobs[KEY] = [record(first.status.to_wire())]
        kube.calls.clear()
        # Same inputs as the run whose Pod apply conflicted: not skipped, and only the Pod is re-sent.
        await r.reconcile(KEY)
        assert kube.calls == [("apply", "Pod")]
        r.forget(KEY)

    asyncio.run(go())


def test_concurrent_reconciles_are_bounded() -> None:
    async def go() -> None:
        kube = RecordingKube()
        kube.gate = asyncio.Event()
        keys = [("ns", f"job-{i}") for i in range(10)]
        jobs: dict[Any, Any] = {k: [record(uid=f"uid-{i}")] for i, k in enumerate(keys)}
        r = reconciler(kube, jobs, {}, concurrency=3)
        for k in keys:
            r.enqueue(k)
        workers = r.start()
        try:
            await asyncio.sleep(0.05)
            # Three workers hold a reconcile each (two applies each); the other seven keys wait
            # in the queue before rendering anything.
            assert kube.in_flight == 6
            kube.gate.set()
            await until(lambda: sum(c[0] == "status" for c in kube.calls) == len(keys), tries=200)
            assert [c[1] for c in kube.calls if c[0] == "status"] == ["Validating"] * len(keys)
            assert kube.most_in_flight == 6
        finally:
            for w in workers:
                w.cancel()

    asyncio.run(go())


def test_events_for_a_queued_job_are_coalesced() -> None:
    async def go() -> None:
        kube = RecordingKube()
        jobs: dict[Any, Any] = {KEY: [record()]}
        r = reconciler(kube, jobs, {}, concurrency=2)
        before = counter(metrics.COALESCED)
        for _ in range(5):  # five watch events before any worker runs
            r.enqueue(KEY)
        assert counter(metrics.COALESCED) == before + 4
        workers = r.start()
        try:
            await until(lambda: any(c[0] == "status" for c in kube.calls))
            await settle()
        finally:
            for w in workers:
                w.cancel()
        # One reconcile for the five events.
        assert [c for c in kube.calls if c[0] != "event"] == [("apply", "ConfigMap"), ("apply", "Service"), ("apply", "Pod"), ("status", "Validating")]

    asyncio.run(go())


def test_a_busy_key_never_holds_a_second_worker() -> None:
    """Events for a job whose reconcile is running wait as one dirty entry; they do not park
    more workers on its lock, and give exactly one more reconcile once it is done."""

    async def go() -> None:
        kube = RecordingKube()
        kube.gate = asyncio.Event()
        other = ("ns", "other")
        jobs: dict[Any, Any] = {KEY: [record()], other: [record(uid="22222222-2222-3333-4444-555555555555")]}
        r = reconciler(kube, jobs, {}, concurrency=2)
        runs: dict[Any, int] = {}
        busy: dict[Any, int] = {}
        most_busy = 0
        inner = r.reconcile

        async def counted(key: Any, **kw: Any) -> Any:
            nonlocal most_busy
            runs[key] = runs.get(key, 0) + 1
            busy[key] = busy.get(key, 0) + 1
            most_busy = max(most_busy, busy[key])
            try:
                return await inner(key, **kw)
            finally:
                busy[key] -= 1

        r.reconcile = counted  # type: ignore[method-assign]
        workers = r.start()
        try:
            r.enqueue(KEY)
            await until(lambda: kube.in_flight)
            for _ in range(5):  # events while KEY's reconcile is blocked in an apply
                r.enqueue(KEY, force=True)
            r.enqueue(other)
            await until(lambda: kube.in_flight >= 2)  # the second worker is free for another job
            assert kube.in_flight == 2, "the other job waited behind a busy key"
            kube.gate.set()
            await until(lambda: r._work.empty() and not r._pending and not r._processing, tries=200)
            await settle()
        finally:
            for w in workers:
                w.cancel()
        assert most_busy == 1  # never two workers on one key
        assert runs == {KEY: 2, other: 1}  # KEY, then once more for the five events; the other job

    asyncio.run(go())


def test_progress_reports_go_through_the_queue() -> None:
    async def go() -> None:
        kube = RecordingKube()
        running = {"phase": "Running", "conditions": [VALIDATED], "startTime": "2026-01-01T12:00:00Z"}
        jobs: dict[Any, Any] = {KEY: [record(running)]}
        pods: dict[Any, Any] = {KEY: [pod("job-0", index=0), pod("job-1", index=1)]}
        r = reconciler(kube, jobs, pods)
        r.indexes = Indexes(jobs=jobs, runtimes=RUNTIMES, children={KEY: [job()]}, pods=pods)
        first = await r.reconcile(KEY)
        assert first is not None and first.status.phase == "Running"
        jobs[KEY] = [record(first.status.to_wire())]
        kube.calls.clear()
        # The same observations plus a progress report: not skipped, and the report is written.
        r.enqueue(KEY, progress=Progress(step=40, total_steps=160, percent=25.0, loss=0.71))
        workers = r.start()
        try:
            await until(lambda: kube.calls)
        finally:
            for w in workers:
                w.cancel()
        assert [c[0] for c in kube.calls] == ["status"]
        assert kube.patches[-1]["progress"]["percent"] == 25.0

    asyncio.run(go())


def _failed_attempt(kube: RecordingKube) -> tuple[Reconciler, dict[Any, Any]]:
    """A running attempt 0 whose worker 1 failed: the plan restarts the group as attempt 1."""
    status = {"phase": "Running", "conditions": [VALIDATED], "startTime": "2026-01-01T12:00:00Z"}
    rec = record(status)
    rec["resourceVersion"] = "42"
    jobs: dict[Any, Any] = {KEY: [rec]}
    pods = {KEY: [pod("job-0", index=0), pod("job-1", index=1, phase="Failed", ready=False, exit_code=1)]}
    r = reconciler(kube, jobs, pods)
    assert r.indexes is not None
    r.indexes.children[KEY] = [job(0, failed=True, uid="job-uid-0")]
    return r, jobs


@pytest.mark.parametrize("outcome", ["written", "stale", "error"])
def test_a_restart_is_recorded_before_the_failed_attempt_is_deleted(outcome: str) -> None:
    """Record, then act: the status that counts the restart is written first, conditional on the
    resourceVersion the decision was taken from; only once it landed is the old Job deleted, by UID."""

    async def go() -> None:
        kube = RecordingKube()
        kube.status_result = {"written": True, "stale": None, "error": KubeError(503, "etcd leader changed")}[outcome]
        r, _ = _failed_attempt(kube)
        await r.reconcile(KEY)
        await settle()
        calls = [c for c in kube.calls if c[0] in ("status", "delete")]
        assert calls[0] == ("status", "Initializing") and kube.resource_versions == ["42"]
        assert kube.patches[0]["restarts"] == 1 and kube.patches[0]["attempt"] == 1
        if outcome == "written":
            assert calls == [("status", "Initializing"), ("delete", "Job")]
            assert kube.deleted[0].uid == "job-uid-0" and kube.deleted[0].propagation == "Foreground"
        else:  # nothing recorded: nothing deleted; the next reconcile decides again
            assert ("delete", "Job") not in calls
        r.forget(KEY)

    asyncio.run(go())


def test_a_restart_recorded_before_a_crash_is_finished_not_repeated() -> None:
    """The operator died after writing restarts=1 and before deleting attempt 0: a fresh process
    sees status attempt 1 and the attempt-0 Job, deletes that Job and counts nothing again."""

    async def go() -> None:
        kube = RecordingKube()
        r, jobs = _failed_attempt(kube)
        await r.reconcile(KEY)
        written = kube.patches[0]
        fresh = RecordingKube()
        r2 = reconciler(fresh, {KEY: [record({**jobs[KEY][0]["status"], **written})]}, r.indexes.pods if r.indexes else {})
        assert r2.indexes is not None
        r2.indexes.children[KEY] = [job(0, failed=True, uid="job-uid-0")]
        plan = await r2.reconcile(KEY)
        await settle()
        assert plan is not None and plan.status.restarts == 1 and plan.status.attempt == 1
        assert [c for c in fresh.calls if c[0] == "delete"] == [("delete", "Job")]
        assert all(p.get("restarts", 1) == 1 for p in fresh.patches)
        r.forget(KEY)
        r2.forget(KEY)

    asyncio.run(go())


def test_repeated_conflicts_back_off_per_key_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A status that keeps changing under the operator (409 on the resourceVersion precondition)
    is retried after 1, 2, 4... s (x0.8-1.2), not every second; success resets the count."""

    async def go() -> None:
        kube = RecordingKube()
        kube.status_result = None  # stale resourceVersion, every time
        r, _ = _failed_attempt(kube)
        delays: list[float] = []
        loop = asyncio.get_running_loop()
        real_call_later = loop.call_later

        def record_delay(delay: float, *args: Any) -> Any:
            delays.append(delay)
            return real_call_later(3600, *args)  # never fires during the test

        monkeypatch.setattr(loop, "call_later", record_delay)
        for _ in range(4):
            await r.reconcile(KEY, force=True)
        for d, base in zip(delays, (1, 2, 4, 8), strict=True):
            assert 0.8 * base <= d <= 1.2 * base, delays
        assert ("delete", "Job") not in kube.calls  # nothing deleted while the record is refused
        kube.status_result = True
        await r.reconcile(KEY, force=True)
        assert KEY not in r._failures and ("delete", "Job") in kube.calls
        r.forget(KEY)

    asyncio.run(go())


SUCCEEDED = {
    "phase": "Succeeded",
    "message": "training finished; adapter uploaded",
    "completionTime": "2026-01-01T13:00:00Z",
    "observedGeneration": 1,
    "conditions": [VALIDATED, {"type": "Succeeded", "status": "True", "reason": "TrainingSucceeded", "message": "adapter at s3://b/o/", "lastTransitionTime": "2026-01-01T13:00:00Z"}],
    "output": {"adapterUri": "s3://b/o/adapter/", "sha256": "0" * 64},
    "progress": {"step": 10, "totalSteps": 10, "percent": 100.0},
}


def test_a_finished_jobs_record_keeps_only_what_is_still_decided() -> None:
    body = {"metadata": {"uid": UID, "generation": 1}, "spec": minimal_spec(), "status": SUCCEEDED}
    rec = ftj_record(body)
    assert rec["settled"] is True
    assert rec["spec"] == {} and rec["status"] == {"phase": "Succeeded", "completionTime": "2026-01-01T13:00:00Z", "observedGeneration": 1}
    with_ttl = ftj_record({**body, "spec": {**minimal_spec(), "ttlSecondsAfterFinished": 60}})
    assert with_ttl["settled"] is False and with_ttl["spec"] == {"ttlSecondsAfterFinished": 60}
    # a spec failure is retried when the spec is edited: its record stays whole
    failed = {"phase": "Failed", "conditions": [{"type": "Failed", "status": "True", "reason": "InvalidSpec", "message": "x", "lastTransitionTime": "2026-01-01T13:00:00Z"}]}
    spec_failure = ftj_record({**body, "status": failed})
    assert spec_failure["settled"] is False and spec_failure["spec"] == minimal_spec()
    restarts = {**failed, "conditions": [{**failed["conditions"][0], "reason": "RestartLimitExceeded"}]}
    assert ftj_record({**body, "status": restarts})["status"]["conditions"][0]["reason"] == "RestartLimitExceeded"


def test_settled_jobs_cost_no_request_and_no_per_job_state() -> None:
    async def go() -> None:
        kube = RecordingKube()
        done = ftj_record({"metadata": {"uid": UID, "generation": 1}, "spec": minimal_spec(), "status": SUCCEEDED})
        jobs: dict[Any, Any] = {KEY: [done]}
        r = reconciler(kube, jobs, {})
        assert await r.reconcile(KEY) is None
        assert kube.calls == []
        assert KEY not in r._locks and KEY not in r._inputs and KEY not in r._applied and KEY not in r._written
        assert r.phases._phases[KEY] == "Succeeded"  # still counted in finetune_operator_jobs

    asyncio.run(go())


def test_a_childs_name_held_by_someone_else_is_reported_never_overwritten() -> None:
    """The validation pod's name is held by a pod this operator did not make: nothing is applied
    over it, the job says what is in the way (Pending, ChildNameTaken, a Warning event), and it
    goes on once that pod is gone."""

    async def go() -> None:
        kube = RecordingKube()
        kube.foreign = {"Pod"}
        jobs: dict[Any, Any] = {KEY: [record()]}
        r = reconciler(kube, jobs, {})
        await r.reconcile(KEY)
        assert ("taken", "Pod") in kube.calls and ("apply", "Pod") not in kube.calls
        kube.calls.clear()
        plan = await r.reconcile(KEY, force=True)
        assert plan is not None and plan.status.phase == "Pending" and plan.apply == []
        assert "Pod job-validate already exists and does not belong to this FineTuneJob" in (plan.status.message or "")
        await until(lambda: ("event", c.REASON_CHILD_NAME_TAKEN) in kube.calls)
        assert ("event", c.REASON_CHILD_NAME_TAKEN) in kube.calls
        assert not any(call[0] == "apply" for call in kube.calls)
        # while the pod is still there, the job stays as it is: no flip back, no write, no event
        jobs[KEY] = [record(plan.status.to_wire())]
        kube.calls.clear()
        again = await r.reconcile(KEY, force=True)
        assert again is not None and again.status.phase == "Pending" and again.apply == []
        await settle()
        assert kube.calls == [], kube.calls
        kube.foreign = set()  # the other pod is deleted
        kube.calls.clear()
        jobs[KEY] = [record(plan.status.to_wire())]
        await r.reconcile(KEY, force=True)
        assert ("apply", "Pod") in kube.calls
        for handle in r._retry.values():
            handle.cancel()

    asyncio.run(go())


def test_a_child_the_api_server_refuses_is_reported_and_tried_again_with_backoff() -> None:
    """A quota (403) refuses the validation pod: the job says which child and why (condition
    ChildRejected + one Warning event), the create is retried with backoff, not every second, and
    once it goes in the plain status comes back."""

    async def go() -> None:
        kube = RecordingKube()
        refusal = 'pods "job-validate" is forbidden: exceeded quota: compute, requested: requests.memory=2Gi, used: requests.memory=7Gi, limited: requests.memory=8Gi'
        kube.refused = {"Pod": KubeError(403, refusal)}
        jobs: dict[Any, Any] = {KEY: [record()]}
        r = reconciler(kube, jobs, {})
        await r.reconcile(KEY)
        assert ("refused", "Pod") in kube.calls and ("apply", "Pod") not in kube.calls
        assert KEY in r._retry, "a refused child is tried again (with backoff)"
        first_delay = r._failures.get(KEY)
        plan = await r.reconcile(KEY, force=True)
        assert plan is not None and plan.status.phase == "Validating"
        validated = plan.status.condition("Validated")
        assert validated is not None and validated.reason == c.REASON_CHILD_REJECTED
        assert plan.status.message == f"validation pod job-validate created; the API server refused Pod job-validate: {refusal}"
        await until(lambda: ("event", c.REASON_CHILD_REJECTED) in kube.calls)
        assert (r._failures.get(KEY) or 0) > (first_delay or 0), "each refusal backs off further"
        # the same refusal again: no second event, no status write
        jobs[KEY] = [record(plan.status.to_wire())]
        kube.calls.clear()
        again = await r.reconcile(KEY, force=True)
        await settle()
        assert again is not None and again.status == plan.status
        assert [call for call in kube.calls if call[0] in ("event", "status")] == [], kube.calls
        # the quota is raised: the pod goes in, the plain status is back
        kube.refused = {}
        kube.calls.clear()
        await r.reconcile(KEY, force=True)
        assert ("apply", "Pod") in kube.calls
        fixed = await r.reconcile(KEY, force=True)
        assert fixed is not None and fixed.status.condition("Validated").reason == c.REASON_VALIDATION_RUNNING  # type: ignore[union-attr]
        assert "refused" not in (fixed.status.message or "")
        for handle in r._retry.values():
            handle.cancel()

    asyncio.run(go())


def test_a_namespace_being_deleted_is_no_refusal_to_report() -> None:
    """Creates in a namespace being deleted are refused (403, cause NamespaceTerminating): the
    job goes with its namespace, so nothing is reported (no ChildRejected, no event to post)."""
    from finetune_operator.kube import _namespace_terminating

    status = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "unable to create new content in namespace ns because it is being terminated",
              "details": {"name": "job-validate", "kind": "pods", "causes": [{"type": "NamespaceTerminating", "message": "namespace ns is being terminated", "field": "metadata.namespace"}]}}
    assert _namespace_terminating(status) and not _namespace_terminating({"code": 403, "details": {"causes": [{"type": "FieldValueInvalid"}]}})

    async def go() -> None:
        kube = RecordingKube()
        kube.refused = {"Pod": KubeError(403, status["message"], terminating=True)}
        jobs: dict[Any, Any] = {KEY: [record()]}
        r = reconciler(kube, jobs, {})
        await r.reconcile(KEY)
        plan = await r.reconcile(KEY, force=True)
        await settle()
        assert plan is not None and (plan.status.condition("Validated") or None) is not None
        assert plan.status.condition("Validated").reason != c.REASON_CHILD_REJECTED  # type: ignore[union-attr]
        assert ("event", c.REASON_CHILD_REJECTED) not in kube.calls
        for handle in r._retry.values():
            handle.cancel()

    asyncio.run(go())


def test_a_pod_without_its_attempt_label_takes_the_attempt_of_its_job() -> None:
    """Kueue resets a stopped Job's pod template labels to its Workload's (which cannot name the
    attempt): the pods it starts again belong to the attempt of the Job that controls them."""
    from dataclasses import replace

    from finetune_operator.views import pod_view

    body = {
        "metadata": {
            "name": "job-0-x",
            "labels": {ct.LABEL_MANAGED_BY: ct.MANAGED_BY, ct.LABEL_JOB_NAME: "job", ct.LABEL_COMPONENT: ct.COMPONENT_TRAINER},
            "ownerReferences": [{"kind": "Job", "name": "job", "uid": "job-uid-2", "controller": True}],
        },
        "status": {"phase": "Running"},
    }
    unlabelled = pod_view(body)
    assert unlabelled.attempt is None and unlabelled.owner_uid == "job-uid-2"
    labelled = replace(unlabelled, name="job-1-y", attempt=2)
    indexes = Indexes(jobs={}, runtimes={}, children={KEY: [job(attempt=2, uid="job-uid-2")]}, pods={KEY: [unlabelled, labelled]})
    assert [p.attempt for p in indexes.pod_views(KEY)] == [2, 2]
    stranger = replace(unlabelled, owner_uid="other")
    assert [p.attempt for p in Indexes(jobs={}, runtimes={}, children={KEY: [job(attempt=2, uid="job-uid-2")]}, pods={KEY: [stranger]}).pod_views(KEY)] == [None]

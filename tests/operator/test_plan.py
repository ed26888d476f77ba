"""Status computation (plan.decide): pure tables from observed state to phase, conditions,
children to apply/delete and events."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from finetune_operator import constants as c
from finetune_operator.api import Progress, parse_runtime
from finetune_operator.plan import Delete, decide
from finetune_operator.resolve import OperatorConfig
from finetune_operator.views import WorkloadView

from tests.operator.helpers import T0, UID, VALIDATED, job, minimal_spec, observed, pod

ct = c.contract


def trainer_failure(reason: str, message: str, code: int) -> str:
    """The termination message the real trainer writes on failure (finetune_trainer.__main__)."""
    from finetune_trainer.__main__ import termination_text

    return termination_text({"status": "Failed", "reason": reason, "message": message, "exitCode": code})


RUNNING_STATUS: dict[str, Any] = {"phase": "Running", "conditions": [VALIDATED], "startTime": "2026-01-01T12:00:00Z"}


def kinds(plan: Any) -> list[str]:
    return [m["kind"] for m in plan.apply]


def cond(plan: Any, type_: str) -> Any:
    return plan.status.condition(type_)


def test_new_job_starts_validation_first() -> None:
    plan = decide(observed())
    assert plan.status.phase == "Validating"
    assert kinds(plan) == ["ConfigMap", "Service", "Pod"]
    assert plan.apply[2]["metadata"]["labels"][ct.LABEL_COMPONENT] == ct.COMPONENT_VALIDATOR
    assert cond(plan, "Validated").status == "False" and cond(plan, "Validated").reason == c.REASON_VALIDATION_RUNNING
    assert plan.status.start_time is not None
    assert plan.events == []  # Validating is in the status; no Event for each step


def test_running_validation_pod() -> None:
    plan = decide(observed(status={"phase": "Validating"}, validator=pod("job-validate", component="validator", index=None)))
    assert plan.status.phase == "Validating" and not plan.apply and not plan.events
    assert cond(plan, "Validated").reason == c.REASON_VALIDATION_RUNNING


def test_validation_passed_creates_training_children() -> None:
    v = pod("job-validate", component="validator", index=None, phase="Succeeded", ready=False, exit_code=0)
    plan = decide(observed(status={"phase": "Validating"}, validator=v))
    assert kinds(plan) == ["ConfigMap", "Service", "Job"]
    assert plan.apply[2]["spec"]["suspend"] is False
    assert plan.status.phase == "Initializing"
    assert cond(plan, "Validated").status == "True" and cond(plan, "Validated").reason == c.REASON_VALIDATION_PASSED


def test_validation_failure_ends_the_job_with_the_reason_and_takes_no_gpu() -> None:
    v = pod("job-validate", component="validator", index=None, phase="Failed", ready=False, exit_code=3, message=trainer_failure("DataError", "dataset line 7: missing 'messages'", 3))
    plan = decide(observed(status={"phase": "Validating"}, validator=v))
    assert plan.status.phase == "Failed"
    assert not any(m["kind"] == "Job" for m in plan.apply)
    failed = cond(plan, "Failed")
    assert failed.reason == c.REASON_VALIDATION_FAILED
    assert "exit code 3" in failed.message and "missing 'messages'" in failed.message
    assert "DataError: dataset line 7: missing 'messages'" in failed.message and "{" not in failed.message and "exitCode" not in failed.message
    assert plan.status.completion_time is not None
    assert plan.events and plan.events[0].type == "Warning"


def test_a_validation_pod_that_could_not_reach_a_source_is_run_again_then_the_job_fails() -> None:
    """Exit 4 from validate (a 503 or a timeout from the model or dataset source) runs a new
    validation pod, each failure counted once, up to MAX_VALIDATION_RETRIES; then ValidationFailed."""
    text = trainer_failure("SourceUnavailable", "dataset.uri: GET https://data.example/x.jsonl answered HTTP 503 Service Unavailable", 4)
    status: dict[str, Any] = {"phase": "Validating"}
    for tries in range(c.MAX_VALIDATION_RETRIES):
        failed = pod("job-validate", component="validator", index=None, attempt=tries or None, phase="Failed", ready=False, exit_code=4, message=text, uid=f"v{tries}")
        plan = decide(observed(status=status, validator=failed))
        assert plan.status.phase == "Validating" and plan.status.validation_retries == tries + 1
        assert plan.delete == [Delete("Pod", "job-validate", uid=f"v{tries}")] and "HTTP 503" in (plan.status.message or "")
        # seen again before the delete shows: not counted twice
        again = decide(observed(status=plan.status.to_wire(), validator=failed))
        assert again.status.validation_retries == tries + 1
        # gone: the next pod carries the count as its attempt label
        status = plan.status.to_wire()
        fresh = decide(observed(status=status))
        validator = next(m for m in fresh.apply if m["kind"] == "Pod")
        assert validator["metadata"]["labels"][ct.LABEL_ATTEMPT] == str(tries + 1)
    last = pod("job-validate", component="validator", index=None, attempt=c.MAX_VALIDATION_RETRIES, phase="Failed", ready=False, exit_code=4, message=text)
    final = decide(observed(status=status, validator=last))
    assert final.status.phase == "Failed" and cond(final, "Failed").reason == c.REASON_VALIDATION_FAILED


def test_disrupted_validation_pod_is_retried() -> None:
    v = pod("job-validate", component="validator", index=None, phase="Failed", ready=False, disrupted=True, exit_code=137)
    plan = decide(observed(status={"phase": "Validating"}, validator=v))
    assert plan.status.phase == "Validating" and plan.delete == [Delete("Pod", "job-validate")]


@pytest.mark.parametrize(
    ("pods", "phase", "ready", "running_reason"),
    [
        ((), "Initializing", 0, c.REASON_WORKERS_STARTING),
        ((pod("job-0", index=0),), "Initializing", 1, c.REASON_WORKERS_STARTING),
        ((pod("job-0", index=0), pod("job-1", index=1, ready=False, phase="Pending")), "Initializing", 1, c.REASON_WORKERS_STARTING),
        ((pod("job-0", index=0), pod("job-1", index=1)), "Running", 2, c.REASON_WORKERS_RUNNING),
        # pods of an older attempt do not count
        ((pod("job-0", index=0, attempt=1), pod("job-1", index=1, attempt=1)), "Initializing", 0, c.REASON_WORKERS_STARTING),
        # one worker already left the final barrier: the group is finishing, not starting again
        ((pod("job-0", index=0), pod("job-1", index=1, phase="Succeeded", ready=False, exit_code=0)), "Uploading", 1, c.REASON_UPLOADING),
        # ... also while its pod is still Running but its container has exited 0
        ((pod("job-0", index=0), pod("job-1", index=1, ready=False, exit_code=0)), "Uploading", 1, c.REASON_UPLOADING),
        ((pod("job-0", index=0, phase="Pending", ready=False), pod("job-1", index=1, phase="Succeeded", ready=False, exit_code=0)), "Initializing", 0, c.REASON_WORKERS_STARTING),
    ],
)
def test_worker_readiness(pods: tuple[Any, ...], phase: str, ready: int, running_reason: str) -> None:
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods))
    assert plan.status.phase == phase
    assert plan.status.workers is not None and (plan.status.workers.ready, plan.status.workers.total) == (ready, 2)
    assert cond(plan, "Running").reason == running_reason
    assert kinds(plan) == ["ConfigMap", "Service"] and not plan.delete  # wanted all along; sent only if missing


def test_a_worker_that_cannot_start_is_named_with_its_cause_and_warned_once() -> None:
    pull = "ImagePullBackOff: Back-off pulling image \"registry.invalid/trainer:typo\""
    pods = (pod("job-0", index=0), pod("job-1", index=1, phase="Pending", ready=False, blocked=pull))
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods))
    assert plan.status.phase == "Initializing"
    assert plan.status.message == f"attempt 0: 1/2 workers running; worker 1 (pod job-1) cannot start: {pull}"
    assert cond(plan, "Running").reason == "ImagePullBackOff" and cond(plan, "Running").message == plan.status.message
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ImagePullBackOff")]
    # the next resync sees the same: no second event, no status change
    again = decide(observed(status=plan.status.to_wire(), job_view=job(), pods=pods))
    assert again.events == [] and again.status == plan.status
    # the cause changes (the image was fixed, now no node fits): a new warning
    unfit = "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."
    moved = decide(observed(status=plan.status.to_wire(), job_view=job(), pods=(pods[0], pod("job-1", index=1, phase="Pending", ready=False, blocked=unfit))))
    assert cond(moved, "Running").reason == "Unschedulable" and [e.reason for e in moved.events] == ["Unschedulable"]
    # it starts: back to the plain count
    fixed = decide(observed(status=moved.status.to_wire(), job_view=job(), pods=(pods[0], pod("job-1", index=1, phase="Pending", ready=False))))
    assert cond(fixed, "Running").reason == c.REASON_WORKERS_STARTING and fixed.status.message == "attempt 0: 1/2 workers running"


def test_the_earliest_failure_is_the_cause_not_a_peers_echo_of_it() -> None:
    """Rank 0 fails first; rank 1 fails a second later with the collective error that follows:
    the restart names rank 0's error, whatever order the pods are listed in."""
    cause = trainer_failure("TrainingError", "loss is NaN at step 120", ct.EXIT_TRAINING_ERROR)
    echo = trainer_failure("TrainingError", "gloo: Connection closed by peer [10.0.0.1]:29500", ct.EXIT_TRAINING_ERROR)
    pods = (
        pod("job-1", index=1, phase="Failed", ready=False, exit_code=ct.EXIT_TRAINING_ERROR, message=echo, finish=T0 + timedelta(seconds=61)),
        pod("job-0", index=0, phase="Failed", ready=False, exit_code=ct.EXIT_TRAINING_ERROR, message=cause, finish=T0 + timedelta(seconds=60)),
    )
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(failed=True), pods=pods))
    assert plan.status.restarts == 1 and "worker 0 (pod job-0)" in (plan.status.message or "") and "loss is NaN" in (plan.status.message or "")
    assert "Connection closed by peer" not in (plan.status.message or "")


def test_an_oom_kill_fails_at_once_saying_so_with_the_limit() -> None:
    pods = (pod("job-0", index=0), pod("job-1", index=1, phase="Failed", ready=False, exit_code=137, oom=True, memory_limit="8Gi", finish=T0 + timedelta(seconds=60)))
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(failed=True), pods=pods))
    assert plan.status.phase == "Failed" and plan.status.restarts == 0 and not plan.apply
    failed = cond(plan, "Failed")
    assert failed.reason == c.REASON_OUT_OF_MEMORY and c.REASON_OUT_OF_MEMORY in c.FAILURE_REASONS
    assert "worker 1 (pod job-1) was killed for using more memory than it may (OOMKilled, limit 8Gi)" in failed.message
    assert "spec.resources.memory" in failed.message


def test_disruptions_are_counted_once_per_pod_and_bounded_apart_from_restarts() -> None:
    evicted = pod("job-1", index=1, phase="Failed", ready=False, disrupted=True, uid="p1")
    pods = (pod("job-0", index=0, uid="p0"), evicted, pod("job-1b", index=1, uid="p2"))
    spec = minimal_spec(maxDisruptions=2)
    first = decide(observed(spec, RUNNING_STATUS, job_view=job(uid="j"), pods=pods))
    assert first.status.phase == "Running" and first.status.disruptions == 1 and first.status.restarts == 0
    again = decide(observed(spec, first.status.to_wire(), job_view=job(uid="j"), pods=pods))
    assert again.status.disruptions == 1, "a pod is counted once"
    sigterm = pod("job-0", index=0, phase="Failed", ready=False, exit_code=ct.EXIT_PREEMPTED, uid="p0")
    second = decide(observed(spec, again.status.to_wire(), job_view=job(uid="j"), pods=(sigterm, evicted, pod("job-1b", index=1, uid="p2"))))
    assert second.status.disruptions == 2 and second.status.phase != "Failed"
    third = decide(observed(spec, second.status.to_wire(), job_view=job(uid="j"), pods=(sigterm, evicted, pod("job-1b", index=1, uid="p2", disrupted=True, phase="Failed", ready=False))))
    assert third.status.phase == "Failed" and cond(third, "Failed").reason == c.REASON_DISRUPTION_LIMIT_EXCEEDED
    assert "3 worker pods were taken away" in cond(third, "Failed").message and third.suspend_job == ("job", "j", True)
    assert third.status.restarts == 0


def test_a_job_that_cannot_create_its_pods_says_why_and_is_looked_at_again() -> None:
    refusal = 'Error creating: pods "job-0-x" is forbidden: error looking up service account ns/trainer: serviceaccount "trainer" not found'
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(active=0, ready=0), job_create_error=refusal))
    assert plan.status.phase == "Initializing" and plan.status.message == f"attempt 0: 0/2 workers running; the Job cannot create its pods: {refusal}"
    assert cond(plan, "Running").reason == c.REASON_FAILED_CREATE
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", c.REASON_FAILED_CREATE)]
    assert plan.requeue_after is not None and plan.requeue_after <= 10
    again = decide(observed(status=plan.status.to_wire(), job_view=job(active=0, ready=0), job_create_error=refusal))
    assert again.events == [] and again.status == plan.status
    # no refusal (yet): the plain count, still looked at again since no pod event will say more
    plain = decide(observed(status=RUNNING_STATUS, job_view=job(active=0, ready=0)))
    assert cond(plain, "Running").reason == c.REASON_WORKERS_STARTING and plain.requeue_after is not None


def test_a_runtime_startup_deadline_fails_a_job_whose_workers_never_start_and_stops_them() -> None:
    runtime = parse_runtime({"startupDeadlineSeconds": 600})
    spec = minimal_spec(runtimeRef={"name": "rt"})
    pull = 'ImagePullBackOff: Back-off pulling image "registry.invalid/trainer:typo"'
    pods = (pod("job-0", index=0, phase="Pending", ready=False, blocked=pull), pod("job-1", index=1, phase="Pending", ready=False, blocked=pull))
    starting = {**RUNNING_STATUS, "phase": "Initializing", "runtime": {"name": "rt", "spec": {"image": "t:1", "startupDeadlineSeconds": 600}},
                "conditions": [VALIDATED, {"type": "Running", "status": "False", "reason": "WorkersStarting", "lastTransitionTime": "2026-01-01T12:00:00Z"}]}
    early = decide(observed(spec, starting, runtime=runtime, runtime_found=True, job_view=job(uid="j1"), pods=pods, now=T0 + timedelta(minutes=4)))
    assert early.status.phase == "Initializing" and early.requeue_after == pytest.approx(360)  # woken at the deadline
    late = decide(observed(spec, starting, runtime=runtime, runtime_found=True, job_view=job(uid="j1"), pods=pods, now=T0 + timedelta(minutes=10)))
    assert late.status.phase == "Failed" and cond(late, "Failed").reason == c.REASON_STARTUP_DEADLINE_EXCEEDED
    assert cond(late, "Failed").message == f"attempt 0: 0/2 workers running after 600s (startupDeadlineSeconds of the runtime); worker 0 (pod job-0) cannot start: {pull}"
    assert late.suspend_job == ("job", "j1", True), "the pods are stopped"
    # without a deadline: it waits (capacity may come)
    waiting = decide(observed(status=starting | {"runtime": None}, job_view=job(), pods=pods, now=T0 + timedelta(days=1)))
    assert waiting.status.phase == "Initializing"


def test_a_validation_pod_that_cannot_start_says_why() -> None:
    missing = 'CreateContainerConfigError: secret "s3-creds" not found'
    v = pod("job-validate", component="validator", index=None, phase="Pending", ready=False, blocked=missing)
    plan = decide(observed(status={"phase": "Validating"}, validator=v))
    assert plan.status.phase == "Validating" and plan.status.message == f"validation pod job-validate cannot start: {missing}"
    assert cond(plan, "Validated").reason == "CreateContainerConfigError"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "CreateContainerConfigError")]


def test_gpu_seconds_count_each_ended_pod_once_and_running_pods_only_live() -> None:
    """4 GPUs per pod. A running pod changes no status (its time is reported live); an ended one
    is added once, by UID, and stays added when its pod object is gone."""
    running = pod("job-0", index=0, start=T0, uid="uid-job-0")
    ended = pod("job-1", index=1, phase="Succeeded", ready=False, exit_code=0, start=T0, finish=T0 + timedelta(minutes=5), uid="uid-job-1")
    first = decide(observed(status={**RUNNING_STATUS, "gpuSeconds": 100.0}, job_view=job(), pods=(running, ended), now=T0 + timedelta(minutes=10)))
    assert first.status.gpu_seconds == 100.0 + 300 * 4
    assert first.status.gpu_counted_pods == ["uid-job-1"]
    assert first.running_gpus == ((T0, 4),)
    # later: the same pods, then the ended one deleted: nothing changes, nothing counted twice
    again = decide(observed(status=first.status.to_wire(), job_view=job(), pods=(running, ended), now=T0 + timedelta(minutes=20)))
    gone = decide(observed(status=first.status.to_wire(), job_view=job(), pods=(running,), now=T0 + timedelta(minutes=30)))
    for later in (again, gone):
        assert (later.status.gpu_seconds, later.status.gpu_counted_pods) == (first.status.gpu_seconds, ["uid-job-1"])
    # the running pod is deleted (an eviction): counted up to when it was seen going
    evicted = pod("job-0", index=0, start=T0, deleting=True, uid="uid-job-0")
    last = decide(observed(status=first.status.to_wire(), job_view=job(), pods=(evicted,), now=T0 + timedelta(minutes=40)))
    assert last.status.gpu_seconds == 100.0 + 300 * 4 + 2400 * 4
    assert last.running_gpus == ()


def test_a_restart_adds_the_failed_attempts_running_pods_and_starts_a_new_count() -> None:
    pods = (
        pod("job-0", index=0, start=T0, uid="u0"),
        pod("job-1", index=1, phase="Failed", ready=False, exit_code=4, start=T0, finish=T0 + timedelta(minutes=5), uid="u1"),
    )
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(failed=True), pods=pods, now=T0 + timedelta(minutes=10)))
    assert plan.status.restarts == 1
    # worker 1 ended after 300 s, worker 0 is stopped now after 600 s; 4 GPUs each
    assert plan.status.gpu_seconds == plan.status.prior_gpu_seconds == (300 + 600) * 4
    assert plan.status.gpu_counted_pods is None and plan.running_gpus == ()


def test_failed_worker_restarts_the_group() -> None:
    pods = (pod("job-0", index=0), pod("job-1", index=1, phase="Failed", ready=False, exit_code=4, message=trainer_failure("TrainingError", "NCCL timeout", 4)))
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(failed=True), pods=pods))
    assert plan.delete == [Delete("Job", "job", "Foreground")]
    assert plan.status.restarts == 1 and plan.status.attempt == 1
    assert plan.status.phase == "Initializing"
    assert cond(plan, "Running").reason == c.REASON_RESTARTING and "worker 1" in cond(plan, "Running").message
    assert "exited with code 4: TrainingError: NCCL timeout;" in cond(plan, "Running").message and "{" not in cond(plan, "Running").message
    assert any(e.reason == c.REASON_RESTARTING and e.type == "Warning" for e in plan.events)


@pytest.mark.parametrize("restarts", [0, 2])
def test_a_long_failure_text_never_cuts_off_the_decision(restarts: int) -> None:
    """A worker killed before writing its summary leaves a log tail as its termination message
    (FallbackToLogsOnError): the message is shortened in the middle, the decision stays."""
    log_tail = "dataset: 240 rows -> 228 training examples\n" + "x" * 5000
    pods = (pod("job-0", index=0, phase="Failed", ready=False, exit_code=4, message=log_tail), pod("job-1", index=1))
    status = {**RUNNING_STATUS, "restarts": restarts}
    plan = decide(observed(status=status, job_view=job(failed=True), pods=pods))
    message = plan.status.message or ""
    want = "; restarting the group as attempt 1 (1/2)" if restarts == 0 else "; maxRestarts (2) reached"
    assert message.startswith("attempt 0 failed: worker 0") and message.endswith(want), message[-200:]
    assert len(message) <= c.MAX_MESSAGE_LENGTH


def test_next_attempt_waits_for_the_old_job_then_recreates() -> None:
    status = {**RUNNING_STATUS, "phase": "Initializing", "attempt": 1, "restarts": 1}
    waiting = decide(observed(status=status, job_view=job(attempt=0, deleting=True)))
    assert not waiting.apply and not waiting.delete and waiting.status.phase == "Initializing"
    created = decide(observed(status=status, job_view=None))
    job_manifest = created.apply[-1]
    assert job_manifest["kind"] == "Job" and job_manifest["metadata"]["labels"][ct.LABEL_ATTEMPT] == "1"
    assert job_manifest["spec"]["template"]["metadata"]["labels"][ct.LABEL_ATTEMPT] == "1"  # FINETUNE_ATTEMPT's source


def test_restart_limit_fails_the_job() -> None:
    status = {**RUNNING_STATUS, "attempt": 2, "restarts": 2}
    pods = (pod("job-0", index=0, attempt=2, phase="Failed", ready=False, exit_code=4),)
    plan = decide(observed(status=status, job_view=job(attempt=2, failed=True), pods=pods))
    assert plan.status.phase == "Failed" and not plan.delete
    assert cond(plan, "Failed").reason == c.REASON_RESTART_LIMIT_EXCEEDED
    assert "maxRestarts (2)" in cond(plan, "Failed").message


@pytest.mark.parametrize(("code", "reason"), [(2, c.REASON_CONFIG_ERROR), (3, c.REASON_DATA_ERROR)])
def test_non_retryable_exit_codes_fail_at_once(code: int, reason: str) -> None:
    pods = (pod("job-0", index=0, phase="Failed", ready=False, exit_code=code, message=trainer_failure("DataError", "dataset.uri: /x does not exist", code)),)
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(failed=True), pods=pods))
    assert plan.status.phase == "Failed" and plan.status.restarts == 0 and not plan.delete
    failed = cond(plan, "Failed")
    assert failed.reason == reason and f"code {code}" in failed.message
    assert failed.message.endswith("DataError: dataset.uri: /x does not exist") and "exitCode" not in failed.message


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("OOMKilled by the kernel", "OOMKilled by the kernel"),  # not JSON: shown as it is
        ('{"status":"Failed","exitCode":3', '{"status":"Failed","exitCode":3'),  # a cut document: raw text
        ('{"status":"Failed","message":"only a message","exitCode":3}', "only a message"),
        (None, "see its log"),
    ],
)
def test_failure_text_falls_back_to_the_raw_message(message: str | None, shown: str) -> None:
    pods = (pod("job-0", index=0, phase="Failed", ready=False, exit_code=3, message=message),)
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(failed=True), pods=pods))
    assert cond(plan, "Failed").message.endswith(shown)


@pytest.mark.parametrize("kind", ["evicted", "preempted"])
def test_disruptions_do_not_count(kind: str) -> None:
    bad = (
        pod("job-1-a", index=1, phase="Failed", ready=False, disrupted=True, exit_code=137)
        if kind == "evicted"
        else pod("job-1-a", index=1, phase="Failed", ready=False, exit_code=ct.EXIT_PREEMPTED)
    )
    pods = (pod("job-0", index=0), bad, pod("job-1-b", index=1, phase="Pending", ready=False))
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods))
    assert plan.status.restarts == 0 and not plan.delete and plan.status.phase == "Initializing"


def test_success_reads_the_rank0_summary() -> None:
    summary = {"adapterUri": "s3://out-bucket/run/adapter/", "manifestUri": "s3://out-bucket/run/manifest.json", "manifestSha256": "ab" * 32, "trainedTokens": 12345, "status": "Succeeded",
               "steps": 30, "loss": 0.25, "evalLoss": float("nan")}
    pods = (
        pod("job-0", index=0, phase="Succeeded", ready=False, exit_code=0, message=json.dumps(summary)),
        pod("job-1", index=1, phase="Succeeded", ready=False, exit_code=0),
    )
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(complete=True), pods=pods))
    assert plan.status.phase == "Succeeded"
    assert plan.status.output is not None and plan.status.output.adapter_uri == summary["adapterUri"]
    assert plan.status.output.manifest_uri == summary["manifestUri"] and plan.status.output.sha256 == summary["manifestSha256"]
    assert plan.status.trained_tokens == 12345
    assert plan.status.progress is not None and plan.status.progress.percent == 100.0
    # the final figures come from the summary, not from the last poll (a run may end between two)
    assert (plan.status.progress.step, plan.status.progress.total_steps, plan.status.progress.loss) == (30, 30, 0.25)
    assert plan.status.progress.eval_loss is None  # non-finite: dropped
    assert cond(plan, "Succeeded").status == "True" and plan.status.completion_time is not None


def test_terminal_phases_stay_terminal() -> None:
    status = {"phase": "Succeeded", "completionTime": "2026-01-01T12:05:00Z", "observedGeneration": 1}
    plan = decide(observed(status=status, job_view=None))
    assert plan.status.phase == "Succeeded" and not plan.apply and not plan.delete


def test_ttl_after_finished() -> None:
    status = {"phase": "Succeeded", "completionTime": "2026-01-01T12:05:00Z", "observedGeneration": 1}
    spec = minimal_spec(ttlSecondsAfterFinished=600)
    early = decide(observed(spec, status, now=T0 + timedelta(minutes=10)))
    assert early.requeue_after == 300 and not early.delete
    late = decide(observed(spec, status, now=T0 + timedelta(minutes=16)))
    assert late.delete == [Delete("FineTuneJob", "job", uid=UID)]  # never a re-created namesake


@pytest.mark.parametrize(
    ("spec_over", "job_suspended", "phase", "want_apply_suspend"),
    [
        ({"suspend": True}, False, "Suspended", True),  # user suspends a running job
        ({"suspend": True}, True, "Suspended", None),  # already suspended: nothing to apply
        ({}, True, "Initializing", False),  # resume
        ({"queueName": "q"}, True, "Queued", None),  # waiting for Kueue: never unsuspend ourselves
        ({"queueName": "q"}, False, "Running", None),  # admitted by Kueue
    ],
)
def test_suspend_resume_and_queue(spec_over: dict[str, Any], job_suspended: bool, phase: str, want_apply_suspend: bool | None) -> None:
    pods = () if job_suspended or spec_over.get("suspend") else (pod("job-0", index=0), pod("job-1", index=1))
    plan = decide(observed(minimal_spec(**spec_over), RUNNING_STATUS, job_view=job(suspended=job_suspended), pods=pods))
    assert plan.status.phase == phase
    assert not [m for m in plan.apply if m["kind"] == "Job"]  # an existing Job is never re-applied whole
    got = plan.suspend_job[2] if plan.suspend_job else None
    assert got == want_apply_suspend
    if phase in ("Suspended", "Queued"):
        assert cond(plan, "Suspended").status == "True"


def test_a_validation_pod_out_of_memory_names_the_runtime_setting_not_the_data() -> None:
    v = pod("job-validate", component="validator", index=None, phase="Failed", ready=False, exit_code=137, oom=True, memory_limit="2Gi")
    plan = decide(observed(status={"phase": "Validating"}, validator=v))
    failed = cond(plan, "Failed")
    assert plan.status.phase == "Failed" and failed.reason == c.REASON_OUT_OF_MEMORY
    assert "(limit 2Gi)" in failed.message and "validator.memory" in failed.message and "'default'" in failed.message
    assert cond(plan, "Validated").reason == c.REASON_OUT_OF_MEMORY and not any(m["kind"] == "Job" for m in plan.apply)


def test_a_restart_does_not_wait_for_good_on_pods_of_an_unreachable_node() -> None:
    """The old attempt's Job is being deleted (Foreground): a pod whose kubelet confirms nothing
    60 s past its deletion deadline is deleted with grace 0, said in the status and a Warning
    first; one still inside that window is waited for, with a wake-up when it would be due."""
    now = T0 + timedelta(minutes=10)
    lost = pod("job-0", index=0, deletion_deadline=now - timedelta(seconds=61), node="gpu-7", uid="u-0")
    fresh = pod("job-1", index=1, deletion_deadline=now - timedelta(seconds=20), node="gpu-8", uid="u-1")
    status = {**RUNNING_STATUS, "attempt": 1, "restarts": 1}
    plan = decide(observed(status=status, job_view=job(attempt=0, deleting=True), pods=(lost, fresh), now=now))
    assert plan.delete == [Delete("Pod", "job-0", uid="u-0", grace_seconds=0)], plan.delete
    assert plan.status.phase == "Initializing" and "job-0 (node gpu-7)" in (plan.status.message or "") and "job-1" not in (plan.status.message or "")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", c.REASON_POD_DELETION_FORCED)]
    assert plan.requeue_after == pytest.approx(40.0)  # job-1 would be due in 60 - 20 s
    early = decide(observed(status=status, job_view=job(attempt=0, deleting=True), pods=(fresh,), now=now))
    assert early.delete == [] and not early.events and early.requeue_after == pytest.approx(40.0)


def test_suspended_before_validation_creates_nothing() -> None:
    plan = decide(observed(minimal_spec(suspend=True)))
    assert plan.status.phase == "Suspended" and not plan.apply


def test_missing_runtime_waits_in_pending() -> None:
    plan = decide(observed(minimal_spec(runtimeRef={"name": "gpu"})))
    assert plan.status.phase == "Pending" and not plan.apply
    assert cond(plan, "Validated").reason == c.REASON_RUNTIME_NOT_FOUND


def test_a_job_without_runtime_ref_gets_the_default_runtimes_limits() -> None:
    limited = parse_runtime({"image": "r/t:1", "maxTotalGpus": 4})
    plan = decide(observed(minimal_spec(resources={"nodes": 2, "gpusPerNode": 4}), runtime=limited, runtime_found=True))
    assert plan.status.phase == "Failed" and cond(plan, "Failed").reason == c.REASON_RUNTIME_LIMIT_EXCEEDED
    assert "exceeds maxTotalGpus 4 of runtime 'default'" in cond(plan, "Failed").message and not plan.apply


def test_without_a_default_runtime_a_job_must_name_one() -> None:
    plan = decide(observed(config=OperatorConfig(), runtime_found=False))
    assert plan.status.phase == "Failed" and cond(plan, "Failed").reason == c.REASON_RUNTIME_REQUIRED
    assert cond(plan, "Failed").message.startswith("spec.runtimeRef: required") and not plan.apply
    # naming one is the fix (a spec failure: the edit is evaluated again)
    assert c.REASON_RUNTIME_REQUIRED in c.SPEC_FAILURE_REASONS


def test_a_started_job_resolves_against_its_copy_of_the_runtime() -> None:
    """The copy is taken when the job first resolves (with the image it got), and from then on it,
    not the live runtime, decides: a tightened live runtime fails nothing."""
    live = parse_runtime({"maxNodes": 2})
    first = decide(observed(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 2, "gpusPerNode": 1}), runtime=live, runtime_found=True, runtime_generation=3))
    copy = first.status.runtime
    assert copy is not None and copy.name == "rt" and copy.generation == 3
    assert copy.spec.max_nodes == 2 and copy.spec.image == OperatorConfig().default_image
    status = first.status.to_wire()
    # the reconciler hands decide the copy (status.runtime.spec), whatever the live runtime says now
    again = decide(observed(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 2, "gpusPerNode": 1}), status))
    assert again.status.phase == "Validating" and again.status.runtime == copy


def test_a_job_started_before_runtime_copies_keeps_the_terms_it_started_under() -> None:
    """Upgrade: a job that passed validation under an operator that took no runtime copies, with
    no runtimeRef, is not judged by today's default runtime (which would fail it mid-run): it gets
    a copy with no limits and the operator's default image. A job not yet validated is judged."""
    tight = parse_runtime({"image": "r/t:2", "maxTotalGpus": 4})
    spec = minimal_spec(resources={"nodes": 2, "gpusPerNode": 4})
    started = decide(observed(spec, RUNNING_STATUS, job_view=job(), pods=(pod("job-0", index=0), pod("job-1", index=1)), runtime=tight, runtime_found=True, runtime_generation=5))
    assert started.status.phase == "Running" and cond(started, "Failed") is None, started.status
    copy = started.status.runtime
    assert copy is not None and copy.name == "default" and copy.generation is None
    assert copy.spec.max_total_gpus is None and copy.spec.image == OperatorConfig().default_image
    assert not started.delete and not started.events
    fresh = decide(observed(spec, runtime=tight, runtime_found=True))
    assert fresh.status.phase == "Failed" and cond(fresh, "Failed").reason == c.REASON_RUNTIME_LIMIT_EXCEEDED


def test_spec_failure_is_reevaluated_after_an_edit() -> None:
    runtime = parse_runtime({"image": "r/t:1", "allowedMethods": ["full"]})
    spec = minimal_spec(runtimeRef={"name": "rt"})
    failed = decide(observed(spec, runtime=runtime, runtime_found=True))
    assert failed.status.phase == "Failed" and cond(failed, "Failed").reason == c.REASON_METHOD_NOT_ALLOWED
    status = failed.status.to_wire()
    same = decide(observed(spec, status, runtime=runtime, runtime_found=True))
    assert same.status.phase == "Failed" and not same.apply
    edited = decide(observed(minimal_spec(runtimeRef={"name": "rt"}, method={"type": "full"}), status, runtime=runtime, runtime_found=True, generation=2))
    assert edited.status.phase == "Validating" and kinds(edited) == ["ConfigMap", "Service", "Pod"]
    # the old verdict goes: no Failed=True and no completionTime (which would start the TTL clock)
    assert cond(edited, "Failed").status == "False" and cond(edited, "Failed").reason == c.REASON_SPEC_EDITED
    assert failed.status.completion_time is not None and edited.status.completion_time is None


def test_progress_is_folded_into_status() -> None:
    progress = Progress(step=50, total_steps=200, percent=25.0, loss=1.2345, tokens_per_second=1000.0, eta_seconds=3725, trained_tokens=5000)
    pods = (pod("job-0", index=0), pod("job-1", index=1))
    plan = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods, progress=progress))
    assert plan.status.progress is not None and plan.status.progress.eta == "1h02m" and plan.status.progress.percent == 25.0
    assert plan.status.trained_tokens == 5000
    uploading = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods, progress=progress.model_copy(update={"stage": "uploading"})))
    assert uploading.status.phase == "Uploading"


def test_progress_never_goes_backwards_while_a_trainer_starts_again() -> None:
    """After a restart or resume rank 0 reports 0/0 while it loads, then a step behind the last
    one while it replays from its checkpoint: the status keeps the last counts (no ETA) meanwhile,
    and follows the trainer again once it is past them."""
    pods = (pod("job-0", index=0), pod("job-1", index=1))
    before = Progress(step=120, total_steps=200, percent=60.0, loss=0.9, eta_seconds=300, trained_tokens=12000)
    st = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods, progress=before)).status.to_wire()
    loading = Progress(step=0, total_steps=0, percent=0.0, stage="Initializing", trained_tokens=0)
    kept = decide(observed(status=st, job_view=job(), pods=pods, progress=loading)).status.progress
    assert kept is not None and (kept.step, kept.total_steps, kept.percent, kept.trained_tokens) == (120, 200, 60.0, 12000)
    assert kept.stage == "Initializing" and kept.eta is None
    replaying = Progress(step=101, total_steps=200, percent=50.5, loss=1.0, eta_seconds=400, trained_tokens=10100)
    st2 = decide(observed(status=st, job_view=job(), pods=pods, progress=replaying)).status
    assert st2.progress is not None and st2.progress.step == 120 and st2.progress.loss == 1.0
    past = Progress(step=130, total_steps=200, percent=65.0, loss=0.8, eta_seconds=250, trained_tokens=13000)
    st3 = decide(observed(status=st2.to_wire(), job_view=job(), pods=pods, progress=past)).status
    assert st3.progress is not None and (st3.progress.step, st3.progress.eta) == (130, "4m10s")


def test_same_observation_same_plan_and_no_status_change() -> None:
    pods = (pod("job-0", index=0), pod("job-1", index=1))
    first = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods))
    second = decide(observed(status=first.status.to_wire(), job_view=job(), pods=pods))
    assert second.status == first.status and kinds(second) == kinds(first) == ["ConfigMap", "Service"] and not second.events


@pytest.mark.parametrize("spec_over", [{"queueName": "team-a"}, {}], ids=["queued", "starting"])
def test_job_appearing_changes_no_status(spec_over: dict[str, Any]) -> None:
    """Two status writes from apply to a created Job (Validating, then Queued/Initializing): the
    Job showing up in the watch must not need a third one."""
    spec = minimal_spec(**spec_over)
    validating = decide(observed(spec))
    done = pod("job-validate", component="validator", index=None, phase="Succeeded", ready=False, exit_code=0)
    created = decide(observed(spec, status=validating.status.to_wire(), validator=done))
    assert [m["kind"] for m in created.apply][-1] == "Job"
    suspended = bool(spec_over)
    seen = decide(observed(spec, status=created.status.to_wire(), validator=done, job_view=job(suspended=suspended, active=0, ready=0)))
    assert seen.status.to_wire() == created.status.to_wire() and kinds(seen) == ["ConfigMap", "Service"] and not seen.events


def test_condition_transition_time_kept_while_status_unchanged() -> None:
    pods = (pod("job-0", index=0), pod("job-1", index=1))
    first = decide(observed(status=RUNNING_STATUS, job_view=job(), pods=pods, now=T0))
    later = decide(observed(status=first.status.to_wire(), job_view=job(), pods=pods, now=T0 + timedelta(hours=1)))
    assert cond(later, "Running").last_transition_time == cond(first, "Running").last_transition_time


def test_local_model_path_fails_the_job_before_any_pod() -> None:
    plan = decide(observed(minimal_spec(model={"uri": "/home/me/models/tiny"})))
    assert plan.status.phase == "Failed" and not plan.apply
    failed = cond(plan, "Failed")
    assert failed.reason == c.REASON_INVALID_SPEC
    assert failed.message == "spec.model.uri: local paths only work with ftctl run --local; use pvc:// or s3://"


# --- Kueue: the job's own Workload -------------------------------------------------------------
def workload(**over: Any) -> WorkloadView:
    values: dict[str, Any] = dict(
        name="job", uid="wl-uid", active=True, job_owners=(), quota_reserved=True, admitted=True, finished=False
    )
    values.update(over)
    return WorkloadView(**values)


def test_queued_job_makes_its_workload_before_its_job() -> None:
    plan = decide(observed(minimal_spec(queueName="q"), RUNNING_STATUS))
    assert kinds(plan) == ["ConfigMap", "Service", "Workload", "Job"]
    wl, jb = plan.apply[2], plan.apply[3]
    assert jb["metadata"]["labels"][ct.LABEL_KUEUE_PREBUILT_WORKLOAD] == wl["metadata"]["name"]
    assert wl["spec"]["queueName"] == "q" and wl["spec"]["active"] is True
    assert wl["spec"]["podSets"][0]["count"] == 2
    # the same containers: Kueue finishes (for good) a Workload whose Job differs from it
    assert wl["spec"]["podSets"][0]["template"]["spec"]["containers"] == jb["spec"]["template"]["spec"]["containers"]
    (owner,) = wl["metadata"]["ownerReferences"]
    assert owner["kind"] == ct.KIND_JOB and owner["controller"] is False  # Kueue makes each Job the controller
    # the Job never fails on a retryable exit (a failed Job finishes its Workload): the operator restarts it
    rules = jb["spec"]["podFailurePolicy"]["rules"]
    assert rules[-1] == {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]}}
    assert [r["action"] for r in rules[:-1]] == ["Ignore", "Ignore", "FailJob"]
    assert plan.workload_release is None


def test_next_attempt_takes_over_the_workload_of_the_last() -> None:
    status = {**RUNNING_STATUS, "phase": "Initializing", "attempt": 1, "restarts": 1}
    plan = decide(observed(minimal_spec(queueName="q"), status, workload=workload(job_owners=("old-job-uid",))))
    assert plan.workload_release == ("job", ("old-job-uid",))
    # the Workload is kept as it is (its pod set is immutable while admitted): only the Job is new
    assert kinds(plan) == ["ConfigMap", "Service", "Job"] and plan.apply[-1]["metadata"]["labels"][ct.LABEL_ATTEMPT] == "1"


def test_a_finished_workload_is_made_again_before_the_next_job() -> None:
    status = {**RUNNING_STATUS, "phase": "Initializing", "attempt": 1, "restarts": 1}
    plan = decide(observed(minimal_spec(queueName="q"), status, workload=workload(finished=True)))
    assert plan.delete == [Delete("Workload", "job", uid="wl-uid")] and not plan.apply
    assert plan.status.phase == "Queued" and plan.requeue_after is not None
    gone = decide(observed(minimal_spec(queueName="q"), status, workload=workload(finished=True, deleting=True)))
    assert not gone.delete and not gone.apply


def test_suspend_with_a_workload_deactivates_it_and_leaves_the_job_to_kueue() -> None:
    pods = (pod("job-0", index=0), pod("job-1", index=1))
    plan = decide(observed(minimal_spec(queueName="q", suspend=True), RUNNING_STATUS, job_view=job(workload_name="job"), pods=pods, workload=workload()))
    assert plan.status.phase == "Suspended" and plan.suspend_job is None
    assert plan.workload_active == ("job", "wl-uid", False)
    assert "Workload" not in kinds(plan)  # never re-applied: active is patched alone
    resumed = decide(observed(minimal_spec(queueName="q"), plan.status.to_wire(), job_view=job(suspended=True, workload_name="job"), workload=workload(active=False, quota_reserved=False, admitted=False)))
    assert resumed.workload_active == ("job", "wl-uid", True) and resumed.status.phase == "Queued"
    assert resumed.requeue_after == c.KUEUE_RECHECK_SECONDS


def test_queued_message_says_why_kueue_holds_the_job() -> None:
    why = "Pending: couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a, 1 more needed"
    plan = decide(observed(minimal_spec(queueName="q"), RUNNING_STATUS, job_view=job(suspended=True, active=0, ready=0, workload_name="job"), workload=workload(quota_reserved=False, admitted=False, waiting=why)))
    assert plan.status.phase == "Queued" and plan.status.message == f"waiting for admission by Kueue queue 'q': {why}"


@pytest.mark.parametrize("finished", [False, True])
def test_a_job_that_ends_with_its_job_alive_gives_the_quota_back(finished: bool) -> None:
    """maxRestarts reached: the Job is not failed (retryable exits are ignored under Kueue), so the
    Workload is deactivated and Kueue stops the pods; a finished Workload holds no quota already."""
    failed = (pod("job-0", index=0, phase="Failed", ready=False, exit_code=1), pod("job-1", index=1))
    spec = minimal_spec(queueName="q", maxRestarts=0)
    plan = decide(observed(spec, RUNNING_STATUS, job_view=job(workload_name="job"), pods=failed, workload=workload(finished=finished)))
    assert plan.status.phase == "Failed" and plan.suspend_job is None
    assert plan.workload_active == (None if finished else ("job", "wl-uid", False))


def test_without_kueues_workload_api_a_queued_job_gets_only_the_queue_label() -> None:
    """Kueue not installed (or too old to serve kueue.x-k8s.io/v1beta2): no Workload of the
    operator's, the Job carries the queue label only (and fails as any Job would), and the job
    says what is missing."""
    plan = decide(observed(minimal_spec(queueName="q"), RUNNING_STATUS, workload_api=False))
    assert kinds(plan) == ["ConfigMap", "Service", "Job"]
    labels = plan.apply[-1]["metadata"]["labels"]
    assert labels[ct.LABEL_KUEUE_QUEUE] == "q" and ct.LABEL_KUEUE_PREBUILT_WORKLOAD not in labels
    assert len(plan.apply[-1]["spec"]["podFailurePolicy"]["rules"]) == 3
    assert plan.status.phase == "Queued" and "does not serve Kueue's Workload API (kueue.x-k8s.io/v1beta2)" in (plan.status.message or "")


def test_a_workload_kueue_deactivated_itself_ends_the_job_with_kueues_reason() -> None:
    """Kueue's own policy (requeuing limit, maximum execution time) deactivated it: the operator
    does not undo it (it reactivates only what the user suspended); the job fails, saying why."""
    why = "Deactivated: The workload is deactivated due to exceeding the maximum execution time"
    wl = workload(active=False, quota_reserved=False, admitted=False, waiting=why)
    plan = decide(observed(minimal_spec(queueName="q"), RUNNING_STATUS, job_view=job(suspended=True, workload_name="job"), workload=wl))
    assert plan.status.phase == "Failed" and cond(plan, "Failed").reason == c.REASON_WORKLOAD_DEACTIVATED
    assert why in (plan.status.message or "") and plan.workload_active is None


@pytest.mark.parametrize("gone", [True, False], ids=["deleted", "finished"])
def test_a_live_job_whose_workload_is_gone_or_finished_is_made_again(gone: bool) -> None:
    """Kueue stops a Job whose Workload was deleted, or finished out of sync: the Job goes (not a
    restart), then the Workload and the Job are made again for the same attempt."""
    wl = None if gone else workload(finished=True, finished_why="OutOfSync: The prebuilt workload is out of sync with its user job")
    pods = (pod("job-0", index=0), pod("job-1", index=1))
    plan = decide(observed(minimal_spec(queueName="q"), RUNNING_STATUS, job_view=job(workload_name="job"), pods=pods, workload=wl))
    assert plan.delete == [Delete("Job", "job", "Foreground", None)] and plan.status.restarts == 0 and plan.status.attempt == 0
    assert ("was deleted" if gone else "OutOfSync") in (plan.status.message or "")
    assert [e.reason for e in plan.events if e.type == "Warning"] == [c.REASON_WORKLOAD_RECREATED]


def test_a_job_from_before_the_operators_workloads_keeps_the_old_suspend() -> None:
    """A Job made before this version names no Workload (Kueue made one for it): a user's suspend
    still goes through Job.spec.suspend, and no Workload of the operator's is expected."""
    plan = decide(observed(minimal_spec(queueName="q", suspend=True), RUNNING_STATUS, job_view=job()))
    assert plan.status.phase == "Suspended" and plan.suspend_job == ("job", "", True) and not plan.delete

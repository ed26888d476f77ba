"""The operator against the real control plane (tests/cluster), running as a ServiceAccount with
exactly operator/finetune_operator/rbac.yaml; pods are driven through their lifecycle by kwok.

Run just these:  .venv/bin/python -m pytest tests/operator -m cluster
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import time
from typing import Any

import pytest
import yaml
from finetune_operator import constants as c
from kubernetes import client as k8s

from tests.cluster import kwok
from tests.cluster.cluster import ControlPlane
from tests.operator.cluster_support import (
    DEFAULT_RUNTIME,
    OPERATOR_NAMESPACE,
    OPERATOR_SA,
    TEST_IMAGE,
    Kube,
    OperatorProcess,
)
from tests.operator.helpers import EXAMPLES, load, minimal_spec
from tests.operator.malformed import CASES, Case
from tests.support import metrics as prom

pytestmark = pytest.mark.cluster
ct = c.contract


def small(**over: Any) -> dict[str, Any]:
    """A 2-node, 1-GPU-per-node job that fits the fake nodes."""
    spec = minimal_spec(resources={"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"})
    spec.update(over)
    return spec


RESTARTS = "finetune_operator_restarts_total"


def restarts_counted(proc: OperatorProcess) -> float:
    """The operator's restart counter, parsed from /metrics (0 exported from the start)."""
    value = prom.value(proc.metrics(), RESTARTS)
    assert value is not None, f"{RESTARTS} is not exported"
    return value


def start_running(kube: Kube, ns: str, name: str, spec: dict[str, Any] | None = None, nodes: int = 2) -> None:
    kube.create_ftj(ns, name, spec or small())
    kube.pass_validation(ns, name)
    kube.wait_running_pods(ns, name, nodes, attempt=0)
    kube.wait_phase(ns, name, "Running")


# --- examples -----------------------------------------------------------------------------------------
def test_examples_are_accepted_and_become_the_right_children(kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("apply", "-f", str(EXAMPLES / "runtime-a100-lora.yaml"))
    priority_class = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "training"}, "value": 1000}
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(priority_class))  # named by the preset
    docs = {p.stem: load(p) for p in EXAMPLES.glob("*.yaml") if load(p)["kind"] == "FineTuneJob"}
    for doc in docs.values():
        doc["metadata"]["namespace"] = ns
        out = kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
        assert "created" in out.stdout
    names = {stem: doc["metadata"]["name"] for stem, doc in docs.items()}
    for name in names.values():
        kube.pass_validation(ns, name)

    # every example: ConfigMap with the TrainerConfig, headless Service, Indexed Job
    for stem, name in names.items():
        job = kube.wait(lambda n=name: kube.job(ns, n), f"Job {name}")
        spec = docs[stem]["spec"]
        nodes = spec["resources"]["nodes"]
        assert job.spec.completion_mode == "Indexed" and job.spec.completions == job.spec.parallelism == nodes
        assert job.metadata.owner_references[0].kind == "FineTuneJob" and job.metadata.owner_references[0].controller
        assert job.spec.template.spec.subdomain == f"{name}-workers"
        cm = kube.core.read_namespaced_config_map(f"{name}-config", ns)
        config = yaml.safe_load(cm.data[ct.CONFIG_FILE_NAME])
        assert config["jobName"] == name and config["namespace"] == ns and config["model"]["uri"] == spec["model"]["uri"]
        svc = kube.core.read_namespaced_service(f"{name}-workers", ns)
        assert svc.spec.cluster_ip == "None"
        ctr = job.spec.template.spec.containers[0]
        env = {e.name: e for e in ctr.env}
        assert env[ct.ENV_MASTER_ADDR].value == f"{name}-0.{name}-workers.{ns}.svc"
        for secret_env in (ct.ENV_AWS_ACCESS_KEY_ID, ct.ENV_AWS_SECRET_ACCESS_KEY):
            if secret_env in env:
                assert env[secret_env].value is None and env[secret_env].value_from.secret_key_ref.name

    # the preset filled in GPUs and output, and names no image (the operator's trainer image);
    # queueName -> Kueue label and a suspended Job (no Kueue here: only the label, as the job says)
    chat = kube.job(ns, names["lora-chat"])
    assert chat.metadata.labels[ct.LABEL_KUEUE_QUEUE] == "team-a" and chat.spec.suspend is True
    assert chat.spec.template.spec.containers[0].image == TEST_IMAGE
    assert chat.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
    kube.wait_phase(ns, names["lora-chat"], "Queued")
    assert kube.condition(ns, names["lora-chat"], "Suspended")["reason"] == c.REASON_QUEUED
    # the CPU classification job runs on a fake node: Running with 1/1 workers
    kube.wait_running_pods(ns, names["classification-minilm"], 1)
    st = kube.wait_phase(ns, names["classification-minilm"], "Running")
    assert st["workers"] == {"ready": 1, "total": 1}
    pod = kube.trainer_pods(ns, names["classification-minilm"])[0]
    assert pod.spec.hostname == f"{names['classification-minilm']}-0"
    # 4 pods of 900Gi do not fit the fake nodes (512Gi): all 4 workers created, none running
    kube.wait(lambda: len(kube.trainer_pods(ns, names["deepspeed-full"])) == 4, "4 worker pods")
    st = kube.wait_phase(ns, names["deepspeed-full"], "Initializing")
    assert st["workers"] == {"ready": 0, "total": 4}
    running = kube.wait(lambda: (r := kube.condition(ns, names["deepspeed-full"], "Running")).get("reason") == "Unschedulable" and r, "the scheduler's reason on the job", 60)
    assert "Insufficient memory" in running["message"], running
    # Kueue admits the queued job (simulated: another field manager unsuspends the Job)
    kube.batch.patch_namespaced_job(names["lora-chat"], ns, {"spec": {"suspend": False}})
    kube.wait(lambda: len(kube.trainer_pods(ns, names["lora-chat"])) == 2, "admitted chat job pods")
    kube.wait_phase(ns, names["lora-chat"], "Initializing")  # 2 x 8 GPUs but the fake nodes hold the other jobs' GPUs
    assert kube.job(ns, names["lora-chat"]).spec.suspend is False  # the operator did not take it back
    kube_cluster.kubectl("delete", "-f", str(EXAMPLES / "runtime-a100-lora.yaml"), "--wait=false")


def test_test_namespaces_enforce_pod_security_restricted(kube: Kube, kube_namespace: str) -> None:
    """The namespaces these tests run jobs in enforce PSS `restricted` (tests/operator/conftest.py),
    so every pod the operator renders is admitted by the API server's own check: a pod that
    breaks the profile is refused there."""
    ns = kube.core.read_namespace(kube_namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    loose = {"metadata": {"name": "loose"}, "spec": {"containers": [{"name": "c", "image": TEST_IMAGE, "securityContext": {"allowPrivilegeEscalation": True}}]}}
    with pytest.raises(k8s.ApiException) as err:
        kube.core.create_namespaced_pod(kube_namespace, loose)
    message = json.loads(err.value.body)["message"]
    assert err.value.status == 403 and 'violates PodSecurity "restricted:latest"' in message, message


# --- admission -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_malformed_manifest_is_rejected_naming_the_field(case: Case, kube_cluster: ControlPlane, ftop: OperatorProcess) -> None:
    doc = {"apiVersion": ct.API_VERSION, "kind": ct.KIND_JOB, "metadata": {"name": case.name, "namespace": "default"}, "spec": case.spec}
    proc = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0, f"{case.id} was accepted: {proc.stdout}"
    assert case.field in proc.stderr, f"{case.id}: message does not name {case.field}: {proc.stderr}"


def test_at_least_fifteen_malformed_cases() -> None:
    assert len(CASES) >= 15


def test_spec_is_immutable_once_started_except_suspend(kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.create_ftj(ns, "frozen", small())
    kube.wait(lambda: kube.status(ns, "frozen").get("startTime"), "startTime")
    patch = '{"spec": {"model": {"uri": "hf://org/other-model"}}}'
    proc = kube_cluster.kubectl("-n", ns, "patch", "ftj", "frozen", "--type=merge", "-p", patch, check=False)
    assert proc.returncode != 0 and "spec.model" in proc.stderr and "immutable" in proc.stderr, proc.stderr
    kube_cluster.kubectl("-n", ns, "patch", "ftj", "frozen", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    assert kube.ftj(ns, "frozen")["spec"]["suspend"] is True


# --- lifecycles -------------------------------------------------------------------------------------------------
def test_success_lifecycle_phases_conditions_events(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.create_ftj(ns, "ok", small())
    st = kube.wait_phase(ns, "ok", "Validating")
    assert st["conditions"][0]["type"] == "Validated" and st["conditions"][0]["status"] == "False"
    assert kube.job(ns, "ok") is None  # no GPU before validation
    kube.pass_validation(ns, "ok")
    pods = kube.wait_running_pods(ns, "ok", 2, attempt=0)
    st = kube.wait_phase(ns, "ok", "Running")
    assert st["workers"] == {"ready": 2, "total": 2}
    assert kube.condition(ns, "ok", "Validated")["reason"] == c.REASON_VALIDATION_PASSED
    assert kube.condition(ns, "ok", "Running")["status"] == "True"
    for p in pods:
        kube.set_result(ns, p.metadata.name, kwok.SUCCEEDED)
    st = kube.wait_phase(ns, "ok", "Succeeded")
    assert st["completionTime"] and st["startTime"] and st["restarts"] == 0
    assert kube.condition(ns, "ok", "Succeeded")["status"] == "True"
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=ok").items
    reasons = {e.reason for e in events}
    # Events for what a user acts on or waits for (running, succeeded), not for every step
    assert {c.REASON_WORKERS_RUNNING, c.REASON_TRAINING_SUCCEEDED} <= reasons, reasons
    assert not {c.REASON_VALIDATION_RUNNING, c.REASON_WORKERS_STARTING} & reasons, reasons


def test_failed_worker_restarts_the_group_then_fails_past_max_restarts(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.wait_others_gone(ns)
    start_running(kube, ns, "flaky", small(maxRestarts=1))
    first_uid = kube.job(ns, "flaky").metadata.uid
    counted_before = restarts_counted(ftop)
    failures_before = prom.value(ftop.metrics(), "finetune_operator_job_failures_total", {"reason": c.REASON_RESTART_LIMIT_EXCEEDED})
    assert failures_before is not None, "every failure reason is exported from the start (at 0 on a fresh operator)"
    victim = sorted(kube.trainer_pods(ns, "flaky", 0), key=lambda p: p.metadata.name)[1]
    kube.set_result(ns, victim.metadata.name, kwok.FAILED, exit_code=ct.EXIT_TRAINING_ERROR)
    # group restart: a new Job (attempt 1) with all workers, FINETUNE_ATTEMPT=1
    kube.wait(lambda: (j := kube.job(ns, "flaky")) is not None and j.metadata.uid != first_uid and j, "the attempt-1 Job", 90)
    pods = kube.wait_running_pods(ns, "flaky", 2, attempt=1, timeout=90)
    env = {e.name: e for e in pods[0].spec.containers[0].env}
    assert env[ct.ENV_ATTEMPT].value_from.field_ref.field_path == f"metadata.labels['{ct.LABEL_ATTEMPT}']"
    assert all(p.metadata.labels[ct.LABEL_ATTEMPT] == "1" for p in pods)
    st = kube.wait_phase(ns, "flaky", "Running")
    assert st["restarts"] == 1 and st["attempt"] == 1
    # the counter moves with the status write that records the restart: up by exactly one
    kube.wait(lambda: restarts_counted(ftop) != counted_before, f"{RESTARTS} to move", 30)
    assert restarts_counted(ftop) == counted_before + 1
    # the restart is recorded: one Warning event naming the failed attempt, the pod and its exit code
    def restart_events() -> list[Any]:
        events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=flaky").items
        return [e for e in events if e.reason == c.REASON_RESTARTING and e.type == "Warning"]  # (plus a Normal phase-change event)

    (event,) = kube.wait(restart_events, "a Restarting warning", 30)
    assert event.count == 1 and event.message.startswith("attempt 0 failed: "), event.message
    assert victim.metadata.name in event.message and f"exited with code {ct.EXIT_TRAINING_ERROR}" in event.message, event.message
    assert "restarting the group as attempt 1 (1/1)" in event.message, event.message
    # second failure: maxRestarts (1) reached -> Failed
    kube.set_result(ns, pods[0].metadata.name, kwok.FAILED, exit_code=ct.EXIT_TRAINING_ERROR)
    st = kube.wait_phase(ns, "flaky", "Failed", 90)
    failed = kube.condition(ns, "flaky", "Failed")
    assert failed["reason"] == c.REASON_RESTART_LIMIT_EXCEEDED and "maxRestarts (1)" in failed["message"]
    assert st["restarts"] == 1
    assert restarts_counted(ftop) == counted_before + 1, "the final failure is not a restart"
    failures = prom.value(ftop.metrics(), "finetune_operator_job_failures_total", {"reason": c.REASON_RESTART_LIMIT_EXCEEDED})
    assert failures == failures_before + 1, (failures_before, failures)


def test_a_group_restart_lets_go_of_a_pod_whose_node_never_confirms_its_deletion(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """Rank 1's node is lost (its kubelet never confirms a deletion): when rank 0 fails, the
    Foreground delete of attempt 0 would wait for that pod for good. The operator says so, deletes
    the pod with grace 0 once its grace period (30 s, the runtime's) and 5 s more have passed,
    and attempt 1 starts."""
    ns, runtime = kube_namespace, f"lost-{kube_namespace}"
    body = {"apiVersion": ct.API_VERSION, "kind": ct.KIND_RUNTIME, "metadata": {"name": runtime},
            "spec": {"terminationGracePeriodSeconds": 30, "resources": {"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"}}}
    kube.custom.create_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, body)
    try:
        start_running(kube, ns, "lost", {**minimal_spec(runtimeRef={"name": runtime}), "resources": {}})
        rank0, rank1 = sorted(kube.trainer_pods(ns, "lost", 0), key=lambda p: p.metadata.name)
        kube.core.patch_namespaced_pod(rank1.metadata.name, ns, {"metadata": {"annotations": {kwok.UNREACHABLE: "true"}}})
        kube.set_result(ns, rank0.metadata.name, kwok.FAILED, exit_code=ct.EXIT_TRAINING_ERROR)
        # the pod is named (status first, then a Warning, then the delete) ...
        def said() -> list[Any]:
            events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=lost").items
            return [e for e in events if e.type == "Warning" and e.reason == c.REASON_POD_DELETION_FORCED]

        (event,) = kube.wait(said, "a Warning naming the pod of the lost node", 90)
        assert rank1.metadata.name in event.message and "removed without waiting for the kubelet" in event.message, event.message
        # ... then it is gone, and attempt 1 runs
        pods = kube.wait_running_pods(ns, "lost", 2, attempt=1, timeout=90)
        assert rank1.metadata.name not in {p.metadata.name for p in pods}
        assert kube.wait_phase(ns, "lost", "Running")["restarts"] == 1
    finally:
        kube.custom.delete_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, runtime)


def test_eviction_is_a_disruption_not_a_failure(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    start_running(kube, ns, "evicted")
    uid = kube.job(ns, "evicted").metadata.uid
    victim = kube.trainer_pods(ns, "evicted", 0)[0]
    kube.set_result(ns, victim.metadata.name, kwok.EVICTED)
    # the Job controller replaces the evicted pod (podFailurePolicy Ignore); no group restart
    kube.wait(
        lambda: any(p.metadata.name != victim.metadata.name and p.status.phase == "Running" for p in kube.trainer_pods(ns, "evicted", 0))
        and len([p for p in kube.trainer_pods(ns, "evicted", 0) if p.status.phase == "Running"]) == 2,
        "replacement pod",
        60,
    )
    st = kube.wait(lambda: (s := kube.status(ns, "evicted")).get("phase") == "Running" and s.get("disruptions") and s, "the disruption counted", 60, lambda: kube.status(ns, "evicted"))
    assert st["restarts"] == 0 and st["attempt"] == 0 and kube.job(ns, "evicted").metadata.uid == uid
    assert st["disruptions"] == 1 and st["disruptedPods"] == [victim.metadata.uid], "counted once, apart from restarts"


def test_exit_143_is_ignored_by_the_jobs_pod_failure_policy(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """A worker that exits 143 (the trainer's answer to SIGTERM, after a checkpoint) is ignored by
    the real Job controller: the Job's podFailurePolicy Ignore rule replaces that pod (index 0
    again), the Job neither fails nor counts it (backoffLimit 0), and no group restart happens."""
    ns, name = kube_namespace, "sigtermed"
    kube.wait_others_gone(ns)
    start_running(kube, ns, name)
    uid = kube.job(ns, name).metadata.uid
    counted_before = restarts_counted(ftop)
    victim = next(p for p in kube.trainer_pods(ns, name, 0) if p.metadata.annotations[ct.ANNOTATION_JOB_COMPLETION_INDEX] == "0")
    kube.set_result(ns, victim.metadata.name, kwok.FAILED, exit_code=ct.EXIT_PREEMPTED)

    def exited_143() -> bool:
        pod = kube.core.read_namespaced_pod(victim.metadata.name, ns)
        states = [s.state.terminated for s in pod.status.container_statuses or [] if s.state.terminated]
        return pod.status.phase == "Failed" and [t.exit_code for t in states] == [ct.EXIT_PREEMPTED]

    assert kube.wait(exited_143, f"{victim.metadata.name} failed with exit code 143", 30)

    def replaced() -> list[Any] | None:
        pods = [p for p in kube.trainer_pods(ns, name, 0) if p.status.phase == "Running"]
        again = [p for p in pods if p.metadata.name != victim.metadata.name and p.metadata.annotations[ct.ANNOTATION_JOB_COMPLETION_INDEX] == "0"]
        return pods if again and len(pods) == 2 else None

    kube.wait(replaced, "the Job controller's replacement for worker 0", 60)
    job = kube.job(ns, name)
    conditions = {cond.type: cond.status for cond in job.status.conditions or []}
    assert job.metadata.uid == uid and conditions.get("Failed") != "True" and conditions.get("FailureTarget") != "True", conditions
    assert not job.status.failed, "an ignored pod failure is not counted"
    st = kube.wait_phase(ns, name, "Running")
    assert st["restarts"] == 0 and st["attempt"] == 0
    assert restarts_counted(ftop) == counted_before


def test_config_error_fails_at_once(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    start_running(kube, ns, "badcfg")
    pod = kube.trainer_pods(ns, "badcfg", 0)[0]
    kube.set_result(ns, pod.metadata.name, kwok.FAILED, exit_code=ct.EXIT_CONFIG_ERROR)
    st = kube.wait_phase(ns, "badcfg", "Failed")
    assert st["restarts"] == 0 and kube.condition(ns, "badcfg", "Failed")["reason"] == c.REASON_CONFIG_ERROR


def test_local_model_path_fails_at_once_naming_the_field(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.create_ftj(ns, "localpath", small(model={"uri": "/home/me/models/tiny"}))
    kube.wait_phase(ns, "localpath", "Failed")
    failed = kube.condition(ns, "localpath", "Failed")
    assert failed["reason"] == c.REASON_INVALID_SPEC
    assert failed["message"] == "spec.model.uri: local paths only work with ftctl run --local; use pvc:// or s3://"
    assert not any(p.metadata.name.startswith("localpath") for p in kube.pods(ns)) and kube.job(ns, "localpath") is None


def test_pvc_uris_mount_their_claims_in_the_pods(kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    for claim in ("models", "shared"):
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": ns}, "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
        kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pvc))
    spec = small(model={"uri": "pvc://models/tiny"}, dataset={"uri": "pvc://shared/data/train.jsonl", "format": "chat"}, output={"uri": "pvc://shared/runs/one/"})
    kube.create_ftj(ns, "onpvc", spec)
    validator = kube.wait(lambda: next((p for p in kube.pods(ns) if p.metadata.name == "onpvc-validate"), None), "validation pod")
    claims = {v.persistent_volume_claim.claim_name: (v.name, bool(v.persistent_volume_claim.read_only)) for v in validator.spec.volumes if v.persistent_volume_claim}
    assert {k: ro for k, (_, ro) in claims.items()} == {"models": True, "shared": False}
    mounts = {m.name: (m.mount_path, bool(m.read_only)) for m in validator.spec.containers[0].volume_mounts}
    assert {mounts[name] for name, _ in claims.values()} == {(f"{ct.PVC_MOUNT_ROOT}/models", True), (f"{ct.PVC_MOUNT_ROOT}/shared", False)}


def test_validation_failure_never_takes_a_gpu(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.create_ftj(ns, "baddata", small())
    kube.wait(lambda: any(p.metadata.name == "baddata-validate" and p.status.phase == "Running" for p in kube.pods(ns)), "validation pod")
    validator = kube.core.read_namespaced_pod("baddata-validate", ns)
    assert "nvidia.com/gpu" not in (validator.spec.containers[0].resources.limits or {})
    kube.set_result(ns, "baddata-validate", kwok.FAILED, exit_code=ct.EXIT_DATA_ERROR)
    kube.wait_phase(ns, "baddata", "Failed")
    failed = kube.condition(ns, "baddata", "Failed")
    assert failed["reason"] == c.REASON_VALIDATION_FAILED and "exit code 3" in failed["message"]
    assert kube.job(ns, "baddata") is None


def test_suspend_and_resume(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    start_running(kube, ns, "pausable")
    kube.patch_spec(ns, "pausable", {"suspend": True})
    kube.wait_phase(ns, "pausable", "Suspended")
    kube.wait(lambda: kube.job(ns, "pausable").spec.suspend is True, "Job suspended")
    kube.wait(lambda: not kube.trainer_pods(ns, "pausable"), "pods removed", 60)
    assert kube.condition(ns, "pausable", "Suspended")["status"] == "True"
    kube.patch_spec(ns, "pausable", {"suspend": False})
    kube.wait_running_pods(ns, "pausable", 2, attempt=0)
    st = kube.wait_phase(ns, "pausable", "Running")
    assert st["restarts"] == 0 and kube.condition(ns, "pausable", "Suspended")["status"] == "False"


def test_delete_cleans_up_children(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    start_running(kube, ns, "gone")
    kube.custom.delete_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, "gone")
    sel = f"{ct.LABEL_JOB_NAME}=gone"

    def empty() -> bool:
        return (
            not kube.batch.list_namespaced_job(ns, label_selector=sel).items
            and not kube.core.list_namespaced_config_map(ns, label_selector=sel).items
            and not kube.core.list_namespaced_service(ns, label_selector=sel).items
            and not kube.core.list_namespaced_pod(ns, label_selector=sel).items
        )

    assert kube.wait(empty, "children garbage-collected", 90)


def test_operator_killed_mid_reconcile_leaves_exactly_one_job(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    names = [f"burst-{i}" for i in range(20)]
    for name in names:
        kube.create_ftj(ns, name, small(resources={"nodes": 1, "gpusPerNode": 0}))
    # validation pods appear; pass them all, kill the operator while it creates the training Jobs
    kube.wait(lambda: len([p for p in kube.pods(ns, f"{ct.LABEL_COMPONENT}=validator") if p.status.phase == "Running"]) == len(names), "validation pods", 90)
    for name in names:
        kube.set_result(ns, f"{name}-validate", kwok.SUCCEEDED)
    kube.wait(lambda: len(kube.jobs(ns)) >= 1, "the first Job")
    ftop.kill()
    partial = len(kube.jobs(ns))
    ftop.start()  # a new candidate: takes the Lease once the dead leader's has expired
    kube.wait(lambda: len(kube.jobs(ns)) == len(names), "a Job for every FineTuneJob", 90)
    for name in names:
        kube.wait_phase(ns, name, "Running", 60)
    jobs = kube.jobs(ns)
    assert sorted(j.metadata.name for j in jobs) == sorted(names), "duplicate or missing Jobs"
    assert len(kube.pods(ns, f"{ct.LABEL_COMPONENT}=validator")) == len(names)
    assert all(kube.status(ns, n)["restarts"] == 0 for n in names)
    print(f"Jobs present when the operator was killed: {partial}/{len(names)}")


# --- operator process ---------------------------------------------------------------------------------------
def test_metrics_and_liveness(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.create_ftj(ns, "metered", small())
    kube.wait_phase(ns, "metered", "Validating")
    text = kube.wait(lambda: (t := ftop.metrics()) and (prom.value(t, "finetune_operator_jobs", {"phase": "Validating"}) or 0) >= 1 and t, "jobs gauge")
    kinds = prom.families(text)
    assert (kinds.get("finetune_operator_reconcile_duration_seconds"), kinds.get("finetune_operator_errors"), kinds.get("finetune_operator_restarts")) == (
        "histogram", "counter", "counter"), kinds
    assert (prom.value(text, "finetune_operator_reconcile_duration_seconds_count") or 0) >= 1
    assert ftop.healthy()


def test_operator_service_account_cannot_read_secrets(kube_cluster: ControlPlane, ftop: OperatorProcess) -> None:
    sa = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
    for verb in ("get", "list", "watch"):
        proc = kube_cluster.kubectl("auth", "can-i", verb, "secrets", "--all-namespaces", "--as", sa, check=False)
        assert proc.stdout.strip() == "no", (verb, proc.stdout, proc.stderr)
    proc = kube_cluster.kubectl("auth", "can-i", "patch", "finetunejobs.finetune.dev/status", "-n", "default", "--as", sa, check=False)
    assert proc.stdout.strip() == "yes"


def test_no_secret_values_in_status_or_events(kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str) -> None:
    ns = kube_namespace
    secret_value = "s3cr3t-VALUE-never-shown"
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "s3-creds"}, "stringData": {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": secret_value}})
    start_running(kube, ns, "secretive")
    everything = subprocess.run(
        [str(kube_cluster.tool("kubectl")), "-n", ns, "get", "ftj,jobs,pods,configmaps,events", "-o", "yaml"],
        capture_output=True, text=True, env=kube_cluster.env(), check=True,
    ).stdout
    assert secret_value not in everything and secret_value not in ftop.metrics()
    assert secret_value not in ftop.tail(10_000)
    job = kube.job(ns, "secretive")
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env[ct.ENV_AWS_SECRET_ACCESS_KEY].value_from.secret_key_ref.name == "s3-creds"


def test_image_defaults_to_the_operator_setting(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.create_ftj(ns, "plain", copy.deepcopy(small()))
    kube.pass_validation(ns, "plain")
    job = kube.wait(lambda: kube.job(ns, "plain"), "Job")
    assert job.spec.template.spec.containers[0].image == TEST_IMAGE


def test_workers_no_node_fits_are_reported_with_the_schedulers_reason(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """The real scheduler finds no node with that much memory: the job says so (condition,
    message and one Warning event), instead of a bare "0/2 workers running"."""
    ns = kube_namespace
    kube.create_ftj(ns, "toobig", small(resources={"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "900Ti"}))
    kube.pass_validation(ns, "toobig")  # (the validation pod asks for 2Gi: it fits)

    def reported() -> dict[str, Any] | None:
        running = kube.condition(ns, "toobig", "Running") or {}
        return running if running.get("reason") == "Unschedulable" else None

    running = kube.wait(reported, "the Unschedulable reason on the job", 60, lambda: kube.status(ns, "toobig"))
    st = kube.status(ns, "toobig")
    assert st["phase"] == "Initializing" and "cannot start: Unschedulable: " in st["message"] and "Insufficient memory" in st["message"], st["message"]
    assert running["message"] == st["message"]
    time.sleep(3)  # a few resyncs and pod updates later: still one event
    events = [e for e in kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=toobig").items if e.reason == "Unschedulable"]
    assert len(events) == 1 and events[0].type == "Warning" and events[0].count == 1, [(e.reason, e.count) for e in events]


def test_a_pod_refused_by_a_quota_is_reported_and_goes_in_once_the_quota_allows(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """The namespace's ResourceQuota has no room for the validation pod: the API server's 403 is
    said on the job (ChildRejected, naming the pod and the quota), and once the quota is raised
    the pod is created without anyone touching the job."""
    ns = kube_namespace
    quota = {"metadata": {"name": "compute"}, "spec": {"hard": {"requests.memory": "1Gi"}}}
    kube.core.create_namespaced_resource_quota(ns, quota)
    kube.wait(lambda: (kube.core.read_namespaced_resource_quota("compute", ns).status.hard or {}).get("requests.memory"), "the quota to be counted", 30)
    kube.create_ftj(ns, "squeezed", small())

    def refused() -> dict[str, Any] | None:
        validated = kube.condition(ns, "squeezed", "Validated") or {}
        return validated if validated.get("reason") == c.REASON_CHILD_REJECTED else None

    validated = kube.wait(refused, "the refusal on the job", 60, lambda: kube.status(ns, "squeezed"))
    assert "the API server refused Pod squeezed-validate" in validated["message"] and "exceeded quota: compute" in validated["message"], validated
    events = [e for e in kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=squeezed").items if e.reason == c.REASON_CHILD_REJECTED]
    assert events and events[0].type == "Warning"
    kube.core.patch_namespaced_resource_quota("compute", ns, {"spec": {"hard": {"requests.memory": "64Gi"}}})
    kube.pass_validation(ns, "squeezed", 120)  # created by a retry (backoff, at most 60 s apart)
    kube.wait(lambda: (kube.condition(ns, "squeezed", "Validated") or {}).get("reason") != c.REASON_CHILD_REJECTED, "the refusal to go from the job", 60)


def test_trainer_pods_the_job_controller_cannot_create_are_reported(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """The quota has room for the validation pod (2Gi) but not for a trainer pod (4Gi): the real
    Job controller records FailedCreate, and the job says so with its message."""
    ns = kube_namespace
    kube.core.create_namespaced_resource_quota(ns, {"metadata": {"name": "compute"}, "spec": {"hard": {"requests.memory": "3Gi"}}})
    kube.wait(lambda: (kube.core.read_namespaced_resource_quota("compute", ns).status.hard or {}).get("requests.memory"), "the quota to be counted", 30)
    kube.create_ftj(ns, "overquota", small(resources={"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "4Gi"}))
    kube.pass_validation(ns, "overquota")

    def reported() -> dict[str, Any] | None:
        running = kube.condition(ns, "overquota", "Running") or {}
        return running if running.get("reason") == c.REASON_FAILED_CREATE else None

    running = kube.wait(reported, "FailedCreate on the job", 60, lambda: kube.status(ns, "overquota"))
    assert "the Job cannot create its pods" in running["message"] and "exceeded quota: compute" in running["message"], running["message"]
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=overquota").items
    ours = [e for e in events if e.reason == c.REASON_FAILED_CREATE and e.involved_object.kind == ct.KIND_JOB]
    assert len(ours) == 1 and ours[0].type == "Warning" and "exceeded quota" in ours[0].message, [(e.involved_object.kind, e.reason) for e in events]


def runtime_meta(kube: Kube, name: str) -> dict[str, Any] | None:
    try:
        body = kube.custom.get_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, name)
    except k8s.ApiException as err:
        if err.status == 404:
            return None
        raise
    return dict(body["metadata"])


def test_a_job_without_runtime_ref_runs_under_the_default_runtime(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    kube.create_ftj(ns, "defaulted", small())
    st = kube.wait(lambda: (s := kube.status(ns, "defaulted")).get("runtime") and s, "status.runtime", 60, lambda: kube.status(ns, "defaulted"))
    assert st["runtime"]["name"] == DEFAULT_RUNTIME and st["runtime"]["generation"] >= 1
    # the copy records the image the job got (the operator's default: the runtime names none)
    assert st["runtime"]["spec"] == {"image": TEST_IMAGE, "allowImageOverride": True, "resources": {}}, st["runtime"]


def test_editing_or_deleting_a_runtime_changes_nothing_for_a_started_job(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """A started job keeps the copy of its runtime in status.runtime: tightening the limits does
    not fail it, a new image does not reach its next attempt, and deleting the runtime does not
    send it back to Pending. The runtime carries the in-use finalizer while the job runs, so its
    deletion completes only once the job has finished."""
    ns, runtime = kube_namespace, f"pinned-{kube_namespace}"
    body = {"apiVersion": ct.API_VERSION, "kind": ct.KIND_RUNTIME, "metadata": {"name": runtime},
            "spec": {"image": "registry.invalid/trainer:one", "maxNodes": 2, "resources": {"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"}}}
    kube.custom.create_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, body)
    try:
        spec = {**minimal_spec(runtimeRef={"name": runtime}, maxRestarts=3), "resources": {}}
        start_running(kube, ns, "pinned", spec)
        first = kube.job(ns, "pinned")
        assert first.spec.template.spec.containers[0].image == "registry.invalid/trainer:one"
        kube.wait(lambda: c.RUNTIME_FINALIZER in (runtime_meta(kube, runtime) or {}).get("finalizers", ()), "the in-use finalizer", 30)
        # the platform team tightens the preset below what the job uses and moves its image
        kube.custom.patch_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, runtime,
                                                {"spec": {"image": "registry.invalid/trainer:two", "maxNodes": 1, "resources": {"nodes": 1}}})
        victim = kube.trainer_pods(ns, "pinned", 0)[0]
        kube.set_result(ns, victim.metadata.name, kwok.FAILED, exit_code=ct.EXIT_TRAINING_ERROR)
        pods = kube.wait_running_pods(ns, "pinned", 2, attempt=1, timeout=90)
        assert {p.spec.containers[0].image for p in pods} == {"registry.invalid/trainer:one"}
        st = kube.wait_phase(ns, "pinned", "Running")
        assert st["runtime"]["spec"]["maxNodes"] == 2 and st["restarts"] == 1
        # the runtime goes away (a helm upgrade that renames presets): the job runs on, restarts included
        kube.custom.delete_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, runtime)
        victim = kube.trainer_pods(ns, "pinned", 1)[0]
        kube.set_result(ns, victim.metadata.name, kwok.FAILED, exit_code=ct.EXIT_TRAINING_ERROR)
        pods = kube.wait_running_pods(ns, "pinned", 2, attempt=2, timeout=90)
        assert {p.spec.containers[0].image for p in pods} == {"registry.invalid/trainer:one"}
        st = kube.wait_phase(ns, "pinned", "Running")
        assert st["restarts"] == 2 and st["runtime"]["name"] == runtime
        held = runtime_meta(kube, runtime)
        assert held is not None and held.get("deletionTimestamp"), "the runtime's deletion waits for the job using it"
        # the job ends: nothing uses the runtime any more, and its deletion completes
        for p in pods:
            kube.set_result(ns, p.metadata.name, kwok.SUCCEEDED)
        kube.wait_phase(ns, "pinned", "Succeeded")
        kube.wait(lambda: runtime_meta(kube, runtime) is None, "the runtime's deletion to complete", 30)
        # a job created now waits for the runtime it names
        kube.create_ftj(ns, "late", spec)
        late = kube.wait(lambda: (s := kube.status(ns, "late")).get("phase") == "Pending" and s, "the late job to wait", 60, lambda: kube.status(ns, "late"))
        assert f"ClusterFineTuneRuntime {runtime!r} does not exist" in late["message"]
    finally:
        with contextlib.suppress(k8s.ApiException):
            kube.custom.delete_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, runtime)


def test_ttl_after_finished_deletes_the_job(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    ns = kube_namespace
    start_running(kube, ns, "shortlived", small(ttlSecondsAfterFinished=2))
    for p in kube.trainer_pods(ns, "shortlived", 0):
        kube.set_result(ns, p.metadata.name, kwok.SUCCEEDED)
    kube.wait_phase(ns, "shortlived", "Succeeded")

    def gone() -> bool:
        return not kube.custom.list_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB)["items"]

    assert kube.wait(gone, "FineTuneJob deleted after ttlSecondsAfterFinished", 30)


def test_status_writes_and_deletes_are_fenced_by_what_was_observed(
    kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's own client against the API server: a status patch conditional on a stale
    resourceVersion writes nothing, and a delete naming another UID deletes nothing (the name now
    belongs to a re-created object); the current resourceVersion/UID go through."""
    import asyncio

    import kopf
    from finetune_operator.kube import Kube as OperatorKube
    from finetune_operator.plan import Delete

    ns, name = kube_namespace, "fenced"
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    ftop.stop()  # this test is the only writer
    try:
        created = kube.create_ftj(ns, name, small(suspend=True))
        stale_rv, uid = created["metadata"]["resourceVersion"], created["metadata"]["uid"]
        kube.custom.patch_namespaced_custom_object_status(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, name, {"status": {"message": "moved on"}})

        async def go() -> tuple[Any, Any, dict[str, Any]]:
            client = OperatorKube(credentials=lambda: kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()))
            try:
                stale = await client.patch_status(ns, name, {"message": "from a stale view"}, stale_rv)
                await client.delete(ns, Delete("FineTuneJob", name, uid="00000000-0000-0000-0000-000000000000"))
                current = kube.ftj(ns, name)["metadata"]["resourceVersion"]
                fresh = await client.patch_status(ns, name, {"message": "from the current view"}, current)
                after = kube.ftj(ns, name)  # the wrong-UID delete left it alone
                await client.delete(ns, Delete("FineTuneJob", name, uid=uid))
                return stale, fresh, after
            finally:
                await client.close()

        stale, fresh, after = asyncio.run(go())
        assert stale is None and fresh is True
        assert after["metadata"]["uid"] == uid and after["status"]["message"] == "from the current view"
        Kube.wait(
            lambda: not kube.custom.list_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, field_selector=f"metadata.name={name}")["items"],
            "the FineTuneJob deleted by its own UID",
        )
    finally:
        ftop.start()


def test_a_re_created_namesake_never_adopts_the_old_jobs_children(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """Delete a running FineTuneJob with --cascade=orphan (its Job, pods and validator stay) and
    create one with the same name: the new job must not take the old validator's success nor
    the old Job as its own; it removes them (by UID) and validates and trains afresh."""
    ns, name = kube_namespace, "namesake"
    start_running(kube, ns, name)
    old_job = kube.job(ns, name)
    old_uid = kube.ftj(ns, name)["metadata"]["uid"]
    # the old run succeeded as far as its pods are concerned
    for p in kube.trainer_pods(ns, name, 0):
        kube.set_result(ns, p.metadata.name, kwok.SUCCEEDED)
    kube.custom.delete_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, name, propagation_policy="Orphan")
    Kube.wait(lambda: not kube.custom.list_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, field_selector=f"metadata.name={name}")["items"], "old FineTuneJob gone")
    assert kube.job(ns, name) is not None  # orphaned, still there

    kube.create_ftj(ns, name, small(output={"uri": "s3://other-bucket/new-run/"}))
    new_uid = kube.ftj(ns, name)["metadata"]["uid"]
    assert new_uid != old_uid
    # the old Job is removed, a new validator runs for the new UID; never Succeeded on the old results
    seen: set[str] = set()

    def fresh_validator() -> Any:
        seen.add(kube.status(ns, name).get("phase") or "")
        pods = [p for p in kube.pods(ns) if p.metadata.name == f"{name}-validate" and p.status.phase == "Running"]
        return next((p for p in pods if p.metadata.labels.get(ct.LABEL_JOB_UID) == new_uid), None)

    Kube.wait(fresh_validator, "a validator pod for the new FineTuneJob", 90)
    assert "Succeeded" not in seen, seen
    Kube.wait(lambda: (j := kube.job(ns, name)) is None or j.metadata.uid != old_job.metadata.uid, "the orphaned Job removed", 60)
    kube.set_result(ns, f"{name}-validate", kwok.SUCCEEDED)
    pods = kube.wait_running_pods(ns, name, 2, attempt=0, timeout=90)
    assert all(p.metadata.labels[ct.LABEL_JOB_UID] == new_uid for p in pods)
    st = kube.wait_phase(ns, name, "Running")
    assert st["attempt"] == 0 and "Succeeded" not in seen


def test_a_deleted_service_or_configmap_comes_back_while_the_job_runs(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """The rendezvous Service and the config ConfigMap are wanted for as long as the Job runs: a
    deleted one is re-created (the operator watches them and drops what it had applied)."""
    ns, name = kube_namespace, "keepalive"
    start_running(kube, ns, name)
    svc_uid = kube.core.read_namespaced_service(f"{name}-workers", ns).metadata.uid
    cm_uid = kube.core.read_namespaced_config_map(f"{name}-config", ns).metadata.uid
    kube.core.delete_namespaced_service(f"{name}-workers", ns)
    kube.core.delete_namespaced_config_map(f"{name}-config", ns)

    def back(read: Any, old_uid: str) -> Any:
        def check() -> Any:
            try:
                obj = read()
            except k8s.ApiException as err:
                if err.status == 404:
                    return None
                raise
            return obj if obj.metadata.uid != old_uid else None

        return check

    svc = Kube.wait(back(lambda: kube.core.read_namespaced_service(f"{name}-workers", ns), svc_uid), "the Service re-created", 30)
    cm = Kube.wait(back(lambda: kube.core.read_namespaced_config_map(f"{name}-config", ns), cm_uid), "the ConfigMap re-created", 30)
    assert svc.spec.cluster_ip == "None" and svc.spec.selector[ct.LABEL_JOB_UID] == kube.ftj(ns, name)["metadata"]["uid"]
    assert cm.data  # the trainer config is back
    assert kube.status(ns, name)["phase"] == "Running"


def test_suspend_reaches_a_job_that_another_manager_unsuspended(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """A queued job's Job is created suspended; an admission controller (Kueue) unsuspends it
    under its own field manager. The user's spec.suspend: true must then reach the Job (a patch
    of that field): before, the operator re-sent nothing, since it had once applied the same Job."""
    ns, name = kube_namespace, "requeued"
    kube.create_ftj(ns, name, small(queueName="team-q"))
    kube.pass_validation(ns, name)
    Kube.wait(lambda: (j := kube.job(ns, name)) is not None and j.spec.suspend, "the Job created suspended (queued)", 60)
    kube.wait_phase(ns, name, "Queued")
    kube.batch.patch_namespaced_job(name, ns, {"spec": {"suspend": False}}, field_manager="kueue-admission")  # admitted
    kube.wait_running_pods(ns, name, 2, attempt=0)
    kube.wait_phase(ns, name, "Running")
    kube.patch_spec(ns, name, {"suspend": True})
    Kube.wait(lambda: kube.job(ns, name).spec.suspend is True, "the Job suspended again", 30)
    kube.wait_phase(ns, name, "Suspended")
    assert kube.wait(lambda: not [p for p in kube.trainer_pods(ns, name, 0) if p.metadata.deletion_timestamp is None], "the workers removed", 60)


def test_a_foreign_object_with_a_childs_name_is_left_untouched_and_reported(kube: Kube, ftop: OperatorProcess, kube_namespace: str) -> None:
    """A ConfigMap and a Service someone else made hold the names of the job's children: the
    operator overwrites neither (creating a FineTuneJob must not be a way to replace them), the
    job says what is in the way, and it goes on once they are gone."""
    ns, name = kube_namespace, "squatted"
    kube.core.create_namespaced_config_map(ns, {"metadata": {"name": f"{name}-config"}, "data": {"owner": "another team"}})
    kube.core.create_namespaced_service(ns, {"metadata": {"name": f"{name}-workers"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}})
    kube.create_ftj(ns, name, small())
    st = kube.wait(lambda: (s := kube.status(ns, name)).get("phase") == "Pending" and c.REASON_CHILD_NAME_TAKEN in str(s.get("conditions")) and s, "the job to report the taken names", 60, lambda: kube.status(ns, name))
    assert f"ConfigMap {name}-config" in st["message"] and f"Service {name}-workers" in st["message"], st["message"]
    cm = kube.core.read_namespaced_config_map(f"{name}-config", ns)
    svc = kube.core.read_namespaced_service(f"{name}-workers", ns)
    assert cm.data == {"owner": "another team"} and not cm.metadata.owner_references and not (cm.metadata.labels or {})
    assert svc.spec.selector == {"app": "theirs"} and not svc.metadata.owner_references
    assert kube.job(ns, name) is None, "the training Job started without its ConfigMap and Service"
    assert not kube.pods(ns), "a pod started that would mount someone else's ConfigMap"
    events = kube.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    assert any(e.reason == c.REASON_CHILD_NAME_TAKEN and e.type == "Warning" for e in events)
    kube.core.delete_namespaced_config_map(f"{name}-config", ns)
    kube.core.delete_namespaced_service(f"{name}-workers", ns)
    kube.pass_validation(ns, name, 120)
    kube.wait_phase(ns, name, "Running", 120)
    assert kube.core.read_namespaced_config_map(f"{name}-config", ns).metadata.labels[ct.LABEL_JOB_NAME] == name

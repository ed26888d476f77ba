"""Kueue (the real manager, tests/cluster/kueue.py) admitting plain batch Jobs and FineTuneJobs.

Run just these:  .venv/bin/python -m pytest tests/kueue -m cluster
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.cluster import kwok
from tests.cluster.kueue import PREBUILT_WORKLOAD_LABEL, QUEUE_LABEL, Kueue, condition
from tests.kueue.support import (
    cluster_queue,
    create,
    get,
    is_true,
    job_body,
    pod_spec,
    workload_of,
    workloads,
)
from tests.operator.cluster_support import Kube, OperatorProcess
from tests.operator.helpers import minimal_spec

pytestmark = pytest.mark.cluster

INSUFFICIENT = "insufficient unused quota"


def report(title: str, obj: Any) -> None:
    """What the test saw, for the log (pytest -s) and the issue."""
    print(f"\n--- {title}\n{json.dumps(obj, indent=1, sort_keys=True, default=str)}", file=sys.stderr)


def conds(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [
        {k: c.get(k) for k in ("type", "status", "reason", "message")}
        for c in ((obj or {}).get("status") or {}).get("conditions", [])
    ]


def test_plain_jobs_quota_for_one_admits_one_and_queues_the_other(kube: Kube, kueue: Kueue, kube_namespace: str) -> None:
    ns = kube_namespace
    with cluster_queue(kube, ns, {"cpu": "1", "memory": "1Gi"}):
        created = kube.batch.create_namespaced_job(ns, job_body("first"))
        assert created.spec.suspend is True, "Kueue's mutating webhook suspends a Job with a queue-name on create"
        wl1 = Kube.wait(lambda: (w := workload_of(kube, ns, "Job", "first")) and is_true(w, "Admitted") and w, "first's Workload Admitted", 60)
        Kube.wait(lambda: kube.job(ns, "first").spec.suspend is False, "first unsuspended by Kueue", 30)
        assert is_true(wl1, "QuotaReserved")

        kube.batch.create_namespaced_job(ns, job_body("second"))
        wl2 = Kube.wait(
            lambda: (w := workload_of(kube, ns, "Job", "second")) and condition(w, "QuotaReserved").get("status") == "False" and w,
            "second's Workload with QuotaReserved=False",
            60,
        )
        report("second Job's Workload conditions (queued)", conds(wl2))
        qr = condition(wl2, "QuotaReserved")
        assert qr["reason"] == "Pending" and INSUFFICIENT in qr["message"], qr
        assert not is_true(wl2, "Admitted")
        time.sleep(2)
        assert kube.job(ns, "second").spec.suspend is True

        # the first one finishes: its quota goes to the second
        (pod,) = kube.pods(ns, "job-name=first")
        kube.set_result(ns, pod.metadata.name, kwok.SUCCEEDED)
        Kube.wait(lambda: is_true(workload_of(kube, ns, "Job", "second"), "Admitted"), "second admitted once first finished", 60)
        Kube.wait(lambda: kube.job(ns, "second").spec.suspend is False, "second unsuspended", 30)
        assert is_true(workload_of(kube, ns, "Job", "first"), "Finished")


# --- FineTuneJobs through the operator ----------------------------------------------------------
FTJ_QUOTA = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}


def ftj_spec(**over: Any) -> dict[str, Any]:
    """A 1-node, 1-GPU FineTuneJob in LocalQueue `lq` (FTJ_QUOTA holds exactly one)."""
    spec = minimal_spec(resources={"nodes": 1, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"}, queueName="lq", maxRestarts=2)
    spec.update(over)
    return spec


def test_finetunejobs_quota_for_one(kube: Kube, kueue: Kueue, ftop: OperatorProcess, kube_namespace: str) -> None:
    """Two FineTuneJobs in a queue with quota for one: the first runs, the second's Job stays
    suspended; reports what the second FineTuneJob shows and what its Workload says."""
    ns = kube_namespace
    with cluster_queue(kube, ns, FTJ_QUOTA):
        kube.create_ftj(ns, "alpha", ftj_spec())
        kube.pass_validation(ns, "alpha")
        Kube.wait(lambda: is_true(workload_of(kube, ns, "Job", "alpha"), "Admitted"), "alpha's Workload Admitted", 60)
        kube.wait_running_pods(ns, "alpha", 1, attempt=0)
        kube.wait_phase(ns, "alpha", "Running")

        kube.create_ftj(ns, "beta", ftj_spec())
        kube.pass_validation(ns, "beta")
        wl = Kube.wait(
            lambda: (w := workload_of(kube, ns, "Job", "beta")) and condition(w, "QuotaReserved").get("status") == "False" and w,
            "beta's Workload with QuotaReserved=False",
            60,
        )
        time.sleep(3)  # let the operator observe the suspended Job
        st = kube.status(ns, "beta")
        report("beta FineTuneJob status (queued)", {"phase": st.get("phase"), "message": st.get("message"), "conditions": st.get("conditions")})
        report("beta Workload conditions", conds(wl))
        assert kube.job(ns, "beta").spec.suspend is True
        assert INSUFFICIENT in condition(wl, "QuotaReserved")["message"]
        assert st.get("phase") == "Queued", st
        # Kueue's own reason, in the job's status
        assert INSUFFICIENT in (st.get("message") or "") and "Kueue queue 'lq'" in st["message"], st
        suspended = kube.condition(ns, "beta", "Suspended")
        assert suspended.get("status") == "True" and suspended.get("reason") == "Queued", suspended
        # validator pods are plain Pods without the queue-name label: Kueue (pod integration off)
        # never sees them, so they run outside the ClusterQueue's quota
        validators = [p for p in kube.pods(ns) if p.metadata.name.endswith("-validate")]
        assert validators and all(QUEUE_LABEL not in (p.metadata.labels or {}) for p in validators)
        assert not [w for w in workloads(kube, ns) if any(r["kind"] == "Pod" for r in w["metadata"].get("ownerReferences", []))]


def test_group_restart_keeps_the_admission(kube: Kube, kueue: Kueue, ftop: OperatorProcess, kube_namespace: str) -> None:
    """A failed group restarts while another FineTuneJob waits in the same ClusterQueue: the
    restarted attempt must keep its admission (the same Workload), not queue a new one.

    Today the new Job gets a new Workload; it is admitted before the waiting job only because it
    is created within milliseconds of the old Workload's deletion, before Kueue's inadmissible-
    workload requeue (about every second) moves the waiting one back: a race, not a guarantee."""
    ns = kube_namespace
    with cluster_queue(kube, ns, FTJ_QUOTA):
        kube.create_ftj(ns, "gamma", ftj_spec())
        kube.pass_validation(ns, "gamma")
        (pod,) = kube.wait_running_pods(ns, "gamma", 1, attempt=0)
        kube.wait_phase(ns, "gamma", "Running")
        first_wl = workload_of(kube, ns, "Job", "gamma")
        assert first_wl is not None and is_true(first_wl, "Admitted")
        kube.create_ftj(ns, "delta", ftj_spec())  # queued behind gamma
        kube.pass_validation(ns, "delta")
        Kube.wait(lambda: condition(workload_of(kube, ns, "Job", "delta") or {}, "QuotaReserved").get("status") == "False", "delta queued", 60)
        kube.set_result(ns, pod.metadata.name, kwok.FAILED, exit_code=1)  # gamma's group restarts
        kube.wait_running_pods(ns, "gamma", 1, attempt=1, timeout=90)
        time.sleep(3)
        gammas = [w for w in workloads(kube, ns) if any(r["name"] == "gamma" for r in w["metadata"].get("ownerReferences", []))]
        report(
            "after gamma's restart: Workloads",
            [{"name": w["metadata"]["name"], "uid": w["metadata"]["uid"], "labels": w["metadata"].get("labels"), "owner": [r["name"] + "/" + r["uid"][:8] for r in w["metadata"].get("ownerReferences", [])], "conditions": conds(w)} for w in workloads(kube, ns)],
        )
        report("first Workload of gamma", {"name": first_wl["metadata"]["name"], "uid": first_wl["metadata"]["uid"]})
        assert not is_true(workload_of(kube, ns, "Job", "delta"), "Admitted")
        assert [w["metadata"]["uid"] for w in gammas] == [first_wl["metadata"]["uid"]], "attempt 1 runs under a new Workload"


def test_user_suspend_with_a_queue_holds_without_flip_flop(kube: Kube, kueue: Kueue, ftop: OperatorProcess, kube_namespace: str) -> None:
    """spec.suspend=true on a running, admitted FineTuneJob: the Job must stay suspended (no
    tug of war with Kueue) and the quota must be given back (the Workload inactive)."""
    ns = kube_namespace
    with cluster_queue(kube, ns, FTJ_QUOTA):
        kube.create_ftj(ns, "eps", ftj_spec())
        kube.pass_validation(ns, "eps")
        kube.wait_running_pods(ns, "eps", 1, attempt=0)
        kube.wait_phase(ns, "eps", "Running")
        kube.patch_spec(ns, "eps", {"suspend": True})
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            job = kube.job(ns, "eps")
            samples.append(None if job is None else job.spec.suspend)
            time.sleep(0.2)
        flips = sum(1 for a, b in itertools.pairwise(samples) if a != b)
        wl = workload_of(kube, ns, "Job", "eps")
        st = kube.status(ns, "eps")
        report("eps: Job.spec.suspend samples after spec.suspend=true", {"flips": flips, "samples": samples, "phase": st.get("phase"), "message": st.get("message"), "workload": conds(wl), "active": (wl or {}).get("spec", {}).get("active")})
        assert flips <= 1 and samples[-1] is True, "the Job's suspend flip-flops between the operator and Kueue"
        assert st.get("phase") == "Suspended"
        assert wl is not None and not is_true(wl, "QuotaReserved"), "the suspended job still holds its quota"
        assert not [p for p in kube.pods(ns, "job-name=eps") if p.status.phase in ("Pending", "Running") and not p.metadata.deletion_timestamp]

        # resumed: the same Workload is admitted again and the same attempt runs (no restart counted)
        kube.patch_spec(ns, "eps", {"suspend": False})
        # (Kueue reset the Job's pod template labels to the Workload's when it stopped it: the
        # new pod has no attempt label, and the operator takes its attempt from its Job)
        Kube.wait(lambda: [p for p in kube.pods(ns, "job-name=eps") if p.status.phase == "Running"], "eps's pod running again", 90)
        st = kube.wait_phase(ns, "eps", "Running")
        assert st.get("restarts", 0) == 0 and st.get("attempt", 0) == 0, st
        wl2 = workload_of(kube, ns, "Job", "eps")
        assert wl2 is not None and wl2["metadata"]["uid"] == wl["metadata"]["uid"] and is_true(wl2, "Admitted")


def test_a_job_that_fails_for_good_gives_its_quota_to_the_next(kube: Kube, kueue: Kueue, ftop: OperatorProcess, kube_namespace: str) -> None:
    """maxRestarts reached: under Kueue the Job itself does not fail (retryable exits are
    ignored by its podFailurePolicy, so its Workload survives restarts), so the operator must
    stop it: the Workload is deactivated, Kueue suspends the Job, and the queued job runs."""
    ns = kube_namespace
    with cluster_queue(kube, ns, FTJ_QUOTA):
        kube.create_ftj(ns, "zeta", ftj_spec(maxRestarts=0))
        kube.pass_validation(ns, "zeta")
        (pod,) = kube.wait_running_pods(ns, "zeta", 1, attempt=0)
        kube.create_ftj(ns, "eta", ftj_spec())
        kube.pass_validation(ns, "eta")
        Kube.wait(lambda: condition(workload_of(kube, ns, "Job", "eta") or {}, "QuotaReserved").get("status") == "False", "eta queued", 60)
        kube.set_result(ns, pod.metadata.name, kwok.FAILED, exit_code=1)
        st = kube.wait_phase(ns, "zeta", "Failed")
        assert kube.condition(ns, "zeta", "Failed").get("reason") == "RestartLimitExceeded", st
        kube.wait_running_pods(ns, "eta", 1, attempt=0, timeout=90)
        wl = workload_of(kube, ns, "Job", "zeta")
        report("zeta's Workload after it failed", {"active": (wl or {}).get("spec", {}).get("active"), "conditions": conds(wl)})
        assert wl is not None and wl["spec"]["active"] is False and not is_true(wl, "QuotaReserved")
        Kube.wait(lambda: kube.job(ns, "zeta").spec.suspend is True, "zeta's Job suspended by Kueue (its pods stopped)", 30)


# --- prototype: a prebuilt Workload kept across Jobs ------------------------------------------------
def prebuilt_workload(name: str, owner: Any, spec: dict[str, Any], count: int = 1) -> dict[str, Any]:
    return {
        "kind": "Workload",
        "metadata": {
            "name": name,
            # the owner stands for the FineTuneJob: an owner, not the controller (Kueue ignores a
            # prebuilt Workload controlled by another object, and makes each Job its controller)
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}],
        },
        "spec": {"queueName": "lq", "podSets": [{"name": "main", "count": count, "template": {"spec": spec}}]},
    }


def drop_owner(kube: Kube, ns: str, workload: str, uid: str) -> None:
    """Remove the owner reference ``uid`` from the Workload (read-modify-write, retried on a
    conflict: Kueue and the garbage collector write the same object)."""
    for _ in range(20):
        wl = get(kube, "workloads", workload, ns)
        refs = [r for r in wl["metadata"]["ownerReferences"] if r["uid"] != uid]
        if refs == wl["metadata"]["ownerReferences"]:
            return
        try:
            kube.custom.patch_namespaced_custom_object(
                "kueue.x-k8s.io", "v1beta2", ns, "workloads", workload,
                {"metadata": {"ownerReferences": refs, "resourceVersion": wl["metadata"]["resourceVersion"]}},
            )
            return
        except ApiException as err:
            if err.status != 409:
                raise
    raise AssertionError(f"could not drop owner {uid} from Workload {workload}")


def test_prebuilt_workload_is_adopted_by_the_next_job_without_requeueing(kube: Kube, kueue: Kueue, kube_namespace: str) -> None:
    """Prototype of a group restart under Kueue: the Workload is made up front (owned by a
    stand-in for the FineTuneJob); each attempt's Job names it in kueue.x-k8s.io/prebuilt-
    workload-name. Job 1 is deleted, Job 2 (same name, new UID) adopts the same, still admitted,
    Workload and runs at once, while a competing Job waits in the same ClusterQueue."""
    ns = kube_namespace
    with cluster_queue(kube, ns, {"cpu": "1", "memory": "1Gi"}):
        owner = kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "stand-in-ftj"}})
        labels = {PREBUILT_WORKLOAD_LABEL: "train-wl"}
        # Kueue compares the Job's containers with the Workload's (semantic DeepEqual): the
        # podSet template must carry the API server's defaults (imagePullPolicy,
        # terminationMessagePath, ...). A server-side dry-run create of the Job returns them.
        dry = kube.batch.create_namespaced_job(ns, job_body("train", labels=labels), dry_run="All")
        spec = kube.api.sanitize_for_serialization(dry.spec.template.spec)
        assert spec != pod_spec()
        create(kube, "workloads", prebuilt_workload("train-wl", owner, spec), ns)
        wl = Kube.wait(lambda: (w := get(kube, "workloads", "train-wl", ns)) and is_true(w, "Admitted") and w, "prebuilt Workload admitted (no Job yet)", 60)
        admitted_at = condition(wl, "Admitted")["lastTransitionTime"]

        job1 = kube.batch.create_namespaced_job(ns, job_body("train", labels=labels))
        Kube.wait(lambda: kube.job(ns, "train").spec.suspend is False, "job 1 unsuspended", 30)
        wl = get(kube, "workloads", "train-wl", ns)
        report("Workload with job 1", {"ownerReferences": wl["metadata"]["ownerReferences"], "finalizers": wl["metadata"].get("finalizers"), "conditions": conds(wl)})
        assert [r["uid"] for r in wl["metadata"]["ownerReferences"] if r.get("controller")] == [job1.metadata.uid]

        kube.batch.create_namespaced_job(ns, job_body("other"))  # competes for the same quota
        Kube.wait(lambda: condition(workload_of(kube, ns, "Job", "other") or {}, "QuotaReserved").get("status") == "False", "the competing Job queued", 60)

        kube.batch.delete_namespaced_job("train", ns, propagation_policy="Background")
        Kube.wait(lambda: kube.job(ns, "train") is None, "job 1 gone", 30)
        wl = get(kube, "workloads", "train-wl", ns)
        report("Workload right after job 1 was deleted", {"ownerReferences": wl["metadata"]["ownerReferences"], "finalizers": wl["metadata"].get("finalizers"), "conditions": conds(wl)})

        # Job 1 stays the Workload's controller until the garbage collector drops the dangling
        # reference (about 20 s here); until then Kueue ignores the Workload for Job 2 ("already
        # controlled by another object"). The owner of the Workload (the operator) drops it.
        drop_owner(kube, ns, "train-wl", job1.metadata.uid)
        t0 = time.monotonic()
        job2 = kube.batch.create_namespaced_job(ns, job_body("train", labels=labels))
        assert job2.spec.suspend is True
        seen_other_admitted = False
        while time.monotonic() - t0 < 30:
            seen_other_admitted |= is_true(workload_of(kube, ns, "Job", "other"), "QuotaReserved")
            if kube.job(ns, "train").spec.suspend is False:
                break
            time.sleep(0.1)
        took = time.monotonic() - t0
        wl = get(kube, "workloads", "train-wl", ns)
        report(f"Workload with job 2 (unsuspended after {took:.1f}s)", {"ownerReferences": wl["metadata"]["ownerReferences"], "finalizers": wl["metadata"].get("finalizers"), "conditions": conds(wl), "admission": wl["status"].get("admission")})
        assert kube.job(ns, "train").spec.suspend is False, "job 2 was not started from the kept admission"
        assert took < 10, f"job 2 waited {took:.1f}s"
        assert [r["uid"] for r in wl["metadata"]["ownerReferences"] if r.get("controller")] == [job2.metadata.uid]
        assert condition(wl, "Admitted")["lastTransitionTime"] == admitted_at, "the Workload was re-admitted"
        assert not seen_other_admitted and not is_true(workload_of(kube, ns, "Job", "other"), "QuotaReserved")
        assert sorted(w["metadata"]["name"] for w in workloads(kube, ns) if not is_true(w, "Finished")) == sorted(["train-wl", workload_of(kube, ns, "Job", "other")["metadata"]["name"]])

        # a Job whose containers differ from the Workload's podSets (e.g. FINETUNE_ATTEMPT=1 in
        # the env) is out of sync: Kueue finishes the Workload, the quota is gone
        kube.batch.delete_namespaced_job("train", ns, propagation_policy="Background")
        Kube.wait(lambda: kube.job(ns, "train") is None, "job 2 gone", 30)
        body = job_body("train", labels=labels)
        body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "FINETUNE_ATTEMPT", "value": "2"}]
        kube.batch.create_namespaced_job(ns, body)
        wl = Kube.wait(lambda: (w := get(kube, "workloads", "train-wl", ns)) and is_true(w, "Finished") and w, "the out-of-sync Workload finished", 30)
        report("Workload after a Job with a different container env", conds(wl))
        assert condition(wl, "Finished")["reason"] == "OutOfSync"
        Kube.wait(lambda: is_true(workload_of(kube, ns, "Job", "other"), "Admitted"), "the competing Job admitted on the freed quota", 60)


def test_user_suspend_of_an_admitted_job_and_workload_deactivation(kube: Kube, kueue: Kueue, kube_namespace: str) -> None:
    """Job.spec.suspend=true on an admitted Job: does Kueue unsuspend it again (flip-flop)?
    Workload.spec.active=false instead: Kueue evicts, suspends the Job and releases the quota."""
    ns = kube_namespace
    with cluster_queue(kube, ns, {"cpu": "1", "memory": "1Gi"}):
        kube.batch.create_namespaced_job(ns, job_body("sus"))
        Kube.wait(lambda: kube.job(ns, "sus").spec.suspend is False, "admitted and unsuspended", 60)
        kube.batch.patch_namespaced_job("sus", ns, {"spec": {"suspend": True}})
        seen = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8:
            seen.append(kube.job(ns, "sus").spec.suspend)
            time.sleep(0.25)
        wl = workload_of(kube, ns, "Job", "sus")
        flips = sum(1 for a, b in itertools.pairwise(seen) if a != b)
        report("Job.spec.suspend samples after the user set it", {"samples": seen, "flips": flips, "workload": conds(wl)})
        assert seen[-1] is False, "expected Kueue to unsuspend a suspended Job whose Workload stays admitted (the flip-flop)"

        assert wl is not None
        kube.custom.patch_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", ns, "workloads", wl["metadata"]["name"], {"spec": {"active": False}})
        Kube.wait(lambda: kube.job(ns, "sus").spec.suspend is True, "Job suspended by Kueue after deactivation", 30)
        wl = Kube.wait(lambda: (w := workload_of(kube, ns, "Job", "sus")) and not is_true(w, "QuotaReserved") and w, "quota released", 30)
        report("Workload after spec.active=false", conds(wl))
        time.sleep(3)
        assert kube.job(ns, "sus").spec.suspend is True, "the Job stays suspended while the Workload is inactive"
        kube.custom.patch_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", ns, "workloads", wl["metadata"]["name"], {"spec": {"active": True}})
        Kube.wait(lambda: kube.job(ns, "sus").spec.suspend is False, "Job resumed after reactivation", 60)
        report("Workload after spec.active=true", conds(workload_of(kube, ns, "Job", "sus")))




def test_prebuilt_workload_outlives_a_failed_worker_only_if_the_job_does_not_fail(kube: Kube, kueue: Kueue, kube_namespace: str) -> None:
    """Kueue finishes a Job's Workload when the Job gets the Failed condition (the operator's
    Jobs do: backoffLimit 0, or podFailurePolicy FailJob), and a finished Workload is never
    admitted again. A Job whose pod failures are `Ignore`d by its podFailurePolicy does not
    fail: the operator can delete it on the first failed pod and the next Job adopts the
    still-admitted Workload."""
    ns = kube_namespace
    with cluster_queue(kube, ns, {"cpu": "2", "memory": "1Gi"}):
        owner = kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "stand-in-ftj"}})

        def run(name: str, policy: dict[str, Any] | None) -> dict[str, Any]:
            body = job_body(name, labels={PREBUILT_WORKLOAD_LABEL: f"{name}-wl"})
            if policy is not None:
                body["spec"]["podFailurePolicy"] = policy
            dry = kube.batch.create_namespaced_job(ns, body, dry_run="All")
            create(kube, "workloads", prebuilt_workload(f"{name}-wl", owner, kube.api.sanitize_for_serialization(dry.spec.template.spec)), ns)
            Kube.wait(lambda: is_true(get(kube, "workloads", f"{name}-wl", ns), "Admitted"), f"{name}-wl admitted", 60)
            kube.batch.create_namespaced_job(ns, body)
            Kube.wait(lambda: kube.job(ns, name).spec.suspend is False, f"{name} started", 30)
            (pod,) = Kube.wait(lambda: [p for p in kube.pods(ns, f"job-name={name}") if p.status.phase == "Running"], f"{name}'s pod running", 60)
            kube.set_result(ns, pod.metadata.name, kwok.FAILED, exit_code=1)
            time.sleep(5)
            job = kube.job(ns, name)
            wl = get(kube, "workloads", f"{name}-wl", ns)
            report(f"{name}: after its pod failed (exit 1)", {"job conditions": [(c.type, c.status, c.reason) for c in (job.status.conditions or [])], "workload": conds(wl)})
            return wl

        failing = run("fails", None)  # backoffLimit 0
        assert is_true(failing, "Finished") and condition(failing, "Finished")["reason"] == "Failed"
        ignoring = run("ignores", {"rules": [{"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [0]}}]})
        assert is_true(ignoring, "Admitted") and not is_true(ignoring, "Finished")

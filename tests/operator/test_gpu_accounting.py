"""GPU time against the real API server: status.gpuSeconds counts each trainer pod once when it
ends, never goes down when pods are deleted, and a running job's live GPU time is a metric (no
status write for it)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from finetune_operator import constants as c

from tests.cluster import kwok
from tests.cluster.cluster import ControlPlane
from tests.operator.cluster_support import Kube, OperatorProcess
from tests.operator.helpers import minimal_spec
from tests.support import metrics as prom

pytestmark = pytest.mark.cluster
ct = c.contract


def test_gpu_seconds_count_ended_pods_once_and_survive_their_deletion(kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str) -> None:
    ns, name = kube_namespace, "metered-gpus"
    kube.create_ftj(ns, name, minimal_spec(resources={"nodes": 2, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"}))
    kube.pass_validation(ns, name)
    pods = kube.wait_running_pods(ns, name, 2, attempt=0)
    kube.wait_phase(ns, name, "Running")
    assert kube.wait(lambda: prom.value(ftop.metrics(), "finetune_operator_running_gpus") == 2.0, "2 GPUs reported running", 30)
    live = prom.value(ftop.metrics(), "finetune_operator_running_gpu_seconds")
    time.sleep(2)
    assert (prom.value(ftop.metrics(), "finetune_operator_running_gpu_seconds") or 0) > (live or 0), "the live GPU time does not move"
    assert not kube.status(ns, name).get("gpuSeconds"), "running pods were counted before they ended"

    # Worker 1 ends first and its pod is deleted; rank 0 stays (its summary is the job's result).
    second, first = sorted(pods, key=lambda p: p.metadata.annotations[ct.ANNOTATION_JOB_COMPLETION_INDEX])
    kube.set_result(ns, first.metadata.name, kwok.SUCCEEDED)
    st = kube.wait(lambda: (s := kube.status(ns, name)).get("gpuSeconds") and s, "the ended pod's GPU time in the status", 30)
    counted = st["gpuSeconds"]
    assert st["gpuCountedPods"] == [first.metadata.uid]
    # The ended pod is deleted (as a cleanup or a node drain would): its time stays.
    kube.core.delete_namespaced_pod(first.metadata.name, ns, grace_period_seconds=0)
    kube.wait(lambda: all(p.metadata.name != first.metadata.name for p in kube.trainer_pods(ns, name)), "the ended pod gone", 30)
    time.sleep(1.5)  # the pod's deletion is an event the operator reconciles
    assert kube.status(ns, name)["gpuSeconds"] == counted
    kube.set_result(ns, second.metadata.name, kwok.SUCCEEDED)
    counted_both = kube.wait(lambda: len((s := kube.status(ns, name)).get("gpuCountedPods") or []) == 2 and s, "both pods counted", 60)
    assert counted_both["gpuSeconds"] >= counted

    def finish() -> dict[str, Any] | None:
        # The Job controller replaces the deleted worker (its index was not recorded as done yet):
        # that pod runs too, and is counted too.
        for p in kube.trainer_pods(ns, name):
            if p.status.phase == "Running":
                kube.set_result(ns, p.metadata.name, kwok.SUCCEEDED)
        st = kube.status(ns, name)
        return st if st.get("phase") == "Succeeded" else None

    done: dict[str, Any] = kube.wait(finish, "the job to succeed", 90, lambda: kube.status(ns, name), interval=1.0)
    assert done["gpuSeconds"] >= counted_both["gpuSeconds"]
    assert {first.metadata.uid, second.metadata.uid} <= set(done["gpuCountedPods"])
    assert kube.wait(lambda: prom.value(ftop.metrics(), "finetune_operator_running_gpus") == 0.0, "no GPUs running", 30)

"""Leadership against the real API server: replicas elect one leader through a Lease; a standby
never writes; a leader that is paused past its Lease is fenced and exits. Every write is taken
from the API server's own audit log (user agent = finetune-operator/<identity>), not from the
operator's logs."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from finetune_operator import constants as c

from tests.cluster.cluster import ControlPlane
from tests.operator.cluster_support import OPERATOR_NAMESPACE, Kube, OperatorProcess
from tests.operator.helpers import minimal_spec

pytestmark = pytest.mark.cluster
ct = c.contract


def small() -> dict[str, Any]:
    return minimal_spec(resources={"nodes": 1, "gpusPerNode": 0, "cpu": "1", "memory": "1Gi"})


def api_now() -> str:
    """Now, in the audit log's format (the API server runs on this machine: one clock)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_holder(kube: Kube) -> str:
    from kubernetes import client as k8s

    lease = k8s.CoordinationV1Api(kube.api).read_namespaced_lease(c.LEASE_NAME, OPERATOR_NAMESPACE)
    return str(lease.spec.holder_identity or "")


def test_a_standby_never_writes_and_takes_over_at_once_when_the_leader_leaves(
    kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    standby = OperatorProcess(kube_cluster, tmp_path)
    standby.start(wait_leader=False)
    try:
        assert lease_holder(kube) == ftop.identity and not standby.is_leader()
        kube.create_ftj(ns, "led", small())
        kube.pass_validation(ns, "led")
        kube.wait(lambda: kube.status(ns, "led").get("phase") in ("Initializing", "Running"), "led past validation")
        assert ftop.writes(kube_cluster), "the audit log recorded no write of the leader"
        assert standby.writes(kube_cluster) == [], "the standby wrote"
        assert "finetune_operator_leader 0.0" in standby.metrics()
        # The leader shuts down cleanly: it releases the Lease, so the standby takes over within a
        # retry period or two, not a whole lease duration (8 s here).
        t0 = time.monotonic()
        assert ftop.proc is not None
        ftop.proc.terminate()  # SIGTERM, as the kubelet sends it
        Kube.wait(standby.is_leader, "the standby to take over", 30, standby.tail, interval=0.1)
        took = time.monotonic() - t0
        ftop.stop()
        assert took < 5, f"takeover after a release took {took:.1f} s (the Lease lasts 8 s: was it released?)"
        assert lease_holder(kube) == standby.identity
        kube.create_ftj(ns, "taken-over", small())
        kube.wait_phase(ns, "taken-over", "Validating", 60)
        assert any(e["objectRef"].get("name") == "taken-over" for e in standby.writes(kube_cluster))
        print(f"takeover after the leader released the Lease: {took:.2f} s")
    finally:
        standby.stop()
        ftop.start()


def test_a_leader_paused_past_its_lease_is_fenced_and_exits(
    kube: Kube, ftop: OperatorProcess, kube_cluster: ControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    """SIGSTOP the leader (a frozen node): the standby takes the expired Lease and acts. The old
    leader wakes with its caches and queued work, writes nothing at all, and exits with code 1."""
    ns = kube_namespace
    old = ftop
    standby = OperatorProcess(kube_cluster, tmp_path)
    standby.start(wait_leader=False)
    try:
        kube.create_ftj(ns, "before-pause", small())
        kube.wait_phase(ns, "before-pause", "Validating", 60)
        old.pause()
        Kube.wait(standby.is_leader, "the standby to take the expired Lease", 60, standby.tail)
        # Work the paused replica will see when it wakes (watch events in its socket buffers).
        kube.create_ftj(ns, "during-pause", small())
        kube.wait_phase(ns, "during-pause", "Validating", 60)
        resumed_at = api_now()
        old.resume()
        assert old.proc is not None
        try:
            code: int | None = old.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        late = old.writes(kube_cluster, since=resumed_at)
        assert late == [], f"the fenced leader wrote after it woke: {[(e['verb'], e['objectRef']) for e in late]}"
        assert code == 1, f"the fenced leader did not exit with 1 ({code}):\n{old.tail()}"
        assert "lost the lease" in old.tail(200)
        assert standby.writes(kube_cluster), "the new leader wrote nothing"
        kube.pass_validation(ns, "during-pause")
        kube.wait(lambda: kube.status(ns, "during-pause").get("phase") in ("Initializing", "Running"), "the new leader carries on")
    finally:
        standby.stop()
        old.start()

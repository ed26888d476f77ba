"""Chaos: the operator SIGKILLed at the write boundaries of a restart, SIGKILLed at random during
a burst, and its leadership moved between two replicas during a burst. Against the real API
server and Job controller, kwok playing the nodes and this module playing the containers.

Every figure is printed (`make chaos` shows them); the assertions are the invariants:
no duplicate Job for one attempt, no restart lost or counted twice, maxRestarts enforced, every
job in its expected terminal phase, attempts never going backwards, at most one writer at a time
(taken from the API server's audit log, which names the replica behind each write).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finetune_operator import constants as c
from kubernetes import client as k8s
from kubernetes import watch

from tests.cluster import kwok
from tests.cluster.cluster import ControlPlane
from tests.operator.cluster_support import Kube, OperatorProcess
from tests.operator.helpers import minimal_spec

pytestmark = pytest.mark.cluster
ct = c.contract

FAIL_FIRST, FAIL_ALWAYS = 0, 1  # job index % 4: the two failing kinds; 2 and 3 succeed at once
MAX_RESTARTS = 2


def spec(max_restarts: int = MAX_RESTARTS) -> dict[str, Any]:
    spec = minimal_spec(resources={"nodes": 1, "gpusPerNode": 0, "cpu": "10m", "memory": "16Mi"})
    spec["maxRestarts"] = max_restarts
    return spec


def index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def expected(name: str) -> tuple[str, int]:
    """(terminal phase, restarts) a burst job must end with."""
    kind = index(name) % 4
    if kind == FAIL_FIRST:
        return c.PHASE_SUCCEEDED, 1
    if kind == FAIL_ALWAYS:
        return c.PHASE_FAILED, MAX_RESTARTS
    return c.PHASE_SUCCEEDED, 0


def burst_result(pod: Any) -> tuple[str, int | None]:
    labels = pod.metadata.labels or {}
    if labels.get(ct.LABEL_COMPONENT) == ct.COMPONENT_VALIDATOR:
        return kwok.SUCCEEDED, None
    kind = index(labels[ct.LABEL_JOB_NAME]) % 4
    attempt = int(labels.get(ct.LABEL_ATTEMPT, "0"))
    if kind == FAIL_ALWAYS or (kind == FAIL_FIRST and attempt == 0):
        return kwok.FAILED, ct.EXIT_TRAINING_ERROR
    return kwok.SUCCEEDED, None


class Background(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as err:  # reported by the test
            self.error = err

    def loop(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        if self.error is not None:
            raise self.error


class Kubelet(Background):
    """Plays every container: once a pod runs, it is finished with the result `decide` picks."""

    def __init__(self, api: Any, ns: str, decide: Callable[[Any], tuple[str, int | None]]) -> None:
        super().__init__()
        self.core, self.ns, self.decide = k8s.CoreV1Api(api), ns, decide
        self.done: set[str] = set()

    def loop(self) -> None:
        while not self.stop.is_set():
            for pod in self.core.list_namespaced_pod(self.ns).items:
                if pod.status.phase != "Running" or pod.metadata.uid in self.done or pod.metadata.deletion_timestamp:
                    continue
                result, code = self.decide(pod)
                try:
                    kwok.set_pod_result(self.core, self.ns, pod.metadata.name, result, exit_code=code)
                except k8s.ApiException as err:
                    if err.status != 404:
                        raise
                self.done.add(pod.metadata.uid)
            self.stop.wait(0.3)


class Ledger(Background):
    """Watches Jobs and FineTuneJobs: every Job UID seen per (job, attempt), and every
    status.attempt seen per FineTuneJob, in order."""

    def __init__(self, api: Any, ns: str) -> None:
        super().__init__()
        self.api, self.ns = api, ns
        self.jobs: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.attempts: dict[str, list[int]] = defaultdict(list)
        self.backwards: list[tuple[str, list[int]]] = []

    def loop(self) -> None:
        batch, custom = k8s.BatchV1Api(self.api), k8s.CustomObjectsApi(self.api)
        threads = [
            threading.Thread(target=self._watch, args=(batch.list_namespaced_job, (self.ns,), self._job), daemon=True),
            threading.Thread(target=self._watch, args=(custom.list_namespaced_custom_object, (ct.GROUP, ct.VERSION, self.ns, ct.PLURAL_JOB), self._ftj), daemon=True),
        ]
        for t in threads:
            t.start()
        self.stop.wait()

    def _watch(self, lister: Callable[..., Any], args: tuple[Any, ...], on: Callable[[Any], None]) -> None:
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(lister, *args, timeout_seconds=5):
                    on(event["object"])
                    if self.stop.is_set():
                        break
            except Exception as err:  # a watch that expired (410) or dropped: list again
                if self.stop.is_set():
                    return
                time.sleep(0.2)
                if not isinstance(err, (k8s.ApiException, OSError, ValueError)):
                    self.error = err
                    return

    def _job(self, job: Any) -> None:
        labels = job.metadata.labels or {}
        self.jobs[(labels.get(ct.LABEL_JOB_NAME, ""), labels.get(ct.LABEL_ATTEMPT, ""))].add(job.metadata.uid)

    def _ftj(self, obj: dict[str, Any]) -> None:
        attempt = (obj.get("status") or {}).get("attempt")
        if attempt is None:
            return
        seen = self.attempts[obj["metadata"]["name"]]
        if seen and attempt < seen[-1]:
            self.backwards.append((obj["metadata"]["name"], [*seen, attempt]))
        if not seen or seen[-1] != attempt:
            seen.append(attempt)

    def duplicates(self) -> dict[tuple[str, str], set[str]]:
        return {k: v for k, v in self.jobs.items() if len(v) > 1}


def create_burst(kube: Kube, ns: str, count: int, prefix: str) -> list[str]:
    names = [f"{prefix}-{i:03d}" for i in range(count)]
    for name in names:
        kube.create_ftj(ns, name, spec())
    return names


def wait_terminal(kube: Kube, ns: str, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    def statuses() -> dict[str, dict[str, Any]]:
        items = kube.custom.list_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB)["items"]
        return {i["metadata"]["name"]: i.get("status") or {} for i in items}

    def done() -> dict[str, dict[str, Any]] | None:
        st = statuses()
        return st if all(st.get(n, {}).get("phase") in c.TERMINAL_PHASES for n in names) else None

    def show() -> str:
        st = statuses()
        return str(Counter(s.get("phase") for s in st.values()))

    return kube.wait(done, "every job in a terminal phase", timeout, show, interval=1.0)  # type: ignore[no-any-return]


def check_outcomes(statuses: dict[str, dict[str, Any]], names: list[str]) -> tuple[list[str], list[str]]:
    """(jobs in the wrong phase, jobs with a restart lost or counted twice)."""
    wrong, lost = [], []
    for name in names:
        phase, restarts = expected(name)
        st = statuses[name]
        if st.get("phase") != phase:
            wrong.append(f"{name}: {st.get('phase')} ({st.get('message')}), expected {phase}")
        if st.get("restarts", 0) != restarts or st.get("attempt", 0) != restarts:
            lost.append(f"{name}: restarts {st.get('restarts')} attempt {st.get('attempt')}, expected {restarts}")
    return wrong, lost


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


# --- 1. SIGKILL at each write boundary of a restart ------------------------------------------------------
@pytest.mark.parametrize("failpoint", ["restart-recorded", "restart-deleted"])
def test_sigkill_at_a_restart_boundary_counts_the_restart_once(
    failpoint: str, chaos_cluster: ControlPlane, chaos_kube: Kube, chaos_namespace: str, tmp_path: Path
) -> None:
    """The operator kills itself (SIGKILL) at the failpoint: once the restart's status (and its
    event) is written but before the failed attempt's Job is deleted, or right after the delete.
    A new replica converges: restarts counted once, no attempt number reused, maxRestarts holds."""
    ns, name = chaos_namespace, "boundary-000"
    kube = chaos_kube
    op = OperatorProcess(chaos_cluster, tmp_path)
    ledger = Ledger(chaos_cluster.api_client(), ns)
    ledger.start()
    kubelet = Kubelet(chaos_cluster.api_client(), ns, lambda pod: (kwok.SUCCEEDED, None) if pod.metadata.labels.get(ct.LABEL_COMPONENT) == ct.COMPONENT_VALIDATOR else (kwok.FAILED, ct.EXIT_TRAINING_ERROR))
    kubelet.start()
    try:
        op.start(env={"FINETUNE_OPERATOR_FAILPOINTS": failpoint})
        kube.create_ftj(ns, name, spec(max_restarts=1))
        assert op.proc is not None
        code = op.proc.wait(120)
        assert code == -signal.SIGKILL and f"failpoint {failpoint} reached" in op.tail(200), op.tail()
        crashed = kube.status(ns, name)
        op.start()  # a new process, no failpoint: waits out the dead one's Lease, then converges
        st = kube.wait(lambda: (s := kube.status(ns, name)).get("phase") == c.PHASE_FAILED and s, "the job to fail past maxRestarts", 120, lambda: kube.status(ns, name))
        failed = next(x for x in st["conditions"] if x["type"] == "Failed")
        assert failed["reason"] == c.REASON_RESTART_LIMIT_EXCEEDED, failed
        assert st["restarts"] == 1 and st["attempt"] == 1, st
        events = [e.message for e in kube.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items if e.reason == c.REASON_RESTARTING]
        # the restart's Warning (and its phase change) posted once each, neither lost nor repeated
        assert len([m for m in events if m.startswith("attempt 0 failed")]) == 1, events
        assert len(events) == len(set(events)), events
    finally:
        kubelet.finish()
        ledger.finish()
        op.stop()
    assert ledger.duplicates() == {}, ledger.duplicates()
    assert sorted(a for (_, a) in ledger.jobs) == ["0", "1"], dict(ledger.jobs)
    assert ledger.backwards == [] and ledger.attempts[name] == [0, 1], ledger.attempts[name]
    print(f"\n[chaos] SIGKILL at {failpoint}: status when killed: attempt {crashed.get('attempt')}, restarts {crashed.get('restarts')}; "
          f"after restart: restarts 1, attempts seen {ledger.attempts[name]}, Jobs per attempt {[len(v) for v in ledger.jobs.values()]}")


# --- 2. random SIGKILLs during a burst with failures ---------------------------------------------------------
JOBS = int(os.environ.get("CHAOS_JOBS", "200"))
KILLS = int(os.environ.get("CHAOS_KILLS", "50"))


def test_random_sigkills_during_a_burst_lose_nothing(chaos_cluster: ControlPlane, chaos_kube: Kube, chaos_namespace: str, tmp_path: Path) -> None:
    ns, kube = chaos_namespace, chaos_kube
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "7")))
    op = OperatorProcess(chaos_cluster, tmp_path)
    ledger = Ledger(chaos_cluster.api_client(), ns)
    kubelet = Kubelet(chaos_cluster.api_client(), ns, burst_result)
    ledger.start()
    kubelet.start()
    t0 = time.monotonic()
    try:
        op.start(extra=("--standalone",))  # crash consistency here; leadership is test 3
        names = create_burst(kube, ns, JOBS, "burst")
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 3.0))
            op.kill()
            op.start(extra=("--standalone",))
        killed_for = time.monotonic() - t0
        statuses = wait_terminal(kube, ns, names, 600)
    finally:
        kubelet.finish()
        ledger.finish()
        op.stop()
    took = time.monotonic() - t0
    wrong, lost = check_outcomes(statuses, names)
    dups = ledger.duplicates()
    print(f"\n[chaos] {JOBS} jobs, {KILLS} SIGKILLs over {killed_for:.0f} s, all terminal after {took:.0f} s ({load()}): "
          f"{len(dups)} duplicate Jobs, {len(lost)} lost/double restarts, {len(wrong)} wrong phases, "
          f"{len(ledger.backwards)} attempts backwards; phases {dict(Counter(s.get('phase') for s in statuses.values()))}")
    assert dups == {}, dups
    assert lost == [], lost[:10]
    assert wrong == [], wrong[:10]
    assert ledger.backwards == [], ledger.backwards[:10]


# --- 3. leadership moved 20 times between two replicas during a burst ----------------------------------------
MOVES = int(os.environ.get("CHAOS_MOVES", "20"))


def test_leadership_moves_keep_one_writer_and_lose_nothing(chaos_cluster: ControlPlane, chaos_kube: Kube, chaos_namespace: str, tmp_path: Path) -> None:
    ns, kube = chaos_namespace, chaos_kube
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    replicas = [OperatorProcess(chaos_cluster, tmp_path / "a"), OperatorProcess(chaos_cluster, tmp_path / "b")]
    ledger = Ledger(chaos_cluster.api_client(), ns)
    kubelet = Kubelet(chaos_cluster.api_client(), ns, burst_result)
    identities: list[str] = []
    takeovers: list[float] = []
    ledger.start()
    kubelet.start()
    t0 = time.monotonic()
    try:
        replicas[0].start()
        replicas[1].start(wait_leader=False)
        identities += [r.identity for r in replicas]
        names = create_burst(kube, ns, JOBS // 2, "moved")
        def current_leader() -> OperatorProcess | None:
            for r in replicas:
                if r.proc is None or r.proc.poll() is not None:
                    r.start(wait_leader=False)  # a replica that exited comes back, as its pod would
                    identities.append(r.identity)
            return next((r for r in replicas if r.is_leader()), None)

        for move in range(MOVES):
            time.sleep(1.0)
            leader = Kube.wait(current_leader, f"move {move + 1}: a leader", 60)
            standby = next(r for r in replicas if r is not leader)
            t = time.monotonic()
            assert leader.proc is not None
            if move % 2 == 0:
                leader.proc.terminate()  # SIGTERM: releases the Lease
            else:
                leader.kill()  # SIGKILL: the standby waits out the Lease
            Kube.wait(standby.is_leader, f"move {move + 1}: the standby to take over", 60, standby.tail, interval=0.1)
            takeovers.append(time.monotonic() - t)
            leader.stop()
            leader.start(wait_leader=False)  # back as the standby (as its pod would restart)
            identities.append(leader.identity)
        statuses = wait_terminal(kube, ns, names, 600)
    finally:
        kubelet.finish()
        ledger.finish()
        for r in replicas:
            r.stop()
    took = time.monotonic() - t0
    # Writes from the API server's audit log, by replica identity (one identity per process).
    agents = {f"{c.FIELD_MANAGER}/{i}": i for i in identities}
    writes = sorted(
        ((e["requestReceivedTimestamp"], agents[e["userAgent"]]) for e in chaos_cluster.audit_events()
         if e.get("userAgent") in agents and e.get("objectRef", {}).get("resource") != "leases"),
        key=lambda w: w[0],
    )
    spans: dict[str, list[str]] = {}
    for stamp, who in writes:
        spans.setdefault(who, [stamp, stamp])[1] = stamp
    ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
    overlaps = [(a, b) for (a, sa), (b, sb) in itertools.pairwise(ordered) if sb[0] <= sa[1]]
    wrong, lost = check_outcomes(statuses, names)
    dups = ledger.duplicates()
    per_writer = Counter(who for _, who in writes)
    print(f"\n[chaos] {len(names)} jobs, {MOVES} leadership moves (SIGTERM/SIGKILL alternating), all terminal after {took:.0f} s ({load()}): "
          f"takeover after release median {sorted(takeovers[0::2])[len(takeovers[0::2]) // 2]:.1f} s, after a kill median "
          f"{sorted(takeovers[1::2])[len(takeovers[1::2]) // 2]:.1f} s; {len(writes)} writes by {len(spans)} replicas "
          f"(max {max(per_writer.values())} by one), {len(overlaps)} overlapping writer spans, {len(dups)} duplicate Jobs, "
          f"{len(lost)} lost/double restarts, {len(ledger.backwards)} attempts backwards")
    assert overlaps == [], overlaps
    assert dups == {}, dups
    assert ledger.backwards == [], ledger.backwards[:10]
    assert lost == [], lost[:10]
    assert wrong == [], wrong[:10]

"""The leader Lease rules (`finetune_operator.leader`) against an in-memory Lease store with the
API server's optimistic concurrency (resourceVersion on every update), and a hand-moved clock.
The same elector runs against the real API server in test_leadership.py."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from finetune_operator.kube import Kube, NotLeader
from finetune_operator.leader import LeaderElector


class LeaseStore:
    """One Lease, with resourceVersion checks as the API server does them."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.writes: list[str] = []  # holder of every successful write
        self.reads = 0

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return copy.deepcopy(self.obj)

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> str:
        if self.obj is not None:
            return ""
        return self._store(spec)

    async def replace_lease(self, namespace: str, name: str, spec: dict[str, Any], resource_version: str) -> str:
        if self.obj is None or self.obj["metadata"]["resourceVersion"] != resource_version:
            return ""
        return self._store(spec)

    def _store(self, spec: dict[str, Any]) -> str:
        self.version += 1
        self.obj = {"metadata": {"resourceVersion": str(self.version)}, "spec": copy.deepcopy(spec)}
        self.writes.append(spec["holderIdentity"])
        return str(self.version)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: LeaseStore, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(store, "ns", "lease", identity, lease_seconds=15, renew_deadline=10, retry_period=2, clock=clock)  # type: ignore[arg-type]


def test_first_candidate_creates_the_lease_and_a_second_waits_it_out() -> None:
    async def go() -> None:
        store, clock = LeaseStore(), Clock()
        a, b = elector(store, clock, "a"), elector(store, clock, "b")
        assert await a.try_acquire_or_renew() and a.is_leader()
        assert not await b.try_acquire_or_renew()  # first sight of a's record starts b's count
        clock.now += 8
        assert not await b.try_acquire_or_renew(), "took a lease that had not expired"
        assert await a.try_acquire_or_renew()  # a renews within its deadline: the record changes
        clock.now += 8
        assert not await b.try_acquire_or_renew()  # 16 s since b's first sight, but a new record
        clock.now += 2
        assert not a.is_leader(), "a counts itself leader past its renew deadline"
        clock.now += 12
        assert not await b.try_acquire_or_renew(), "took the lease before a whole duration of silence"
        clock.now += 1.5
        assert await b.try_acquire_or_renew() and b.is_leader()
        spec = store.obj["spec"] if store.obj else {}
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
        assert store.writes == ["a", "a", "b"]

    asyncio.run(go())


def test_a_leader_past_its_renew_deadline_never_resumes_on_its_own_record() -> None:
    """A replica paused (SIGSTOP) past its deadline finds its own name in the Lease: it must not
    renew and carry on, a standby may be about to take over."""

    async def go() -> None:
        store, clock = LeaseStore(), Clock()
        a = elector(store, clock, "a")
        assert await a.try_acquire_or_renew()
        clock.now += 11
        assert not a.is_leader()
        assert not await a.try_acquire_or_renew()
        assert store.writes == ["a"]

    asyncio.run(go())


def test_a_renewal_is_one_conditional_write_and_never_overrides_another_writer() -> None:
    async def go() -> None:
        store, clock = LeaseStore(), Clock()
        a = elector(store, clock, "a")
        assert await a.try_acquire_or_renew()
        reads = store.reads
        clock.now += 2
        assert await a.try_acquire_or_renew()
        assert store.reads == reads and store.writes == ["a", "a"], "a renewal read the lease first"
        # someone else wrote the lease meanwhile (an admin handing it over): the conditional
        # write fails, the renewal reads, and a does not take it back
        assert store.obj is not None
        await store.replace_lease("ns", "lease", {**store.obj["spec"], "holderIdentity": "b"}, store.obj["metadata"]["resourceVersion"])
        clock.now += 2
        assert not await a.try_acquire_or_renew()
        assert store.obj["spec"]["holderIdentity"] == "b"

    asyncio.run(go())


def test_a_released_lease_is_taken_at_once() -> None:
    async def go() -> None:
        store, clock = LeaseStore(), Clock()
        a, b = elector(store, clock, "a"), elector(store, clock, "b")
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        await a.release()
        assert not a.is_leader()
        assert await b.try_acquire_or_renew(), "a released lease waited for its expiry"

    asyncio.run(go())


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win() -> None:
    async def go() -> None:
        store, clock = LeaseStore(), Clock()
        a, b, old = elector(store, clock, "a"), elector(store, clock, "b"), elector(store, clock, "old")
        assert await old.try_acquire_or_renew()
        assert not await a.try_acquire_or_renew() and not await b.try_acquire_or_renew()
        clock.now += 16
        won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        assert sorted(won) == [False, True]
        assert a.is_leader() != b.is_leader()

    asyncio.run(go())


def test_hold_returns_when_renewals_stop_succeeding() -> None:
    """`hold` renews while it can and returns (the process then exits) once a renewal has not
    succeeded within the renew deadline."""

    class Failing(LeaseStore):
        fail = False

        async def replace_lease(self, namespace: str, name: str, spec: dict[str, Any], resource_version: str) -> str:
            if self.fail:
                raise OSError("API server unreachable")
            return await super().replace_lease(namespace, name, spec, resource_version)

    async def go() -> None:
        store = Failing()
        a = LeaderElector(store, "ns", "lease", "a", lease_seconds=0.6, renew_deadline=0.4, retry_period=0.05)  # type: ignore[arg-type]
        await a.acquire()
        holder = asyncio.create_task(a.hold())
        await asyncio.sleep(0.3)
        assert not holder.done() and a.is_leader() and len(store.writes) > 2, "renewals did not happen"
        store.fail = True
        assert await asyncio.wait_for(holder, 2) is True, "a lost lease must be reported as lost"
        assert not a.is_leader()

    asyncio.run(go())


def test_a_release_ends_hold_without_reporting_a_loss() -> None:
    """A clean shutdown releases the lease: `hold` must not take that for a loss (the process
    would exit with the lost-leadership code)."""

    async def go() -> None:
        store = LeaseStore()
        a = LeaderElector(store, "ns", "lease", "a", lease_seconds=0.6, renew_deadline=0.4, retry_period=0.05)  # type: ignore[arg-type]
        await a.acquire()
        holder = asyncio.create_task(a.hold())
        await asyncio.sleep(0.1)
        await a.release()
        assert await asyncio.wait_for(holder, 2) is False
        assert store.obj is not None and store.obj["spec"]["holderIdentity"] == ""

    asyncio.run(go())


def test_the_fence_refuses_writes_before_sending_them() -> None:
    async def go() -> None:
        leader = {"now": False}

        def credentials() -> Any:
            raise AssertionError("a fenced write must not even open a connection")

        kube = Kube(credentials=credentials, fence=lambda: leader["now"])
        with pytest.raises(NotLeader):
            await kube.patch_status("ns", "job", {"phase": "Failed"})
        with pytest.raises(NotLeader):
            await kube.apply({"kind": "Job", "metadata": {"name": "j", "namespace": "ns"}})

    asyncio.run(go())


def test_settings_must_leave_a_standby_time_to_notice() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        LeaderElector(LeaseStore(), "ns", "lease", "a", lease_seconds=10, renew_deadline=10, retry_period=2)  # type: ignore[arg-type]

"""Leadership: one acting replica, elected through a `coordination.k8s.io/v1` Lease.

The rules are client-go's `leaderelection` (what controller-runtime managers use):

- A candidate takes the Lease when it does not exist, when its holder released it (empty
  holder), or when the record (holder, renewTime) has not changed for `leaseDurationSeconds` as
  measured on the candidate's own monotonic clock (never by comparing another machine's
  timestamps with ours, so clock skew cannot hand the lease over early). Every write carries the
  resourceVersion it read: two candidates can never both win the same round.
- The leader renews every `retry_period`. It counts as leader only while its last successful
  renewal *started* less than `renew_deadline` ago (`is_leader`), which is shorter than the lease
  duration a standby waits: the leader stops writing (the API client refuses, see
  `Kube(fence=...)`) before a standby can take over. When a renewal has not succeeded within the
  deadline, `hold` returns and the process exits (`main`): a replica that lost the lease, or was
  paused (SIGSTOP, a frozen node) past it, never acts on what it saw before.
- On a clean shutdown the leader releases the Lease (empty holder), so the standby takes over
  within one retry period instead of a whole lease duration.

A standby never starts the watches or the reconciler, so it holds no cache that could be stale
when it takes over: it starts from a fresh list of every object.

`LeaseThread` runs the elector on its own thread and event loop: renewals never wait behind the
operator's own work (a burst, or the first listing of thousands of jobs, keeps the main event
loop busy for seconds at a time), as client-go runs them on their own goroutine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from finetune_operator.kube import Kube, KubeError

log = logging.getLogger(__name__)

LEASE_SECONDS = 15.0
RENEW_DEADLINE_SECONDS = 10.0
RETRY_PERIOD_SECONDS = 2.0


def micro_time(value: datetime) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds)."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration: float
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or LEASE_SECONDS),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""),
        )


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float = LEASE_SECONDS,
        renew_deadline: float = RENEW_DEADLINE_SECONDS,
        retry_period: float = RETRY_PERIOD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not retry_period < renew_deadline < lease_seconds:
            raise ValueError(f"need retry period < renew deadline < lease duration, got {retry_period} / {renew_deadline} / {lease_seconds}")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock = clock
        self._wall = wall_clock or (lambda: datetime.now(timezone.utc))
        #: The record last read and when (our monotonic clock) it was first seen.
        self._observed: tuple[str, str | None] | None = None
        self._observed_at = 0.0
        #: When the last successful acquire/renew started (monotonic); None: never the leader.
        self._renewed_at: float | None = None
        self.transitions = 0
        #: Set by `release`: renewals stop and `hold` returns without reporting a loss.
        self.stopping = False
        #: (acquireTime, transitions, resourceVersion) of the record this replica wrote last.
        self._mine: tuple[str, int, str] | None = None

    def is_leader(self) -> bool:
        """True while this replica may write: its last renewal started within the renew deadline."""
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.renew_deadline

    def _spec(self, acquire_time: str, transitions: int, now: datetime) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(int(self.lease_seconds), 1),
            "acquireTime": acquire_time,
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the lease afterwards."""
        started = self._clock()
        now = self._wall()
        if self._mine is not None and self.is_leader():
            # Renewal: one conditional PUT on the version this replica wrote last (a busy API
            # server answers one request sooner than two). Someone else wrote since: read below.
            acquired, transitions, version = self._mine
            written = await self.kube.replace_lease(self.namespace, self.name, self._spec(acquired, transitions, now), version)
            if written:
                self._won(started, transitions, written)
                return True
        obj = await self.kube.get_lease(self.namespace, self.name)
        if obj is None:
            acquired = micro_time(now)
            created = await self.kube.create_lease(self.namespace, self.name, self._spec(acquired, 0, now))
            if created:
                self._won(started, 0, created, acquired)
            return bool(created)
        rec = LeaseRecord.from_object(obj)
        seen = (rec.holder, rec.renew_time)
        if seen != self._observed:
            self._observed, self._observed_at = seen, started
        mine = rec.holder == self.identity
        if rec.holder and not mine and started - self._observed_at < rec.duration:
            return False  # held by a live leader
        if mine and not self.is_leader():
            # Our own record, but we are past our renew deadline (paused, or renewals failing):
            # a standby may already be counting towards taking over. Never resume silently.
            return False
        transitions = rec.transitions if mine else rec.transitions + 1
        acquired = (rec.acquire_time or micro_time(now)) if mine else micro_time(now)
        replaced = await self.kube.replace_lease(self.namespace, self.name, self._spec(acquired, transitions, now), rec.resource_version)
        if replaced:
            if not mine:
                log.info("lease %s/%s taken over from %r (transition %d)", self.namespace, self.name, rec.holder or "(released)", transitions)
            self._won(started, transitions, replaced, acquired)
        return bool(replaced)

    def _won(self, started: float, transitions: int, version: str, acquired: str | None = None) -> None:
        self._renewed_at = started
        self.transitions = transitions
        self._mine = (acquired or (self._mine[0] if self._mine else micro_time(self._wall())), transitions, version)
        self._observed = None  # our own write: the next read of it starts a fresh observation

    async def acquire(self) -> None:
        """Wait (as a standby) until this replica holds the lease."""
        log.info("waiting for lease %s/%s as %s", self.namespace, self.name, self.identity)
        while True:
            try:
                if await self.try_acquire_or_renew():
                    log.info("became the leader: lease %s/%s held by %s", self.namespace, self.name, self.identity)
                    return
            except (KubeError, OSError) as err:
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            await asyncio.sleep(self.retry_period * random.uniform(1.0, 1.2))

    async def hold(self) -> bool:
        """Renew until a renewal has not succeeded within the renew deadline. Returns True when
        the lease is lost (the caller must then stop acting at once), False after `release`."""
        while self.is_leader() and not self.stopping:
            await asyncio.sleep(self.retry_period)
            if self.stopping or self._renewed_at is None:
                break  # released meanwhile
            left = self.renew_deadline - (self._clock() - self._renewed_at)
            if left <= 0:
                break
            try:
                renewed = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=left)
            except (KubeError, OSError, TimeoutError) as err:
                log.warning("lease %s/%s not renewed: %s", self.namespace, self.name, err)
                continue
            if not renewed and self._observed is not None and self._observed[0] not in ("", self.identity):
                self._renewed_at = None  # another replica holds it now
                break
        if self.stopping:
            return False
        log.error("lost the lease %s/%s (%s)", self.namespace, self.name, self.identity)
        return True

    async def release(self) -> None:
        """Give the lease up on a clean shutdown, so that a standby takes over at once."""
        self.stopping = True
        if not self.is_leader():
            return
        self._renewed_at = None
        try:
            obj = await self.kube.get_lease(self.namespace, self.name)
            if obj is None:
                return
            rec = LeaseRecord.from_object(obj)
            if rec.holder != self.identity:
                return
            now = self._wall()
            spec = {
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": rec.acquire_time,
                "renewTime": micro_time(now),
                "leaseTransitions": rec.transitions,
            }
            if await self.kube.replace_lease(self.namespace, self.name, spec, rec.resource_version):
                self._mine = None
                log.info("released the lease %s/%s", self.namespace, self.name)
        except (KubeError, OSError) as err:
            log.warning("lease %s/%s not released (a standby takes over when it expires): %s", self.namespace, self.name, err)


class LeaseThread(threading.Thread):
    """The elector on a thread of its own. `acquired` is set once this replica leads; when the
    lease is lost the process exits at once with `exit_code` (writes are fenced already)."""

    def __init__(self, make_elector: Callable[[], LeaderElector], exit_code: int = 1) -> None:
        super().__init__(name="leader-election", daemon=True)
        self._make = make_elector
        self.exit_code = exit_code
        self.acquired = threading.Event()
        self.ready = threading.Event()
        self.elector: LeaderElector | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.elector = self._make()
        self.ready.set()
        self.loop.run_until_complete(self._lead())

    async def _lead(self) -> None:
        assert self.elector is not None
        await self.elector.acquire()
        self.acquired.set()
        if await self.elector.hold():
            log.error("leadership lost: exiting so that only the new leader acts")
            logging.shutdown()
            os._exit(self.exit_code)
        await self.elector.kube.close()

    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader()

    def release(self, timeout: float = 10.0) -> None:
        """Give the Lease up (blocking; call it off the main event loop)."""
        self.ready.wait(timeout)
        if self.loop is None or self.elector is None or self.elector.stopping or not self.loop.is_running():
            return  # never started, or released already (the thread's loop may be gone)
        future = asyncio.run_coroutine_threadsafe(self.elector.release(), self.loop)
        try:
            future.result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError) as err:
            log.warning("lease not released (a standby takes over when it expires): %r", err)

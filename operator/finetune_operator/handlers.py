"""kopf handlers: thin. Each one finds the FineTuneJob an event is about and queues it for the
reconciler's workers.

All kopf settings live in `configure` (the one startup hook): no kopf peering (leadership is a
Lease held before kopf starts, see `leader.py` and `main.run`), server-side label selectors (only the operator's own Jobs and pods are sent to it), progress
storage in annotations, no diff-base (the operator has no change-detecting handlers), watch
timeouts, no kopf-posted events, and the metrics server. Indexes keep small views of
FineTuneJobs, runtimes, Jobs and pods in memory so a reconcile reads no API objects. Periodic
work (resync, progress polling) is one loop each for all jobs, not a kopf timer per object,
which keeps thousands of jobs cheap.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import random
from typing import Any

import aiohttp
import kopf

from finetune_operator import constants as c
from finetune_operator.kube import Kube, login
from finetune_operator.progress import fetch_progress
from finetune_operator.reconcile import Indexes, Reconciler, ftj_record, runtime_record
from finetune_operator.resolve import OperatorConfig
from finetune_operator.views import job_view, pod_view

ct = c.contract
log = logging.getLogger(__name__)

MANAGED = {ct.LABEL_MANAGED_BY: ct.MANAGED_BY}
MANAGED_SELECTOR = f"{ct.LABEL_MANAGED_BY}={ct.MANAGED_BY}"
#: The child resources watched; the API server filters them by MANAGED_SELECTOR.
CHILD_RESOURCES = (("batch", "v1", "jobs"), ("v1", "pods"), ("v1", "configmaps"), ("v1", "services"))
RESYNC_SECONDS = 60.0
PROGRESS_SECONDS = 15.0
PROGRESS_CONCURRENCY = 16
LIST_CHUNK_SIZE = 500
TRIM_SECONDS = 10.0


class NoDiffBase(kopf.DiffBaseStorage):
    """No change detection. kopf builds a diff-base "essence" for every watch event (a deep copy
    of the whole body) for its on.create/update/field handlers; this operator has none (event and
    index handlers feed a level-triggered reconcile), so the copy is pure overhead: about a
    seventh of the operator's CPU in a 1000-job burst. Nothing is stored on the resources.
    `tests/operator/test_layering.py` fails if a change-detecting handler is ever added."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    options = memo.get("options") or {}
    # Only the Lease holder ever gets here (main.run); kopf's own peering would pause it again.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ct.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    for resource in CHILD_RESOURCES:
        # Server-side filtering: in a shared cluster the operator is sent its own Jobs and pods
        # only, not every pod of every workload (the handlers' `labels=` filter is client-side).
        settings.watching.label_selectors[resource] = MANAGED_SELECTOR
    settings.posting.enabled = False
    # The first listing comes in pages: thousands of kept jobs are never one response in memory.
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    settings.queueing.idle_timeout = 1.0  # per-object workers (and the bodies they hold) go away fast
    workers = int(options.get("api_workers", 32))
    # Every write asks the fence first (refused once this replica is past its Lease's renew
    # deadline); the identity names this replica in the API server's audit log.
    kube = Kube(concurrency=workers, fence=memo.get("fence"), identity=str(memo.get("identity") or ""))
    memo["reconciler"] = Reconciler(kube, operator_config(options), concurrency=workers)


def operator_config(options: dict[str, Any]) -> OperatorConfig:
    """The operator-wide settings from its parsed command line (`vars(parse_args())`)."""
    return OperatorConfig(
        default_image=str(options.get("default_image", c.DEFAULT_IMAGE)),
        default_runtime=options.get("default_runtime") or None,
        unconfirmed_deletion_seconds=float(options.get("unconfirmed_deletion_seconds", c.UNCONFIRMED_DELETION_SECONDS)),
        default_image_pull_secrets=tuple(n.strip() for n in str(options.get("image_pull_secrets") or "").split(",") if n.strip()),
    )


@kopf.on.cleanup()
async def shutdown(memo: Any, **_: Any) -> None:
    for task in memo.get("loops") or []:
        task.cancel()
    release = memo.get("release")
    if release is not None:
        # Hand the Lease over now (kopf takes a few more seconds to close its watches); from here
        # on the fence refuses every write of this replica.
        await release()
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        await reconciler.kube.close()


@kopf.on.login()
def authenticate(**_: Any) -> kopf.ConnectionInfo:
    """kopf's own kubeconfig / ServiceAccount readers (the kubernetes client is not loaded)."""
    return login()


# --- indexes ---------------------------------------------------------------------------------------
@kopf.index(ct.GROUP, ct.VERSION, ct.PLURAL_JOB)
async def ftj_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): ftj_record(body)}


@kopf.index(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME)
async def runtime_index(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: runtime_record(body)}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
async def child_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", labels.get(ct.LABEL_JOB_NAME, "")): job_view(dict(body))}


@kopf.index("v1", "pods", labels=MANAGED)
async def pod_index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", labels.get(ct.LABEL_JOB_NAME, "")): pod_view(dict(body))}


def _reconciler(memo: Any, kw: dict[str, Any]) -> Reconciler:
    r: Reconciler = memo["reconciler"]
    if r.indexes is None:
        r.indexes = Indexes(jobs=kw["ftj_index"], runtimes=kw["runtime_index"], children=kw["child_index"], pods=kw["pod_index"])
        _start_loops(memo, r)
    return r


# --- events: each one only queues the FineTuneJob's key (kopf then lets go of the body) -----------------
@kopf.on.event(ct.GROUP, ct.VERSION, ct.PLURAL_JOB)
async def on_finetunejob(type: str, namespace: str | None, name: str, memo: Any, **kw: Any) -> None:
    r = _reconciler(memo, kw)
    if type == "DELETED":
        r.forget((namespace or "", name))
        return
    r.enqueue((namespace or "", name))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def on_job(namespace: str | None, labels: kopf.Labels, memo: Any, **kw: Any) -> None:
    _reconciler(memo, kw).enqueue((namespace or "", labels.get(ct.LABEL_JOB_NAME, "")))


@kopf.on.event("v1", "pods", labels=MANAGED)
async def on_pod(namespace: str | None, labels: kopf.Labels, memo: Any, **kw: Any) -> None:
    _reconciler(memo, kw).enqueue((namespace or "", labels.get(ct.LABEL_JOB_NAME, "")))


@kopf.on.event("v1", "configmaps", labels=MANAGED)
async def on_configmap(type: str, namespace: str | None, name: str, labels: kopf.Labels, memo: Any, **kw: Any) -> None:
    _on_plain_child(memo, kw, type, namespace, "ConfigMap", name, labels)


@kopf.on.event("v1", "services", labels=MANAGED)
async def on_service(type: str, namespace: str | None, name: str, labels: kopf.Labels, memo: Any, **kw: Any) -> None:
    _on_plain_child(memo, kw, type, namespace, "Service", name, labels)


def _on_plain_child(memo: Any, kw: dict[str, Any], type: str, namespace: str | None, kind: str, name: str, labels: kopf.Labels) -> None:
    """A ConfigMap or Service of a job: its existence saves a create on the next apply (after a
    restart); its deletion is acted on (the job needs it back)."""
    r = _reconciler(memo, kw)
    job = labels.get(ct.LABEL_JOB_NAME, "")
    if type != "DELETED":
        r.child_seen(namespace or "", job, kind, name)
        return
    r.child_gone(namespace or "", job, kind, name)
    r.enqueue((namespace or "", job), force=True)


@kopf.on.event(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME)
async def on_runtime(name: str, memo: Any, **kw: Any) -> None:
    r = _reconciler(memo, kw)
    r.runtime_changed(name)
    for key in r.indexes.keys_using_runtime(name, r.config) if r.indexes else []:
        r.enqueue(key)


# --- periodic work: one loop for all jobs (no per-object timer tasks) ------------------------------------
async def resync_loop(r: Reconciler, seconds: float = RESYNC_SECONDS) -> None:
    """Level-triggered safety net: every unfinished job is reconciled once a minute, so a missed
    watch event or a failed API call is corrected without waiting for the next event."""
    while True:
        await asyncio.sleep(seconds * random.uniform(0.9, 1.1))  # jittered: replicas and restarts drift apart
        for key in r.active_keys():
            r.enqueue(key, force=True)


async def progress_loop(r: Reconciler, seconds: float = PROGRESS_SECONDS) -> None:
    """Every ``seconds`` (PROGRESS_SECONDS by default), read rank 0's /progress of each running
    job and fold it into the status (one patch, only if it changed)."""
    slots = asyncio.Semaphore(PROGRESS_CONCURRENCY)

    async def poll(session: aiohttp.ClientSession, key: tuple[str, str], url: str) -> None:
        async with slots:
            progress = await fetch_progress(session, url)
        if progress is not None:
            r.enqueue(key, progress=progress)

    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(seconds)
            await asyncio.gather(*(poll(session, key, url) for key, url in r.progress_targets()))


async def trim_loop(seconds: float = TRIM_SECONDS) -> None:
    """Give freed heap memory back to the OS now and then. The first listing of thousands of
    objects keeps every raw body alive at once (kopf queues each one for its own worker); once
    they are processed the memory is free but glibc keeps it, so RSS stayed at its peak."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return  # not glibc
    while True:
        await asyncio.sleep(seconds)
        trim(0)


def _start_loops(memo: Any, r: Reconciler) -> None:
    if memo.get("loops"):
        return
    options = memo.get("options") or {}
    resync = float(options.get("resync_seconds", RESYNC_SECONDS))
    progress = float(options.get("progress_seconds", PROGRESS_SECONDS))
    memo["loops"] = [
        asyncio.create_task(resync_loop(r, resync)),
        asyncio.create_task(progress_loop(r, progress)),
        asyncio.create_task(trim_loop()),
        *r.start(),
    ]

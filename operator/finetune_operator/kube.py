"""The only module that talks to the Kubernetes API server.

Server-side apply under one field manager (`finetune-operator`, forced: the operator owns what it
applies), deletes that treat 404 as done, status written through the status subresource, and
events. 404 (gone) and 409 (conflict) are handled here, in one place, so every caller is safe to
re-run. Plain async HTTP (aiohttp, as kopf itself uses) with kopf's credential readers: the
kubernetes client library is not loaded at all, which keeps the operator small.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf

from finetune_operator import constants as c
from finetune_operator.plan import Delete, Event
from finetune_operator.resolve import JobMeta
from finetune_operator.views import format_time

ct = c.contract
log = logging.getLogger(__name__)

_PATHS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "Pod": "/api/v1/namespaces/{ns}/pods/{name}",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
    "FineTuneJob": "/apis/" + ct.API_VERSION + "/namespaces/{ns}/" + ct.PLURAL_JOB + "/{name}",
    "Workload": "/apis/" + c.KUEUE_API_VERSION + "/namespaces/{ns}/workloads/{name}",
}
_RUNTIMES_PATH = "/apis/" + ct.API_VERSION + "/" + ct.PLURAL_RUNTIME
_EVENTS_PATH = "/api/v1/namespaces/{ns}/events"
_LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
REQUEST_TIMEOUT_SECONDS = 30.0


class KubeError(RuntimeError):
    """An API call that failed for a reason other than 404/409-as-expected."""

    def __init__(self, status: int, message: str, terminating: bool = False) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        #: Refused because the namespace is being deleted (everything in it goes with it).
        self.terminating = terminating


class NotLeader(KubeError):
    """A write refused before it was sent: this replica no longer holds the leader Lease."""

    def __init__(self, what: str) -> None:
        super().__init__(0, f"{what}: refused, this replica is not the leader")


def login() -> kopf.ConnectionInfo:
    """Credentials: the pod's ServiceAccount when in a cluster, else $KUBECONFIG (kopf's own
    readers, so kopf's watches and this module authenticate the same way)."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster ServiceAccount and no usable kubeconfig")
    return info


def _pem(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=os.fspath(info.ca_path) if info.ca_path else None)
    if info.ca_data:
        ctx.load_verify_locations(cadata=_pem(info.ca_data).decode())
    cert, key = info.certificate_path, info.private_key_path
    files = []
    if info.certificate_data and info.private_key_data:
        for data in (info.certificate_data, info.private_key_data):
            f = tempfile.NamedTemporaryFile(prefix="ftop-", suffix=".pem", delete=False)  # noqa: SIM115
            f.write(_pem(data))
            f.close()
            files.append(f.name)
        cert, key = files
    if cert and key:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    for name in files:
        os.unlink(name)
    return ctx


class Kube:
    """`fence`, when given, is asked before every write (anything but GET): a False answer
    refuses the write (NotLeader) without sending it. `identity` goes into the User-Agent, so the
    API server's audit log names the replica behind every request."""

    def __init__(
        self,
        credentials: Callable[[], kopf.ConnectionInfo] = login,
        concurrency: int = 16,
        fence: Callable[[], bool] | None = None,
        identity: str = "",
    ) -> None:
        self._credentials = credentials
        self._concurrency = concurrency
        self._fence = fence
        self._user_agent = f"{c.FIELD_MANAGER}/{identity}" if identity else c.FIELD_MANAGER
        self._session: aiohttp.ClientSession | None = None
        self._info: kopf.ConnectionInfo | None = None
        self._server = ""
        # Requests queue here, not in the connection pool, so the timeout covers only the
        # request itself; events get their own small share and never crowd out the work.
        self._slots = asyncio.Semaphore(concurrency)
        self._event_slots = asyncio.Semaphore(max(concurrency // 8, 1))

    async def _open(self, relogin: bool = False) -> aiohttp.ClientSession:
        if self._session is not None and not relogin:
            return self._session
        if self._session is not None:
            await self._session.close()
        info = self._info = self._credentials()
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        auth = None
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        elif info.username and info.password:
            auth = aiohttp.BasicAuth(info.username, info.password)
        connector = aiohttp.TCPConnector(limit=self._concurrency + max(self._concurrency // 8, 1), ssl=_ssl_context(info))
        self._server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers=headers,
            auth=auth,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )
        return self._session

    async def _run(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        slots: asyncio.Semaphore | None = None,
        read: bool = False,
    ) -> tuple[int, Any]:
        url = path + ("?" + urlencode(query) if query else "")
        if method != "GET" and self._fence is not None and not self._fence():
            raise NotLeader(f"{method} {path}")
        try:
            data = json.dumps(body, allow_nan=False) if body is not None else None
        except ValueError as err:  # NaN/Infinity is not JSON: refuse here instead of sending what the API server rejects
            raise KubeError(0, f"{method} {path}: body is not valid JSON: {err}") from err
        try:
            return await self._request(method, url, data, content_type, slots or self._slots, read)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise KubeError(0, f"{method} {path}: {err!r}") from err

    async def _request(self, method: str, url: str, data: str | None, content_type: str, slots: asyncio.Semaphore, read: bool) -> tuple[int, Any]:
        async with slots:
            if method != "GET" and self._fence is not None and not self._fence():
                raise NotLeader(f"{method} {url}")  # lost the lease while waiting for a slot
            for attempt in (1, 2):
                session = await self._open(relogin=attempt == 2)
                t0 = time.perf_counter()
                async with session.request(method, self._server + url, data=data, headers={"Content-Type": content_type}) as resp:
                    raw = await resp.read()
                    log.debug("%s %s -> %s in %.1f ms", method, url, resp.status, (time.perf_counter() - t0) * 1000)
                    if resp.status == 401 and attempt == 1:
                        continue  # rotated ServiceAccount token: read the credentials again
                    if 200 <= resp.status < 300 and not read:
                        return resp.status, None  # writes need no body on success
                    try:
                        payload = json.loads(raw) if raw else None
                    except ValueError:
                        payload = raw.decode(errors="replace")
                    return resp.status, payload
        raise AssertionError("unreachable")

    @staticmethod
    def _check(status: int, data: Any, what: str, ok: tuple[int, ...] = ()) -> None:
        if 200 <= status < 300 or status in ok:
            return
        message = data.get("message") if isinstance(data, dict) else str(data)
        raise KubeError(status, f"{what}: {message}", _namespace_terminating(data))

    # --- operations ---------------------------------------------------------------------------
    async def apply(self, manifest: dict[str, Any]) -> bool:
        """Server-side apply (create or update) under the operator's field manager; False when
        the object was in the way (409) and the apply must be tried again."""
        meta = manifest["metadata"]
        path = _PATHS[manifest["kind"]].format(ns=meta["namespace"], name=meta["name"])
        status, data = await self._run(
            "PATCH",
            path,
            manifest,
            [("fieldManager", c.FIELD_MANAGER), ("force", "true")],
            "application/apply-patch+yaml",
        )
        if status == 409:
            # Only possible without force (never here) or when the object is being deleted and
            # recreated under us: the next reconcile applies again.
            log.info("apply %s %s/%s: conflict, will retry: %s", manifest["kind"], meta["namespace"], meta["name"], _msg(data))
            return False
        self._check(status, data, f"apply {manifest['kind']} {meta['namespace']}/{meta['name']}")
        return True

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create the object (POST, under the operator's field manager). None when it was created;
        when the name is already taken, the metadata of the object that holds it."""
        meta = manifest["metadata"]
        item = _PATHS[manifest["kind"]].format(ns=meta["namespace"], name=meta["name"])
        status, data = await self._run("POST", item.rsplit("/", 1)[0], manifest, [("fieldManager", c.FIELD_MANAGER)])
        if status != 409:
            self._check(status, data, f"create {manifest['kind']} {meta['namespace']}/{meta['name']}")
            return None
        status, data = await self._run("GET", item, read=True)
        if status == 404:
            return {}  # gone again meanwhile: the next apply creates it
        self._check(status, data, f"get {manifest['kind']} {meta['namespace']}/{meta['name']}")
        return dict(data.get("metadata") or {}) if isinstance(data, dict) else {}

    async def metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The metadata of an object (None when there is none by that name)."""
        status, data = await self._run("GET", _PATHS[kind].format(ns=namespace, name=name), read=True)
        if status == 404:
            return None
        self._check(status, data, f"get {kind} {namespace}/{name}")
        return dict(data.get("metadata") or {}) if isinstance(data, dict) else {}

    async def suspend_job(self, namespace: str, name: str, uid: str, suspend: bool) -> None:
        """Set spec.suspend of an existing Job (a merge patch of that field only, under the
        operator's field manager; refused if the name now holds a Job with another UID)."""
        path = _PATHS["Job"].format(ns=namespace, name=name)
        body: dict[str, Any] = {"spec": {"suspend": suspend}}
        if uid:
            body["metadata"] = {"uid": uid}
        status, data = await self._run("PATCH", path, body, [("fieldManager", c.FIELD_MANAGER)], "application/merge-patch+json")
        self._check(status, data, f"suspend={suspend} Job {namespace}/{name}", ok=(404, 409))

    async def priority_value(self, name: str) -> int | None:
        """The value of PriorityClass `name` (None when there is none)."""
        status, data = await self._run("GET", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}", read=True)
        if status == 404:
            return None
        self._check(status, data, f"get PriorityClass {name}")
        value = data.get("value") if isinstance(data, dict) else None
        return int(value) if isinstance(value, int) else None

    async def workload(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, bool]:
        """(the Kueue Workload or None, whether the cluster serves Kueue's Workload API): a 404
        for the object names it in its details, one for an API not served does not."""
        status, data = await self._run("GET", _PATHS["Workload"].format(ns=namespace, name=name), read=True)
        if status == 404:
            details = data.get("details") if isinstance(data, dict) else None
            return None, bool(isinstance(details, dict) and details.get("name"))
        self._check(status, data, f"get Workload {namespace}/{name}")
        return (data if isinstance(data, dict) else None), True

    async def set_workload_active(self, namespace: str, name: str, uid: str, active: bool) -> None:
        """Set spec.active of a Workload (a merge patch of that field, refused if the name now
        holds another Workload)."""
        body: dict[str, Any] = {"spec": {"active": active}}
        if uid:
            body["metadata"] = {"uid": uid}
        path = _PATHS["Workload"].format(ns=namespace, name=name)
        status, data = await self._run("PATCH", path, body, [("fieldManager", c.FIELD_MANAGER)], "application/merge-patch+json")
        self._check(status, data, f"active={active} Workload {namespace}/{name}", ok=(404, 409))

    async def drop_workload_owners(self, namespace: str, name: str, uids: tuple[str, ...]) -> bool:
        """Remove the owner references with these UIDs from a Workload (read, then write on that
        version: Kueue and the garbage collector write the same object). False on a conflict."""
        path = _PATHS["Workload"].format(ns=namespace, name=name)
        status, data = await self._run("GET", path, read=True)
        if status == 404:
            return True
        self._check(status, data, f"get Workload {namespace}/{name}")
        meta = data.get("metadata") or {}
        refs = list(meta.get("ownerReferences") or [])
        # A Job of that name made since (Kueue may have adopted it already) keeps its reference.
        job = await self.metadata("Job", namespace, name)
        live = (job or {}).get("uid")
        kept = [r for r in refs if r.get("uid") not in uids or r.get("uid") == live]
        if kept == refs:
            return True
        body = {"metadata": {"ownerReferences": kept, "resourceVersion": meta.get("resourceVersion")}}
        status, data = await self._run("PATCH", path, body, [("fieldManager", c.FIELD_MANAGER)], "application/merge-patch+json")
        if status in (404, 409):
            return status == 404
        self._check(status, data, f"drop owners of Workload {namespace}/{name}")
        return True

    async def delete(self, namespace: str, item: Delete) -> None:
        path = _PATHS[item.kind].format(ns=namespace, name=item.name)
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": item.propagation}
        if item.uid:
            body["preconditions"] = {"uid": item.uid}  # never the object that took the name since
        if item.grace_seconds is not None:
            body["gracePeriodSeconds"] = item.grace_seconds
        status, data = await self._run("DELETE", path, body)
        self._check(status, data, f"delete {item.kind} {namespace}/{item.name}", ok=(404, 409))

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None = None) -> bool | None:
        """JSON merge patch of the status subresource; False when the FineTuneJob is gone.

        With `resource_version` the patch applies only to that version of the object (optimistic
        concurrency): None when it has changed since (409), and nothing was written.
        """
        path = _PATHS["FineTuneJob"].format(ns=namespace, name=name) + "/status"
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        status, data = await self._run("PATCH", path, body, None, "application/merge-patch+json")
        if status == 404:
            return False
        if status == 409 and resource_version:
            log.info("status of %s/%s changed since it was read (%s); will decide again", namespace, name, _msg(data))
            return None
        self._check(status, data, f"patch status of {ct.KIND_JOB} {namespace}/{name}")
        return True

    async def failed_create(self, namespace: str, uid: str) -> str | None:
        """The newest FailedCreate event's message for the object with this UID (the Job
        controller's word for pods it cannot create: a quota, Pod Security, a missing
        ServiceAccount or PriorityClass); None when there is none."""
        path = _EVENTS_PATH.format(ns=namespace)
        selector = f"involvedObject.uid={uid},reason=FailedCreate"
        status, data = await self._run("GET", path, query=[("fieldSelector", selector), ("limit", "50")], read=True)
        self._check(status, data, f"list FailedCreate events in {namespace}")
        items = data.get("items") if isinstance(data, dict) else None
        if not items:
            return None
        newest = max(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or ""))
        return str(newest.get("message") or "") or None

    async def set_runtime_finalizers(self, name: str, finalizers: list[str], resource_version: str) -> bool:
        """Replace a ClusterFineTuneRuntime's finalizers, only on the version observed; False when
        it changed since (409) or is gone (the next watch event brings the new version)."""
        path = _RUNTIMES_PATH + f"/{name}"
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        status, data = await self._run("PATCH", path, body, None, "application/merge-patch+json")
        if status in (404, 409):
            return False
        self._check(status, data, f"set finalizers of {ct.KIND_RUNTIME} {name}")
        return True

    async def event(self, meta: JobMeta, event: Event, now: Any) -> None:
        """A core/v1 Event on the FineTuneJob (never contains Secret values: messages are built
        from status fields and trainer exit messages only)."""
        stamp = format_time(now)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.name}.", "namespace": meta.namespace},
            "involvedObject": {
                "apiVersion": ct.API_VERSION,
                "kind": ct.KIND_JOB,
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message,
            "source": {"component": c.EVENT_SOURCE},
            "reportingComponent": c.EVENT_SOURCE,
            "reportingInstance": c.EVENT_SOURCE,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            status, data = await self._run("POST", _EVENTS_PATH.format(ns=meta.namespace), body, slots=self._event_slots)
        except (KubeError, OSError) as err:
            status, data = 0, repr(err)
        if not 200 <= status < 300 and _namespace_terminating(data):
            log.debug("event %s on %s/%s not posted: the namespace is being deleted", event.reason, meta.namespace, meta.name)
        elif not 200 <= status < 300:  # an event that cannot be posted is not worth failing a reconcile
            log.warning("event %s on %s/%s not posted: %s", event.reason, meta.namespace, meta.name, _msg(data))

    # --- the leader Lease (used by `leader.LeaderElector` through its own, unfenced client) -----
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, data = await self._run("GET", _LEASES_PATH.format(ns=namespace) + f"/{name}", read=True)
        if status == 404:
            return None
        self._check(status, data, f"get Lease {namespace}/{name}")
        return dict(data) if isinstance(data, dict) else None

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> str:
        """The new object's resourceVersion; "" when another replica created it first (409)."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        status, data = await self._run("POST", _LEASES_PATH.format(ns=namespace), body, read=True)
        if status == 409:
            return ""
        self._check(status, data, f"create Lease {namespace}/{name}")
        return _resource_version(data)

    async def replace_lease(self, namespace: str, name: str, spec: dict[str, Any], resource_version: str) -> str:
        """PUT conditional on `resource_version`: the new resourceVersion, or "" when someone else
        wrote it since (409) or it is gone."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
            "spec": spec,
        }
        status, data = await self._run("PUT", _LEASES_PATH.format(ns=namespace) + f"/{name}", body, read=True)
        if status in (404, 409):
            return ""
        self._check(status, data, f"update Lease {namespace}/{name}")
        return _resource_version(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None



def _namespace_terminating(data: Any) -> bool:
    """A Status saying the namespace is being deleted (NamespaceLifecycle's cause)."""
    details = data.get("details") if isinstance(data, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    return any(isinstance(x, dict) and x.get("type") == "NamespaceTerminating" for x in causes or ())


def _resource_version(data: Any) -> str:
    meta = data.get("metadata") if isinstance(data, dict) else None
    return str((meta or {}).get("resourceVersion") or "-")  # never "" for a write that landed


def _msg(data: Any) -> str:
    return str(data.get("message")) if isinstance(data, dict) else str(data)

"""The only module that talks to the Kubernetes API server.

Server-side apply under one field manager (`finetune-operator`, forced: the operator owns what it
applies), deletes that treat 404 as done, status written through the status subresource, and
events. 404 (gone) and 409 (conflict) are handled here, in one place, so every caller is safe to
re-run. The blocking kubernetes client runs in a small thread pool; callers await.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

from kubernetes import client as k8s
from kubernetes import config as k8s_config

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
}
_EVENTS_PATH = "/api/v1/namespaces/{ns}/events"


class KubeError(RuntimeError):
    """An API call that failed for a reason other than 404/409-as-expected."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Kube:
    def __init__(self, api_client: k8s.ApiClient, workers: int = 8) -> None:
        self.api = api_client
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    @classmethod
    def from_environment(cls, workers: int = 8) -> Kube:
        """In-cluster ServiceAccount when running in a pod, else $KUBECONFIG / ~/.kube/config."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = workers
        return cls(k8s.ApiClient(configuration), workers)

    # --- raw ------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None, content_type: str = "application/json") -> tuple[int, Any]:
        cfg = self.api.configuration
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        bearer = (cfg.auth_settings().get("BearerToken") or {}).get("value")
        if bearer:
            headers["Authorization"] = bearer
        url = cfg.host + path + ("?" + urlencode(query) if query else "")
        resp = self.api.rest_client.pool_manager.request(
            method, url, body=json.dumps(body) if body is not None else None, headers=headers, timeout=30.0
        )
        raw = resp.data
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return int(resp.status), data

    async def _run(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None, content_type: str = "application/json") -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: self._call(method, path, body, query, content_type))

    @staticmethod
    def _check(status: int, data: Any, what: str, ok: tuple[int, ...] = ()) -> None:
        if 200 <= status < 300 or status in ok:
            return
        message = data.get("message") if isinstance(data, dict) else str(data)
        raise KubeError(status, f"{what}: {message}")

    # --- operations ---------------------------------------------------------------------------
    async def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply (create or update) under the operator's field manager."""
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
            return
        self._check(status, data, f"apply {manifest['kind']} {meta['namespace']}/{meta['name']}")

    async def delete(self, namespace: str, item: Delete) -> None:
        path = _PATHS[item.kind].format(ns=namespace, name=item.name)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": item.propagation}
        status, data = await self._run("DELETE", path, body)
        self._check(status, data, f"delete {item.kind} {namespace}/{item.name}", ok=(404, 409))

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """JSON merge patch of the status subresource; False when the FineTuneJob is gone."""
        path = _PATHS["FineTuneJob"].format(ns=namespace, name=name) + "/status"
        status, data = await self._run("PATCH", path, {"status": patch}, None, "application/merge-patch+json")
        if status == 404:
            return False
        self._check(status, data, f"patch status of {ct.KIND_JOB} {namespace}/{name}")
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
        status, data = await self._run("POST", _EVENTS_PATH.format(ns=meta.namespace), body)
        if status >= 300:  # an event that cannot be posted is not worth failing a reconcile
            log.warning("event %s on %s/%s not posted: %s", event.reason, meta.namespace, meta.name, _msg(data))

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.api.close()


def _msg(data: Any) -> str:
    return str(data.get("message")) if isinstance(data, dict) else str(data)

"""Cluster access for ftctl: the only module that talks to the Kubernetes API server.

Credentials come from a kubeconfig: `--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`
(or the in-cluster service account when none exists). API errors become one-line messages.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any, Literal

from finetune_trainer import contract

from .errors import CommandFailed, UserError


class Cluster:
    """FineTuneJobs, their pods and logs, through the official kubernetes client."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client, config

        path = kubeconfig or os.environ.get("KUBECONFIG") or None
        try:
            if path is None and not pathlib.Path("~/.kube/config").expanduser().exists():
                config.load_incluster_config()
                self.default_namespace = _incluster_namespace()
            else:
                if path is not None and not pathlib.Path(path.split(os.pathsep)[0]).exists():
                    raise UserError(f"kubeconfig {path} does not exist")
                config.load_kube_config(config_file=path, context=context)
                _, active = config.list_kube_config_contexts(config_file=path)
                if context:
                    active = next(
                        (c for c in config.list_kube_config_contexts(config_file=path)[0]
                         if c["name"] == context), active)
                self.default_namespace = str(active.get("context", {}).get("namespace") or "default")
        except config.ConfigException as err:
            raise UserError(f"no usable kubeconfig ({err}); pass --kubeconfig or set KUBECONFIG") from None
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()

    # --- FineTuneJobs ---------------------------------------------------------------------
    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("metadata", {}).get("name", "?")
        with _api_errors(f"FineTuneJob {namespace}/{name}", creating=True,
                         access=("create", JOBS, namespace)):
            obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, body
            )
            return obj

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        with _api_errors(f"FineTuneJob {namespace}/{name}", access=("get", JOBS, namespace)):
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, name
            )
            return obj

    def list_jobs(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        """The FineTuneJobs of one namespace (None: every namespace), optionally only those
        matching a label selector (`-l team=a,tier!=dev`)."""
        with _api_errors("FineTuneJobs", access=("list", JOBS, namespace)):
            if namespace is None:
                res = self.custom.list_cluster_custom_object(
                    contract.GROUP, contract.VERSION, contract.PLURAL_JOB, label_selector=selector or ""
                )
            else:
                res = self.custom.list_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB,
                    label_selector=selector or "",
                )
        items: list[dict[str, Any]] = res.get("items", [])
        self.last_list_version = str((res.get("metadata") or {}).get("resourceVersion") or "")
        return items

    def watch_jobs(self, namespace: str | None, selector: str | None, resource_version: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(ADDED|MODIFIED|DELETED, FineTuneJob) for each change after `resource_version`, as
        they happen, until interrupted. A watch the API server expired (410 Gone: the version is
        too old) starts again from a fresh list, whose jobs are reported as MODIFIED."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        if namespace is None:
            args: tuple[Any, ...] = (self.custom.list_cluster_custom_object, contract.GROUP, contract.VERSION, contract.PLURAL_JOB)
        else:
            args = (self.custom.list_namespaced_custom_object, contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB)
        version = resource_version
        while True:
            try:
                with _api_errors("FineTuneJobs", access=("watch", JOBS, namespace)):
                    try:
                        for event in watch.Watch().stream(*args, label_selector=selector or "", resource_version=version, timeout_seconds=300):
                            obj = event["object"]
                            if event["type"] == "ERROR":
                                if obj.get("code") == 410:
                                    raise _Gone
                                raise CommandFailed(f"watching FineTuneJobs: {obj.get('message') or obj}")
                            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                                yield event["type"], obj
                    except ApiException as err:
                        if err.status == 410:
                            raise _Gone from None
                        raise
            except _Gone:
                for job in self.list_jobs(namespace, selector):
                    yield "MODIFIED", job
                version = self.last_list_version

    def delete_job(self, namespace: str, name: str) -> None:
        with _api_errors(f"FineTuneJob {namespace}/{name}", access=("delete", JOBS, namespace)):
            self.custom.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, name)

    def patch_job_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the FineTuneJob's spec (e.g. {"suspend": true})."""
        with _api_errors(f"FineTuneJob {namespace}/{name}", access=("patch", JOBS, namespace)):
            obj: dict[str, Any] = self.custom.patch_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, name, {"spec": spec}
            )
            return obj

    def get_runtime(self, name: str) -> dict[str, Any]:
        with _api_errors(f"ClusterFineTuneRuntime {name}", access=("get", RUNTIMES, None)):
            obj: dict[str, Any] = self.custom.get_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.PLURAL_RUNTIME, name
            )
            return obj

    # --- pods, events and logs -------------------------------------------------------------
    def job_pods(self, namespace: str, name: str, component: str | None = None) -> list[Any]:
        """Pods labelled as the job's (every component, or only `component`)."""
        selector = f"{contract.LABEL_JOB_NAME}={name}"
        if component is not None:
            selector += f",{contract.LABEL_COMPONENT}={component}"
        with _api_errors(f"pods of FineTuneJob {namespace}/{name}", access=("list", "pods", namespace)):
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return list(pods)

    def rank0_pod(self, namespace: str, name: str) -> Any | None:
        """The newest pod with completion index 0 (rank 0) of the job's training Job."""
        return pick_trainer_pod(self.job_pods(namespace, name, contract.COMPONENT_TRAINER), rank=0)

    def job_events(self, namespace: str, job: dict[str, Any]) -> list[Any]:
        """Events about the FineTuneJob itself (the operator's), like `kubectl describe` shows."""
        meta = job["metadata"]
        selector = f"involvedObject.kind={contract.KIND_JOB},involvedObject.name={meta['name']}"
        if meta.get("uid"):
            selector += f",involvedObject.uid={meta['uid']}"
        with _api_errors(f"events of FineTuneJob {namespace}/{meta['name']}", access=("list", "events", namespace)):
            events = self.core.list_namespaced_event(namespace, field_selector=selector).items
        return list(events)

    def pod_logs(self, namespace: str, pod: str, *, follow: bool, tail: int | None,
                 previous: bool = False, since_seconds: int | None = None) -> Iterator[str]:
        """Log lines of the pod (its previous container instance with `previous`)."""
        options: dict[str, Any] = {"tail_lines": tail}
        if previous:
            options["previous"] = True
        if since_seconds is not None:
            options["since_seconds"] = since_seconds
        with _api_errors(f"logs of pod {namespace}/{pod}", access=("get", "pods/log", namespace)):
            if not follow:
                text: str = self.core.read_namespaced_pod_log(
                    pod, namespace, _preload_content=True, **options
                )
                yield from text.splitlines()
                return
            resp = self.core.read_namespaced_pod_log(
                pod, namespace, follow=True, _preload_content=False, **options
            )
            try:
                for line in resp.stream(decode_content=True):
                    yield from (line.decode(errors="replace") if isinstance(line, bytes) else line).splitlines()
            finally:
                resp.release_conn()


JOBS = f"{contract.PLURAL_JOB}.{contract.GROUP}"
RUNTIMES = f"{contract.PLURAL_RUNTIME}.{contract.GROUP}"


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def pod_rank(pod: Any) -> int | None:
    """The pod's rank: its Indexed Job completion index (annotation, else label)."""
    meta = pod.metadata
    return _int_or_none((meta.annotations or {}).get(contract.ANNOTATION_JOB_COMPLETION_INDEX)
                        or (meta.labels or {}).get(contract.ANNOTATION_JOB_COMPLETION_INDEX))


def pod_attempt(pod: Any) -> int | None:
    """The job attempt the pod belongs to (the operator's attempt label)."""
    return _int_or_none((pod.metadata.labels or {}).get(contract.LABEL_ATTEMPT))


def pick_trainer_pod(pods: list[Any], *, rank: int = 0, attempt: int | None = None) -> Any | None:
    """The trainer pod of `rank` in `attempt` (None: the newest attempt that has that rank);
    of several (a pod replaced within the attempt), the newest."""
    found = [p for p in pods if pod_rank(p) == rank]
    if attempt is not None:
        found = [p for p in found if pod_attempt(p) == attempt]
    found.sort(key=lambda p: (pod_attempt(p) or 0, _created(p)))
    return found[-1] if found else None


def _created(pod: Any) -> float:
    ts = pod.metadata.creation_timestamp
    return float(ts.timestamp()) if ts is not None else 0.0


def _incluster_namespace() -> str:
    p = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return p.read_text().strip() if p.exists() else "default"


class _Gone(Exception):
    """A watch's resourceVersion is too old (410): list again."""


class _api_errors:
    """Turn kubernetes ApiException / connection errors into clean messages."""

    def __init__(self, what: str, *, creating: bool = False,
                 access: tuple[str, str, str | None] | None = None) -> None:
        self.what = what
        self.creating = creating
        self.access = access  # (verb, resource, namespace or None) for a 401/403 message

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        import urllib3
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException):
            message = _status_message(exc)
            if exc.status == 404:
                if self.creating and "namespaces" in message:
                    raise UserError(f"cannot create {self.what}: {message}") from None
                if "the server could not find the requested resource" in message.lower():
                    raise CommandFailed(
                        "the FineTuneJob CRD is not installed on this cluster "
                        "(helm install finetune-operator charts/finetune-operator)"
                    ) from None
                raise UserError(f"{self.what} not found") from None
            if exc.status == 409 and self.creating:
                raise UserError(f"{self.what} already exists (delete it or pick another metadata.name)") from None
            if exc.status in (400, 422):
                raise UserError(f"{self.what} rejected by the API server: {message}") from None
            if exc.status in (401, 403):
                raise UserError(self._denied(exc.status, message)) from None
            raise CommandFailed(f"{self.what}: API error {exc.status}: {message}") from None
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            raise CommandFailed(f"cannot reach the Kubernetes API server: {exc}") from None
        return False

    def _denied(self, status: int, message: str) -> str:
        """A 401/403 as the user can act on it: what was asked (verb, resource, namespace)."""
        if self.access is None:
            asked = self.what
        else:
            verb, resource, namespace = self.access
            where = f"in namespace {namespace!r}" if namespace else "cluster-wide"
            asked = f"{verb} {resource} {where}"
        if status == 401:
            return (f"the API server rejected the credentials (401 Unauthorized) trying to {asked}: "
                    "the kubeconfig's token or certificate is invalid or expired")
        return (f"not allowed to {asked} (403 Forbidden): {message}; ask an administrator for a "
                "RoleBinding, or check --context/--namespace")


def _status_message(exc: Any) -> str:
    import json

    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except (ValueError, TypeError):
        return str(exc.reason)

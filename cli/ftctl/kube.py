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
        with _api_errors(f"FineTuneJob {namespace}/{name}", creating=True):
            obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, body
            )
            return obj

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        with _api_errors(f"FineTuneJob {namespace}/{name}"):
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, name
            )
            return obj

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        with _api_errors("FineTuneJobs"):
            if namespace is None:
                res = self.custom.list_cluster_custom_object(
                    contract.GROUP, contract.VERSION, contract.PLURAL_JOB
                )
            else:
                res = self.custom.list_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB
                )
        items: list[dict[str, Any]] = res.get("items", [])
        return items

    def delete_job(self, namespace: str, name: str) -> None:
        with _api_errors(f"FineTuneJob {namespace}/{name}"):
            self.custom.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, name)

    def patch_job_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the FineTuneJob's spec (e.g. {"suspend": true})."""
        with _api_errors(f"FineTuneJob {namespace}/{name}"):
            obj: dict[str, Any] = self.custom.patch_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL_JOB, name, {"spec": spec}
            )
            return obj

    def get_runtime(self, name: str) -> dict[str, Any]:
        with _api_errors(f"ClusterFineTuneRuntime {name}"):
            obj: dict[str, Any] = self.custom.get_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.PLURAL_RUNTIME, name
            )
            return obj

    # --- pods and logs --------------------------------------------------------------------
    def job_pods(self, namespace: str, name: str, component: str) -> list[Any]:
        selector = f"{contract.LABEL_JOB_NAME}={name},{contract.LABEL_COMPONENT}={component}"
        with _api_errors(f"pods of FineTuneJob {namespace}/{name}"):
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return list(pods)

    def rank0_pod(self, namespace: str, name: str) -> Any | None:
        """The newest pod with completion index 0 (rank 0) of the job's training Job."""
        pods = [
            p for p in self.job_pods(namespace, name, contract.COMPONENT_TRAINER)
            if (p.metadata.annotations or {}).get(contract.ANNOTATION_JOB_COMPLETION_INDEX) == "0"
            or (p.metadata.labels or {}).get(contract.ANNOTATION_JOB_COMPLETION_INDEX) == "0"
        ]
        pods.sort(key=lambda p: p.metadata.creation_timestamp or 0)
        return pods[-1] if pods else None

    def pod_logs(self, namespace: str, pod: str, *, follow: bool, tail: int | None) -> Iterator[str]:
        with _api_errors(f"logs of pod {namespace}/{pod}"):
            if not follow:
                text: str = self.core.read_namespaced_pod_log(
                    pod, namespace, tail_lines=tail, _preload_content=True
                )
                yield from text.splitlines()
                return
            resp = self.core.read_namespaced_pod_log(
                pod, namespace, follow=True, tail_lines=tail, _preload_content=False
            )
            try:
                for line in resp.stream(decode_content=True):
                    yield from (line.decode(errors="replace") if isinstance(line, bytes) else line).splitlines()
            finally:
                resp.release_conn()


def _incluster_namespace() -> str:
    p = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return p.read_text().strip() if p.exists() else "default"


class _api_errors:
    """Turn kubernetes ApiException / connection errors into clean messages."""

    def __init__(self, what: str, *, creating: bool = False) -> None:
        self.what = what
        self.creating = creating

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
                raise CommandFailed(f"not allowed: {message}") from None
            raise CommandFailed(f"{self.what}: API error {exc.status}: {message}") from None
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            raise CommandFailed(f"cannot reach the Kubernetes API server: {exc}") from None
        return False


def _status_message(exc: Any) -> str:
    import json

    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except (ValueError, TypeError):
        return str(exc.reason)

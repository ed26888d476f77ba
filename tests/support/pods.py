"""Running a container the operator's builders rendered as a local process, and reading back what
the kubelet would report for it.

Only what a kubelet and the API server would supply is filled in here: `secretKeyRef` values,
the downward API (`fieldRef`), and paths/hosts/ports that exist in a pod but not on this
machine (`/etc/finetune`, `/workspace`, `/tmp`, `/dev/termination-log`, the headless DNS name).
Every other variable, the command and its arguments are taken from the manifest as rendered.
"""

from __future__ import annotations

import pathlib
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from finetune_trainer import contract as ct

#: The kubelet reads at most this many bytes of the termination message file.
KUBELET_MESSAGE_LIMIT = 4096


def container(manifest: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The named container of a Pod or of a Job's pod template."""
    spec = manifest["spec"]
    pod_spec = spec["template"]["spec"] if manifest["kind"] == "Job" else spec
    return next(dict(c) for c in pod_spec["containers"] if c["name"] == name)


def template_metadata(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The pod's own labels and annotations as rendered (a Job's pod template, or a Pod)."""
    return dict(manifest["spec"]["template"]["metadata"] if manifest["kind"] == "Job" else manifest["metadata"])


def local_argv(ctr: Mapping[str, Any], paths: Mapping[str, str]) -> list[str]:
    """command + args with `python` as this interpreter and pod paths moved (`paths`: prefix -> local)."""
    argv = [*ctr.get("command", []), *ctr.get("args", [])]
    assert argv and argv[0] == "python", argv
    return [sys.executable, *(_moved(a, paths) for a in argv[1:])]


def local_env(
    ctr: Mapping[str, Any],
    *,
    secrets: Mapping[tuple[str, str], str],
    fields: Mapping[str, str],
    paths: Mapping[str, str],
    values: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The container's env as the kubelet would set it. `secrets`: (secret, key) -> value (an
    optional key that is absent is left out, as Kubernetes does); `fields`: fieldPath -> value
    for what the Job controller adds to a pod (its completion index); `metadata`: the pod's
    rendered labels and annotations, which the downward API reads (a missing key is "");
    `values`: name -> replacement for a literal value that names a pod-only host or port."""
    out: dict[str, str] = {}
    for item in ctr.get("env", []):
        name = item["name"]
        if "value" in item:
            out[name] = (values or {}).get(name, _moved(str(item["value"]), paths))
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = secrets.get((ref["name"], ref["key"]))
            if value is None:
                assert ref.get("optional"), f"{name}: secret {ref['name']}/{ref['key']} is required"
                continue
            out[name] = value
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            own = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
            if path in fields:
                out[name] = fields[path]
            elif own is not None and metadata is not None:
                out[name] = str((metadata.get(own.group(1)) or {}).get(own.group(2), ""))
            else:
                raise AssertionError(f"{name}: no value for fieldRef {path}")
        else:
            raise AssertionError(f"{name}: unsupported valueFrom {source}")
    return out


def _moved(value: str, paths: Mapping[str, str]) -> str:
    for prefix in sorted(paths, key=len, reverse=True):
        if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
            return paths[prefix] + value[len(prefix) :]
    return value


def kubelet_message(path: pathlib.Path) -> str | None:
    """What the kubelet puts in `state.terminated.message` from the termination message file."""
    try:
        data = path.read_bytes()[:KUBELET_MESSAGE_LIMIT]
    except FileNotFoundError:
        return None
    return data.decode("utf-8", errors="replace") or None


def terminated_pod(
    name: str,
    *,
    job: str,
    component: str,
    container_name: str,
    exit_code: int,
    message: str | None,
    index: int | None = None,
    attempt: int | None = 0,
    job_uid: str = "",
) -> dict[str, Any]:
    """A pod body as the API server returns it once its main container has terminated."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {ct.LABEL_JOB_NAME: job, ct.LABEL_COMPONENT: component}
    if attempt is not None:
        labels[ct.LABEL_ATTEMPT] = str(attempt)
    if job_uid:
        labels[ct.LABEL_JOB_UID] = job_uid
    annotations = {ct.ANNOTATION_JOB_COMPLETION_INDEX: str(index)} if index is not None else {}
    terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "finishedAt": now}
    if message is not None:
        terminated["message"] = message
    return {
        "metadata": {"name": name, "labels": labels, "annotations": annotations, "uid": f"uid-{name}"},
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": now,
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": container_name, "state": {"terminated": terminated}}],
        },
    }


def image_env(dockerfile: pathlib.Path, paths: Mapping[str, str]) -> dict[str, str]:
    """The `ENV` of the image's Dockerfile (pod paths moved; PATH and the venv are this machine's)."""
    import os
    import re
    import shlex

    text = dockerfile.read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("ENV "):
            continue
        for token in shlex.split(line[4:]):
            name, _, value = token.partition("=")
            if name in ("PATH", "VIRTUAL_ENV"):
                continue
            out[name] = _moved(re.sub(r"\$\{?(\w+)\}?", lambda m: os.environ.get(m.group(1), ""), value), paths)
    out["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return out


def pod_paths(root: pathlib.Path) -> dict[str, str]:
    """Local stand-ins for the pod's mounts and files under `root` (created)."""
    out = {}
    for pod_path, local in (
        (ct.CONFIG_MOUNT_DIR, "etc-finetune"),
        (ct.WORK_DIR, "workspace"),
        (ct.TMP_DIR, "tmp"),
        (ct.TERMINATION_MESSAGE_PATH, "termination-log"),
    ):
        target = root / local
        if pod_path != ct.TERMINATION_MESSAGE_PATH:
            target.mkdir(parents=True, exist_ok=True)
        out[pod_path] = str(target)
    return out

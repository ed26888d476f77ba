"""Driving fake pods: the annotations that kwok-stages.yaml reacts to, and helpers to set them.

A pod on a fake node runs (Ready, pod IP) as soon as it is scheduled and stays Running until
the test sets ``RESULT``:

    pod_annotations(SUCCEEDED, delay="1s")             # put into a pod template
    set_pod_result(core, ns, pod, FAILED, exit_code=3)  # or patch a running pod
"""

from __future__ import annotations

from typing import Any

RESULT = "kwok.finetune.dev/result"
EXIT_CODE = "kwok.finetune.dev/exit-code"
DELAY = "kwok.finetune.dev/delay"
#: On a pod: its kubelet never confirms a deletion (a lost node); see kwok-stages.yaml.
UNREACHABLE = "kwok.finetune.dev/unreachable"

SUCCEEDED = "Succeeded"
FAILED = "Failed"
EVICTED = "Evicted"
RESULTS = (SUCCEEDED, FAILED, EVICTED)


def pod_annotations(
    result: str, *, exit_code: int | None = None, delay: str | None = None
) -> dict[str, str]:
    """Pod annotations that make kwok finish the pod with ``result``."""
    if result not in RESULTS:
        raise ValueError(f"result must be one of {', '.join(RESULTS)}, not {result!r}")
    if exit_code is not None and result != FAILED:
        raise ValueError("exit_code only applies to result=Failed")
    out = {RESULT: result}
    if exit_code is not None:
        out[EXIT_CODE] = str(exit_code)
    if delay is not None:
        out[DELAY] = delay
    return out


def set_pod_result(
    core_v1: Any,
    namespace: str,
    pod: str,
    result: str,
    *,
    exit_code: int | None = None,
    delay: str | None = None,
) -> None:
    """Patch a pod's annotations (``core_v1`` is a ``kubernetes.client.CoreV1Api``)."""
    body = {"metadata": {"annotations": pod_annotations(result, exit_code=exit_code, delay=delay)}}
    core_v1.patch_namespaced_pod(pod, namespace, body)

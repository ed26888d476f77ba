"""Start a control plane and a real node, run one pod, print READY, then wait to be killed.

Used by tests/e2e/test_node_lifecycle.py to leave a node behind the way a crashed test session
would (SIGKILL: no cleanup code runs), and check that the next start sweeps it away.

Run: python -m tests.e2e.node_probe STATE_DIR
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from tests.cluster.node import PAUSE_IMAGE, start_cluster_with_node

RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65535,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def pause_pod(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "securityContext": RESTRICTED,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "pause",
                    "image": PAUSE_IMAGE,
                    "imagePullPolicy": "Never",
                    "securityContext": CONTAINER_RESTRICTED,
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
            "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
        },
    }


def main() -> int:
    state_dir = pathlib.Path(sys.argv[1])
    cp, node = start_cluster_with_node(state_dir)
    cp.kubectl("apply", "-f", "-", input=json.dumps(pause_pod("probe")))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pod = cp.request("GET", "/api/v1/namespaces/default/pods/probe")
        if pod.get("status", {}).get("phase") == "Running":
            print("READY", flush=True)
            break
        time.sleep(0.5)
    else:
        print("pod did not run\n" + node.diagnostics(), flush=True)
        return 1
    time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())

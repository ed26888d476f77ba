"""The real node itself: it runs pods under Pod Security `restricted`, serves cluster DNS
(Service and headless pod names), reaches the API server through the `kubernetes` Service, and
leaves the machine as it found it: after a normal stop and after its owner was SIGKILLed (the
next start sweeps what the dead one left).

These tests start their own node, so they run before the other files take the machine's one node
for the session (tests/e2e/conftest.py puts them first).

Run: .venv/bin/python -m pytest tests/e2e/test_node_lifecycle.py   (root)
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.cluster import node as realnode
from tests.cluster.cluster import new_state_dir
from tests.e2e import harness

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = pathlib.Path(__file__).resolve().parents[2]

# A pod's own headless record appears once the EndpointSlice controller and CoreDNS have seen
# the pod (about a second after it starts): resolve with retries, as torchrun's rendezvous does.
DNS_CHECK = """
import json, socket, sys, time
out = {}
for name in sys.argv[1:]:
    for attempt in range(60):
        try:
            out[name] = socket.gethostbyname(name)
            break
        except socket.gaierror:
            if attempt == 59:
                raise
            time.sleep(0.5)
s = socket.create_connection(("kubernetes.default.svc", 443), timeout=10)
out["api_peer"] = s.getpeername()[0]
s.close()
print(json.dumps(out))
"""


def host_state() -> dict[str, Any]:
    """What the node must leave unchanged on the host."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {
        "sysctls": {k: pathlib.Path("/proc/sys", k).read_text().strip() for k in realnode.SYSCTLS},
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        "iptables": subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.count("\n-A "),
        "routes": subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout,
        "fixed_paths": {str(p): p.exists() for p in realnode.FIXED_PATHS},
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
    }


def clean(left: dict[str, Any]) -> bool:
    return not any(left.values())


def test_node_runs_restricted_pods_with_cluster_dns_and_leaves_nothing_behind(images: dict[str, harness.Image]) -> None:
    before = host_state()
    state_dir = new_state_dir()
    cp, node = realnode.start_cluster_with_node(state_dir)
    try:
        assert node.startup_seconds is not None
        print(f"\n[e2e] node Ready {node.startup_seconds:.1f}s after its control plane was up")
        # no default route in the node's namespace: a pod can reach this machine and nothing else
        routes = subprocess.run(realnode.in_netns("ip", "route", "show"), capture_output=True, text=True).stdout
        assert "default" not in routes, routes
        op = images["operator"]
        node.ensure_image(op.ref, op.archive, op.image_id)
        ns = "node-check"
        cp.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        }))
        # Pod Security `restricted` is enforced: a privileged pod is refused at admission
        bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged", "namespace": ns},
               "spec": {"containers": [{"name": "c", "image": op.ref, "securityContext": {"privileged": True}}]}}
        refused = cp.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert refused.returncode != 0 and "restricted" in refused.stderr, refused.stderr
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers", "namespace": ns},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "dns-check"},
                        "ports": [{"name": "p", "port": 29500}]}}
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "dns-check", "namespace": ns, "labels": {"app": "dns-check"}},
            "spec": {
                "restartPolicy": "Never", "hostname": "dns-check", "subdomain": "peers",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "check", "image": op.ref, "imagePullPolicy": "Never",
                    "command": ["python", "-c", DNS_CHECK, "kubernetes.default.svc.cluster.local",
                                f"dns-check.peers.{ns}.svc.cluster.local", f"peers.{ns}.svc"],
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
            },
        }
        cp.kubectl("apply", "-f", "-", input=json.dumps(svc) + "\n---\n" + json.dumps(pod))
        deadline = time.monotonic() + 120
        phase = ""
        while time.monotonic() < deadline:
            phase = cp.request("GET", f"/api/v1/namespaces/{ns}/pods/dns-check").get("status", {}).get("phase", "")
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.5)
        logs = cp.kubectl("logs", "dns-check", "-n", ns, check=False)
        assert phase == "Succeeded", f"{phase}\n{logs.stdout}{logs.stderr}\n{node.diagnostics()}"
        got = json.loads(logs.stdout.strip().splitlines()[-1])
        pod_ip = cp.request("GET", f"/api/v1/namespaces/{ns}/pods/dns-check")["status"]["podIP"]
        assert got["kubernetes.default.svc.cluster.local"] == "10.0.0.1", got
        assert got[f"dns-check.peers.{ns}.svc.cluster.local"] == pod_ip, got
        assert got[f"peers.{ns}.svc"] == pod_ip, got
        assert got["api_peer"] == "10.0.0.1", got
    finally:
        node.stop()
        cp.stop()
    left = realnode.leftovers()
    assert clean(left), left
    assert host_state() == before


def test_a_node_whose_owner_was_killed_is_swept_by_the_next_start() -> None:
    before = host_state()
    state_dir = new_state_dir()
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.node_probe", str(state_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY") or time.monotonic() > deadline:
            break
    assert lines and lines[-1].startswith("READY"), "".join(lines[-50:])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(2)  # PDEATHSIG takes the node's processes down; shims and the netns stay
    left = realnode.leftovers()
    assert left["netns"] and left["shims"], left  # the kill really left a node behind
    with realnode.LOCK_FILE.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what the next start does before anything else
        realnode.sweep()
    left = realnode.leftovers()
    assert clean(left), left
    assert host_state() == before

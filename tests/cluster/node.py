"""A real Kubernetes node for the test control plane: containerd + runc, CNI (bridge), kubelet,
kube-proxy (iptables) and CoreDNS, all inside one network namespace that the harness creates.

Layout (one node per machine, guarded by a lock)::

    host                      | netns ftop-node (everything of the node)
    kube-apiserver, etcd, ... | containerd, kubelet, kube-proxy, CoreDNS, Prometheus (tests)
    10.200.0.1 (ftop-h) <-veth-> 10.200.0.2 (ftop-n) -- bridge ftop-cni0 10.244.0.1/24 -- pods

The namespace has no default route: pods reach the API server and servers the tests start on
10.200.0.1, and nothing else (an unknown address is unreachable, not sent anywhere). iptables
rules of kube-proxy and the CNI plugins live in that namespace and go away with it; the host's
routing table and firewall are not touched. The API server binds 10.200.0.1 (see
``ControlPlane(advertise_address=...)``), so pods reach it through the ``kubernetes`` Service.

What the node changes outside its own directories is recorded and undone by ``stop()`` and, after
a crash, by the next ``start()`` (``sweep()``): kernel sysctls the kubelet sets, its cgroups
(``/ftop-node`` in every controller), mounts under its directories, containerd shims, and the
fixed paths the kubelet and CNI write (``/var/lib/kubelet``, ``/var/log/containers``,
``/var/lib/cni``) when they did not exist before.

Used by ``tests/e2e`` (pytest fixtures) and ``python -m tests.cluster node-up`` (by hand).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from tests.cluster import pki
from tests.cluster.cluster import SERVICE_CIDR, ClusterError, ControlPlane, eprint, write_kubeconfig
from tests.cluster.images import PAUSE_REF, pause_archive
from tests.cluster.process import Component, pid_cmdline, tail

NETNS = "ftop-node"
HOST_VETH, NODE_VETH = "ftop-h", "ftop-n"
HOST_IP, NODE_IP = "10.200.0.1", "10.200.0.2"
LINK_PREFIX = 30
BRIDGE = "ftop-cni0"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_DNS_IP = "10.0.0.10"  # inside cluster.SERVICE_CIDR
NODE_NAME = "ftop-node"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = PAUSE_REF

# Persistent (images survive between runs, like a real node's) and per-run directories.
VAR_DIR = Path("/var/lib/ftop-node")
RUN_DIR = Path("/run/ftop-node")
CONTAINERD_ROOT = VAR_DIR / "containerd"
KUBELET_ROOT = VAR_DIR / "kubelet"
POD_LOGS = VAR_DIR / "pod-logs"
CONTAINERD_STATE = RUN_DIR / "containerd"
CONTAINERD_SOCK = RUN_DIR / "containerd.sock"
LOCK_FILE = Path("/run/ftop-node.lock")
RECORD = VAR_DIR / "host-record.json"  # what to restore, written before anything changes
CGROUP_ROOT = "ftop-node"
CGROUP_FS = Path("/sys/fs/cgroup")

# Kernel settings the kubelet changes on start (its "kernel defaults"): restored afterwards.
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
# Fixed paths outside the node's directories that the kubelet, containerd or CNI create.
FIXED_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
    Path("/etc/cni"),
)

COMPONENTS = ("containerd", "kubelet", "kube-proxy", "coredns")


class NodeError(ClusterError):
    """The node failed to start; the message carries the tail of every component's log."""


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_netns(*argv: str) -> list[str]:
    """``argv`` run inside the node's network namespace, and only that: not ``ip netns exec``,
    which also unshares the mount namespace and remounts /sys (the kubelet would then see no
    cgroup mounts, and containerd would not see the volumes the kubelet mounts)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


def netns_exists() -> bool:
    return Path(f"/run/netns/{NETNS}").exists()


def cgroup_controllers() -> list[Path]:
    """Mounted cgroup hierarchies (v1 controllers and the v2 one) this machine has."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] in ("cgroup", "cgroup2"):
            out.append(Path(parts[1]))
    return out


def mounts_under(*roots: Path) -> list[str]:
    """Mount points below any of ``roots``, deepest first."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point == str(r) or point.startswith(str(r) + "/") for r in roots):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def shim_pids() -> list[int]:
    """containerd shims started by this node's containerd (they outlive it by design)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = pid_cmdline(int(entry.name))
        if argv and "containerd-shim" in argv[0] and str(CONTAINERD_SOCK) in argv:
            pids.append(int(entry.name))
    return pids


def cgroup_pids() -> list[int]:
    """Every process in the node's cgroups (pods' containers and their shims' children)."""
    pids: set[int] = set()
    for ctrl in cgroup_controllers():
        base = ctrl / CGROUP_ROOT
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def leftovers() -> dict[str, Any]:
    """What a stopped node must not leave behind (empty values when clean)."""
    cgroups = [str(c / CGROUP_ROOT) for c in cgroup_controllers() if (c / CGROUP_ROOT).exists()]
    links = _run("ip", "-o", "link", "show", check=False).stdout
    iptables = _run("iptables-save", check=False).stdout
    return {
        "netns": netns_exists(),
        "links": [ln.split(":")[1].strip() for ln in links.splitlines() if "ftop-" in ln],
        "host_iptables_rules": [ln for ln in iptables.splitlines() if "ftop" in ln or "KUBE" in ln],
        "mounts": mounts_under(VAR_DIR, RUN_DIR),
        "shims": shim_pids(),
        "cgroup_pids": cgroup_pids(),
        "cgroups": cgroups,
        "run_dir": RUN_DIR.exists(),
    }


def _read_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS}


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def sweep() -> None:
    """Undo everything a node (running or crashed) did to this machine, from the record file.

    Safe to call any number of times; the caller holds the node lock."""
    # processes first: pods' containers (by cgroup) and the shims (by their containerd socket)
    for _ in range(20):
        pids = cgroup_pids() + shim_pids()
        if not pids:
            break
        _kill(pids)
        time.sleep(0.1)
    for point in mounts_under(VAR_DIR, RUN_DIR):
        _run("umount", "-l", point, check=False)
    if netns_exists():
        _run("ip", "netns", "delete", NETNS, check=False)
    with contextlib.suppress(FileNotFoundError):
        Path(f"/run/netns/{NETNS}").unlink()
    if Path(f"/sys/class/net/{HOST_VETH}").exists():
        _run("ip", "link", "delete", HOST_VETH, check=False)
    for ctrl in cgroup_controllers():
        base = ctrl / CGROUP_ROOT
        if base.is_dir():  # children before parents
            for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=str, reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()
    try:
        record = json.loads(RECORD.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        record = {}
    for key, value in record.get("sysctls", {}).items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text(value)
    for path in record.get("created_paths", []):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    shutil.rmtree(KUBELET_ROOT, ignore_errors=True)
    shutil.rmtree(POD_LOGS, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        RECORD.unlink()


class RealNode:
    """One real node: ``prepare()`` (network, before the control plane, whose API server binds
    ``HOST_IP``), then ``start(cp)`` (components), ``stop()`` (everything, idempotent)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "node"
        self.log_dir = state_dir / "logs"
        self.cp: ControlPlane | None = None
        self.components: dict[str, Component] = {}
        self._lock: IO[str] | None = None
        self.startup_seconds: float | None = None

    @property
    def ctr_argv(self) -> list[str]:
        return ["ctr", "--address", str(CONTAINERD_SOCK), "--namespace", "k8s.io"]

    # ---- start ----------------------------------------------------------------------------
    def prepare(self) -> RealNode:
        """Take the machine's node lock, undo what a crashed node left, record the host's
        settings, create the network namespace and the veth."""
        self._lock = LOCK_FILE.open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise NodeError(f"another real node runs on this machine ({LOCK_FILE} is locked)") from None
        try:
            sweep()
            self._record_host()
            self._network()
            self._cgroups()
        except BaseException:
            self.stop()
            raise
        return self

    def start(self, cp: ControlPlane, timeout: float = 120.0) -> RealNode:
        if cp.advertise_address != HOST_IP:
            raise ValueError(f"the control plane must advertise {HOST_IP} for a real node")
        if self._lock is None:
            raise RuntimeError("prepare() first")
        self.cp = cp
        t0 = time.monotonic()
        try:
            self._files()
            deadline = t0 + timeout
            self._launch("containerd", ["containerd", "--config", str(self.dir / "containerd.toml")])
            self._wait("containerd", self._containerd_ready, deadline)
            self._import_pause()
            self._bootstrap_api()
            self._launch("kubelet", self._kubelet_argv())
            self._launch("kube-proxy", self._kube_proxy_argv())
            self._launch("coredns", [str(cp.tool("coredns")), "-conf", str(self.dir / "Corefile")])
            self._wait("node Ready", self._node_ready, deadline)
            self._wait("kube-dns endpoints in iptables", self._proxy_ready, deadline)
            self.startup_seconds = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def _record_host(self) -> None:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        record = {
            "sysctls": _read_sysctls(),
            "created_paths": [str(p) for p in FIXED_PATHS if not p.exists()],
        }
        RECORD.write_text(json.dumps(record, indent=2))

    def _network(self) -> None:
        _run("ip", "netns", "add", NETNS)
        _run("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NODE_VETH, "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_VETH)
        _run("ip", "link", "set", HOST_VETH, "up")
        _run(*in_netns("ip", "addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", NODE_VETH))
        _run(*in_netns("ip", "link", "set", NODE_VETH, "up"))
        _run(*in_netns("ip", "link", "set", "lo", "up"))
        # kube-proxy's DNAT needs bridged pod traffic to pass iptables (per namespace)
        _run(*in_netns("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"))
        # Service addresses: route them to the veth so locally generated packets reach
        # kube-proxy's OUTPUT DNAT (never sent: every ClusterIP is rewritten or rejected)
        _run(*in_netns("ip", "route", "add", SERVICE_CIDR, "dev", NODE_VETH))

    def _files(self) -> None:
        cp = self.cp
        assert cp is not None
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        for p in (CONTAINERD_ROOT, CONTAINERD_STATE, KUBELET_ROOT, POD_LOGS, RUN_DIR / "ipam"):
            p.mkdir(parents=True, exist_ok=True)
        (d / "cni").mkdir(exist_ok=True)
        (d / "containerd.toml").write_text(
            f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{CONTAINERD_SOCK}"
[ttrpc]
  address = "{RUN_DIR / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{VAR_DIR / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: writing a negative oom_score_adj fails every sandbox
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d / 'cni'}"
"""
        )
        (d / "cni" / "10-ftop.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "ftop-pods",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(RUN_DIR / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        # pods see only the cluster's DNS (dnsPolicy Default would otherwise get the host's)
        (d / "resolv.conf").write_text(f"nameserver {CLUSTER_DNS_IP}\n")
        ca = cp.pki
        crt, key = pki.client_cert(ca, "kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
        write_kubeconfig(d / "kubelet.kubeconfig", server=cp.api_url, ca_file=ca.ca_crt,
                         user=f"system:node:{NODE_NAME}", client_cert=crt, client_key=key)
        crt, key = pki.client_cert(ca, "kube-proxy", "/CN=system:kube-proxy")
        write_kubeconfig(d / "kube-proxy.kubeconfig", server=cp.api_url, ca_file=ca.ca_crt,
                         user="system:kube-proxy", client_cert=crt, client_key=key)
        crt, key = pki.client_cert(ca, "coredns", "/CN=system:coredns")
        write_kubeconfig(d / "coredns.kubeconfig", server=cp.api_url, ca_file=ca.ca_crt,
                         user="system:coredns", client_cert=crt, client_key=key)
        serving_crt, serving_key = pki.leaf(
            ca,
            "kubelet-serving",
            f"/O=system:nodes/CN=system:node:{NODE_NAME}",
            [
                "basicConstraints=CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth",
                f"subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}",
            ],
        )
        (d / "kubelet.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": NODE_IP,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": NODE_IP,
                    "healthzPort": 10248,
                    "tlsCertFile": str(serving_crt),
                    "tlsPrivateKeyFile": str(serving_key),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(ca.ca_crt)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{CGROUP_ROOT}",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "clusterDomain": CLUSTER_DOMAIN,
                    "clusterDNS": [CLUSTER_DNS_IP],
                    "resolvConf": str(d / "resolv.conf"),
                    "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
                    "podLogsDir": str(POD_LOGS),
                    # images are imported, never pulled: the kubelet must not collect them
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {
                        "memory.available": "200Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "serializeImagePulls": False,
                    "maxPods": 30,
                    "rotateCertificates": False,
                    "serverTLSBootstrap": False,
                    "registerNode": True,
                    "syncFrequency": "10s",
                    "nodeStatusUpdateFrequency": "5s",
                    "shutdownGracePeriod": "0s",
                },
                indent=2,
            )
        )
        (d / "Corefile").write_text(
            f""".:53 {{
    errors
    health {NODE_IP}:8091
    ready {NODE_IP}:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {d / 'coredns.kubeconfig'}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""
        )

    def _cgroups(self) -> None:
        for ctrl in cgroup_controllers():
            base = ctrl / CGROUP_ROOT
            base.mkdir(exist_ok=True)
            if ctrl.name == "cpuset":  # a new cpuset group starts with no CPUs and no memory
                for f in ("cpuset.cpus", "cpuset.mems"):
                    with contextlib.suppress(OSError):
                        (base / f).write_text((ctrl / f).read_text())

    def _launch(self, name: str, argv: list[str]) -> None:
        comp = Component(f"node-{name}", in_netns(*argv), self.log_dir / f"node-{name}.log")
        comp.start(detach=False)
        self.components[name] = comp

    def _wait(self, what: str, ready: Any, deadline: float) -> None:
        while True:
            for name, comp in self.components.items():
                if not comp.alive():
                    raise NodeError(
                        f"{name} exited (code {comp.exit_code()}) while waiting for {what}\n"
                        + self.diagnostics()
                    )
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise NodeError(f"timed out waiting for {what}\n" + self.diagnostics())
            time.sleep(0.3)

    def _containerd_ready(self) -> bool:
        return _run(*self.ctr_argv, "version", check=False, timeout=10).returncode == 0

    def _import_pause(self) -> None:
        if not self.has_image(PAUSE_IMAGE):
            self.import_archive(pause_archive(self.dir / "pause"))

    def _bootstrap_api(self) -> None:
        """What a cluster's add-ons would create: RBAC for CoreDNS and the kube-dns Service with
        its EndpointSlice on the node's address (CoreDNS runs as a process of the node)."""
        cp = self.cp
        assert cp is not None
        manifests = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "ftop:coredns"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:coredns",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "system:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "kube-dns",
                    "namespace": "kube-system",
                    "labels": {"k8s-app": "kube-dns"},
                },
                "spec": {
                    "clusterIP": CLUSTER_DNS_IP,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ],
                },
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "kube-dns-node",
                    "namespace": "kube-system",
                    "labels": {
                        "kubernetes.io/service-name": "kube-dns",
                        "endpointslice.kubernetes.io/managed-by": "finetune-test-harness",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        ]
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                   input="\n---\n".join(json.dumps(m) for m in manifests))

    def _kubelet_argv(self) -> list[str]:
        d = self.dir
        assert self.cp is not None
        return [
            str(self.cp.tool("kubelet")),
            f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={d / 'kubelet.kubeconfig'}",
            f"--root-dir={KUBELET_ROOT}",
            f"--cert-dir={d / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--node-labels=finetune.dev/real-node=true",
            "--v=1",
        ]

    def _kube_proxy_argv(self) -> list[str]:
        assert self.cp is not None
        return [
            str(self.cp.tool("kube-proxy")),
            f"--kubeconfig={self.dir / 'kube-proxy.kubeconfig'}",
            "--proxy-mode=iptables",
            f"--hostname-override={NODE_NAME}",
            f"--bind-address={NODE_IP}",
            f"--cluster-cidr={POD_SUBNET}",
            # never touch host-wide conntrack settings
            "--conntrack-max-per-core=0",
            "--conntrack-min=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--iptables-localhost-nodeports=false",
            f"--nodeport-addresses={NODE_IP}/32",
            f"--metrics-bind-address={NODE_IP}:10249",
            f"--healthz-bind-address={NODE_IP}:10256",
            "--v=1",
        ]

    def _node_ready(self) -> bool:
        assert self.cp is not None
        node = self.cp.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )

    def _proxy_ready(self) -> bool:
        rules = _run(*in_netns("iptables-save", "-t", "nat"), check=False).stdout
        return f"{CLUSTER_DNS_IP}/32" in rules and "KUBE-SVC" in rules

    # ---- images ---------------------------------------------------------------------------
    def has_image(self, ref: str) -> bool:
        out = _run(*self.ctr_argv, "images", "ls", "-q", check=False).stdout
        return ref in out.split()

    def ensure_image(self, ref: str, archive: Path, image_id: str) -> float:
        """Import ``archive`` unless ``ref`` already is the image ``image_id`` (images persist
        in the node's store between runs, as on a real node); returns the seconds taken."""
        marker = CONTAINERD_ROOT / "ftop-imported.json"
        try:
            imported = json.loads(marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            imported = {}
        if imported.get(ref) == image_id and self.has_image(ref):
            return 0.0
        took = self.import_archive(archive)
        if not self.has_image(ref):
            raise NodeError(f"{archive} did not provide {ref}")
        imported[ref] = image_id
        marker.write_text(json.dumps(imported, indent=2))
        return took

    def import_archive(self, archive: Path, timeout: float = 1500) -> float:
        """Import a ``docker save`` / OCI archive into the node's image store (seconds taken)."""
        t0 = time.monotonic()
        _run(*self.ctr_argv, "images", "import", str(archive), timeout=timeout)
        return time.monotonic() - t0

    # ---- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop pods, kubelet, kube-proxy, CoreDNS and containerd, then undo every change."""
        kubelet = self.components.get("kubelet")
        if kubelet is not None:
            kubelet.stop(timeout=10)
        if "containerd" in self.components and self.components["containerd"].alive():
            # stop every container while containerd can still tear down their sandboxes
            tasks = _run(*self.ctr_argv, "tasks", "ls", "-q", check=False, timeout=20).stdout.split()
            for task in tasks:
                _run(*self.ctr_argv, "tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=20)
        for name in ("kube-proxy", "coredns", "containerd"):
            comp = self.components.get(name)
            if comp is not None:
                comp.stop(timeout=10)
        if self._lock is not None:
            sweep()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # ---- diagnostics ----------------------------------------------------------------------
    def diagnostics(self, lines: int = 25) -> str:
        parts = []
        for name in COMPONENTS:
            log = self.log_dir / f"node-{name}.log"
            comp = self.components.get(name)
            state = "not started" if comp is None else ("running" if comp.alive() else "exited")
            parts.append(f"----- node {name} ({state}), last {lines} lines of {log} -----")
            parts.append(tail(log, lines) or "(empty)")
        return "\n".join(parts)


def start_cluster_with_node(state_dir: Path) -> tuple[ControlPlane, RealNode]:
    """The composition ``tests/e2e`` uses: the node's network, then a control plane that
    advertises the host end of it (its API server binds that address), then the node's
    components. Whatever started is stopped again on error."""
    node = RealNode(state_dir).prepare()
    cp = ControlPlane(state_dir, nodes=0, advertise_address=HOST_IP)
    try:
        cp.start()
        node.start(cp)
    except BaseException:
        node.stop()
        cp.stop()
        raise
    eprint(f"[tests.cluster.node] node {NODE_NAME} Ready in {node.startup_seconds:.1f}s")
    return cp, node

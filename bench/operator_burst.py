"""Burst benchmark: N FineTuneJobs applied to a real API server; how fast does the operator turn
them into Jobs, and how much memory does it take?

Run:
    .venv/bin/python bench/operator_burst.py                   # 200 jobs, all at once
    .venv/bin/python bench/operator_burst.py --jobs 1000       # 1000 jobs, all at once
    .venv/bin/python bench/operator_burst.py --jobs 300 --rate 10   # 10 jobs/s
    .venv/bin/python bench/operator_burst.py --finished 10000  # RSS with 10,000 finished jobs kept, then the burst

It starts a private control plane (tests/cluster: etcd, kube-apiserver, controller-manager,
scheduler, kwok fake nodes), installs crds/ and the operator's RBAC, and runs the operator as its
ServiceAccount (exactly as the integration tests do). Every job goes through the real path:
operator -> validation pod -> scheduler -> kwok "runs" it and the benchmark, playing the kubelet's
container, marks it Succeeded -> operator -> ConfigMap + Service + training Job. Jobs carry a
queueName, so their training Jobs are created suspended (as under Kueue) and start no pods.

Prints: time until every Job exists, p50/p99 latency apply -> validation pod, validation pod
Succeeded -> Job (both the operator's own reaction), apply -> Job end to end (which also contains
the scheduler, kwok and this script playing the validation container),
the API server's own create latency for the same objects (the baseline), and the operator's peak
RSS (VmHWM) and CPU time. Targets: 1000 jobs within 60 s, p99 <= 2 s at 10 jobs/s, RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from finetune_operator import constants as c  # noqa: E402
from kubernetes import client as k8s  # noqa: E402

from tests.cluster import kwok  # noqa: E402
from tests.cluster.cluster import ControlPlane, new_state_dir  # noqa: E402
from tests.operator.cluster_support import OperatorProcess, install  # noqa: E402

ct = c.contract


def spec() -> dict[str, Any]:
    return {
        "model": {"uri": "hf://org/tiny-model"},
        "dataset": {"uri": "s3://bench-data/train.jsonl", "format": "chat"},
        "method": {"type": "lora"},
        "resources": {"nodes": 2, "gpusPerNode": 1},
        "output": {"uri": "s3://bench-out/run/"},
        "queueName": "bench",
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def drain(resp: Any) -> None:
    """Read a raw (not decoded) client response to the end and give its connection back."""
    resp.read()
    resp.release_conn()


class Watcher:
    """Records when each validation pod and Job is first seen, and plays the validation pod's
    container: a Running validation pod is told (kwok annotation) to exit 0. Watches are read as
    raw JSON lines (no client model objects), so the benchmark's own overhead stays small."""

    def __init__(self, api: k8s.ApiClient, ns: str) -> None:
        self.core = k8s.CoreV1Api(api)
        self.batch = k8s.BatchV1Api(api)
        self.ns = ns
        self.validator_seen: dict[str, float] = {}
        self.validator_done: dict[str, float] = {}
        self.job_seen: dict[str, float] = {}
        self.passed: set[str] = set()
        self.pool = ThreadPoolExecutor(8)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._pods, daemon=True), threading.Thread(target=self._jobs, daemon=True)]
        for t in self.threads:
            t.start()

    def _stream(self, list_fn: Any, **kw: Any) -> Any:
        rv = ""
        while not self.stop.is_set():
            try:
                resp = list_fn(self.ns, watch=True, resource_version=rv or None, timeout_seconds=30, _preload_content=False, **kw)
                for line in resp:
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        yield obj
                    if self.stop.is_set():
                        return
            except Exception:  # a watch that ends or breaks is simply restarted
                rv = ""
                time.sleep(0.1)

    def _pods(self) -> None:
        sel = f"{ct.LABEL_COMPONENT}={ct.COMPONENT_VALIDATOR}"
        for pod in self._stream(self.core.list_namespaced_pod, label_selector=sel):
            now = time.monotonic()
            job = pod["metadata"]["labels"].get(ct.LABEL_JOB_NAME)
            self.validator_seen.setdefault(job, now)
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Succeeded":
                self.validator_done.setdefault(job, now)
            if phase == "Running" and job not in self.passed:
                self.passed.add(job)
                self.pool.submit(self._pass, pod["metadata"]["name"])

    def _pass(self, pod: str) -> None:
        # The response is not decoded into client models: the benchmark's own CPU competes with
        # the control plane and the operator on this machine, so it does as little as it can.
        body = {"metadata": {"annotations": kwok.pod_annotations(kwok.SUCCEEDED)}}
        drain(self.core.patch_namespaced_pod(pod, self.ns, body, _preload_content=False))

    def _jobs(self) -> None:
        for job in self._stream(self.batch.list_namespaced_job):
            self.job_seen.setdefault(job["metadata"]["name"], time.monotonic())


def api_writes(cluster: ControlPlane) -> dict[str, float]:
    """The API server's own count of mutating requests, by verb and resource[/subresource]."""
    counts: dict[str, float] = {}
    for line in str(cluster.request("GET", "/metrics")).splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        fields = dict(item.split("=", 1) for item in labels.split(",") if "=" in item)
        verb = fields.get("verb", "").strip('"')
        if verb not in ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"):
            continue
        what = fields.get("resource", "").strip('"') + ("/" + sub if (sub := fields.get("subresource", "").strip('"')) else "")
        key = f"{verb} {what}"
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def create_finished(custom: Any, ns: str, count: int, clients: int) -> None:
    """FineTuneJobs whose status says Succeeded (written through the status subresource, as the
    operator would have): what a cluster accumulates when jobs are kept without a TTL."""
    done = "2026-01-01T12:00:00Z"
    status = {
        "phase": c.PHASE_SUCCEEDED,
        "message": "adapter at s3://bench-out/run/",
        "attempt": 0,
        "restarts": 0,
        "startTime": done,
        "completionTime": done,
        "conditions": [
            {"type": "Validated", "status": "True", "reason": "ValidationPassed", "message": "ok", "lastTransitionTime": done},
            {"type": "Succeeded", "status": "True", "reason": "TrainingSucceeded", "message": "done", "lastTransitionTime": done},
        ],
        "output": {"adapterUri": "s3://bench-out/run/adapter/", "manifestUri": "s3://bench-out/run/manifest.json", "sha256": "0" * 64},
    }

    def one(i: int) -> None:
        name = f"done-{i:05d}"
        body = {"apiVersion": ct.API_VERSION, "kind": ct.KIND_JOB, "metadata": {"name": name, "namespace": ns}, "spec": {**spec(), "suspend": True}}
        drain(custom.create_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, body, _preload_content=False))
        drain(custom.patch_namespaced_custom_object_status(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, name, {"status": status}, _preload_content=False))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))


def metric(proc: OperatorProcess, series: str) -> float:
    try:
        text = proc.metrics()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0.0, help="jobs per second; 0 = all at once")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--clients", type=int, default=8, help="concurrent creates in a burst")
    ap.add_argument("--finished", type=int, default=0, help="FineTuneJobs already Succeeded before the operator starts (memory of retained jobs)")
    args = ap.parse_args()

    nodes = max(2, args.jobs // 90 + 2)  # 110 pods per fake node; one validation pod per job
    cluster = ControlPlane(new_state_dir(), nodes=nodes)
    print(f"starting control plane with {nodes} fake nodes ...", flush=True)
    cluster.start()
    print(f"control plane up in {cluster.startup_seconds:.1f}s", flush=True)
    try:
        install(cluster)
        api = cluster.api_client()
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": ns}})
        if args.finished:
            t = time.monotonic()
            create_finished(custom, ns, args.finished, args.clients)
            print(f"{args.finished} finished FineTuneJobs created in {time.monotonic() - t:.0f} s", flush=True)
        proc = OperatorProcess(cluster, cluster.state_dir)
        proc.start(extra=("--lease-seconds", "15", "--renew-deadline", "10", "--retry-period", "2"))  # the defaults, not the tests' short Lease
        assert proc.proc is not None
        pid = proc.proc.pid
        if args.finished:
            t = time.monotonic()
            while metric(proc, 'finetune_operator_jobs{phase="Succeeded"}') < args.finished and time.monotonic() - t < args.timeout:
                time.sleep(0.5)
            listed = time.monotonic() - t
            time.sleep(15.0)  # settled: the listing's transient memory handed back
            print(f"operator with {args.finished} finished jobs listed in {listed:.0f} s: RSS {vm_rss_mb(pid):.1f} MB 15 s later "
                  f"(peak {vm_hwm_mb(pid):.1f} MB); target <= 200 MB", flush=True)
        watcher = Watcher(api, ns)
        time.sleep(1.0)
        rss_idle = vm_hwm_mb(pid)
        cpu0 = cpu_seconds(pid)
        procs = {name: comp.pid for name, comp in cluster.components.items() if comp.pid}
        procs.update(operator=pid, benchmark=os.getpid())
        cpu_before = {name: cpu_seconds(p) for name, p in procs.items()}
        writes_before = api_writes(cluster)

        names = [f"burst-{i:04d}" for i in range(args.jobs)]
        applied: dict[str, float] = {}
        create_latency: list[float] = []
        lock = threading.Lock()

        def create(name: str) -> None:
            body = {"apiVersion": ct.API_VERSION, "kind": ct.KIND_JOB, "metadata": {"name": name, "namespace": ns}, "spec": spec()}
            t = time.monotonic()
            drain(custom.create_namespaced_custom_object(ct.GROUP, ct.VERSION, ns, ct.PLURAL_JOB, body, _preload_content=False))
            with lock:
                applied[name] = t
                create_latency.append(time.monotonic() - t)

        t0 = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            futures = []
            for i, name in enumerate(names):
                if args.rate > 0:
                    delay = t0 + i / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                futures.append(pool.submit(create, name))
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            print(f"{len(failed)} creates failed; first: {failed[0]!r}", flush=True)
        t_applied = time.monotonic() - t0
        deadline = time.monotonic() + args.timeout
        while len(watcher.job_seen) < len(names) and time.monotonic() < deadline:
            time.sleep(0.1)
        t_all = time.monotonic() - t0
        watcher.stop.set()
        missing = len(names) - len(watcher.job_seen)
        to_job = [watcher.job_seen[n] - applied[n] for n in names if n in watcher.job_seen]
        to_validator = [watcher.validator_seen[n] - applied[n] for n in names if n in watcher.validator_seen]
        done_to_job = [watcher.job_seen[n] - watcher.validator_done[n] for n in names if n in watcher.job_seen and n in watcher.validator_done]
        operator_share = [
            (watcher.validator_seen[n] - applied[n]) + (watcher.job_seen[n] - watcher.validator_done[n])
            for n in names
            if n in watcher.job_seen and n in watcher.validator_done and n in watcher.validator_seen
        ]
        rss_peak = vm_hwm_mb(pid)
        cpu = cpu_seconds(pid) - cpu0
        cpu_used = {name: cpu_seconds(p) - cpu_before[name] for name, p in procs.items()}
        writes = {k: v - writes_before.get(k, 0.0) for k, v in api_writes(cluster).items()}
        writes = {k: v for k, v in writes.items() if v > 0}
        mode = f"{args.rate:g} jobs/s" if args.rate > 0 else "burst"
        print(f"\n== operator_burst: {args.jobs} FineTuneJobs, {mode}, {nodes} fake nodes ==")
        print(f"applied all in                  {t_applied:7.2f} s")
        print(f"every Job exists after          {t_all:7.2f} s{'' if not missing else f'  ({missing} MISSING after timeout)'}")
        print(f"apply -> validation pod  p50 {pct(to_validator, 50):6.3f} s   p99 {pct(to_validator, 99):6.3f} s   max {max(to_validator, default=float('nan')):6.3f} s")
        print(f"validation done -> Job   p50 {pct(done_to_job, 50):6.3f} s   p99 {pct(done_to_job, 99):6.3f} s   (operator)")
        print(f"operator's share         p50 {pct(operator_share, 50):6.3f} s   p99 {pct(operator_share, 99):6.3f} s   (apply->pod + validated->Job)")
        print(f"apply -> Job             p50 {pct(to_job, 50):6.3f} s   p99 {pct(to_job, 99):6.3f} s   max {max(to_job, default=float('nan')):6.3f} s")
        print(f"baseline: API create     p50 {pct(create_latency, 50):6.3f} s   p99 {pct(create_latency, 99):6.3f} s   (p99 ratio Job/create: {pct(to_job, 99) / max(pct(create_latency, 99), 1e-9):.1f}x)")
        print(f"operator peak RSS (VmHWM)       {rss_peak:7.1f} MB   (idle before the burst: {rss_idle:.1f} MB)")
        print(f"load average                    {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"operator CPU time               {cpu:7.1f} s   ({statistics.mean([cpu / max(t_all, 1e-9)]) * 100:.0f}% of one core)")
        print("CPU seconds during the run     " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(cpu_used.items(), key=lambda kv: -kv[1])))
        print(f"                                (sum {sum(cpu_used.values()):.1f} s of {t_all * (os.cpu_count() or 1):.1f} core-seconds available)")
        apiserver_cpu = cpu_used.get("kube-apiserver", 0.0)
        print(f"operator CPU / API server CPU   {cpu / max(apiserver_cpu, 1e-9):7.2f}   (target <= 0.25; {cpu / max(args.jobs, 1) * 1000:.1f} ms per job)")
        agent = f"{c.FIELD_MANAGER}/{proc.identity}"
        own: dict[str, int] = {}
        for e in cluster.audit_events():
            if e.get("userAgent") == agent and (e.get("objectRef") or {}).get("resource") != "leases":
                ref = e.get("objectRef") or {}
                what = f"{e.get('verb')} {ref.get('resource', '')}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                own[what] = own.get(what, 0) + 1
        own_total = sum(own.values())
        print(f"operator's own writes (audit)   {own_total:7d}   ({own_total / max(args.jobs, 1):.2f} per job, events included; target <= 6)")
        for k, v in sorted(own.items(), key=lambda kv: -kv[1]):
            print(f"    {k:<40} {v:7d}   ({v / max(args.jobs, 1):.2f} per job)")
        total_writes = sum(writes.values())
        print(f"API writes during the run       {total_writes:7.0f}   ({total_writes / max(args.jobs, 1):.1f} per job)")
        for k, v in sorted(writes.items(), key=lambda kv: -kv[1]):
            print(f"    {k:<40} {v:7.0f}   ({v / max(args.jobs, 1):.2f} per job)")
        print("targets: 1000 jobs <= 60 s; p99 <= 2 s at 10 jobs/s; RSS <= 150 MB")
        stats = {}
        for line in proc.metrics().splitlines():
            if line.startswith(
                (
                    "finetune_operator_reconcile_duration_seconds_count",
                    "finetune_operator_reconcile_duration_seconds_sum",
                    "finetune_operator_status_patches_total",
                    "finetune_operator_errors_total",
                    "finetune_operator_reconciles_coalesced_total",
                    "finetune_operator_reconciles_unchanged_total",
                )
            ):
                name, value = line.rsplit(" ", 1)
                stats[name] = float(value)
        n = stats.get("finetune_operator_reconcile_duration_seconds_count", 0.0)
        mean = stats.get("finetune_operator_reconcile_duration_seconds_sum", 0.0) / max(n, 1)
        patches = stats.get("finetune_operator_status_patches_total", 0.0)
        coalesced = stats.get("finetune_operator_reconciles_coalesced_total", 0.0)
        unchanged = stats.get("finetune_operator_reconciles_unchanged_total", 0.0)
        print(f"operator reconciles             {n:7.0f}   (mean {mean * 1000:.1f} ms incl. API calls; {patches:.0f} status patches)")
        print(f"    of which unchanged inputs   {unchanged:7.0f}   (no plan computed); events coalesced in the queue: {coalesced:.0f}")
        proc.stop()
        return 0 if not missing else 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())

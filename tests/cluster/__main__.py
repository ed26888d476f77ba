"""Start or stop a control plane that keeps running in the background.

Run:
    python -m tests.cluster up [--dir .cluster] [--nodes 2]   # make cluster-up
    python -m tests.cluster status [--dir .cluster]
    python -m tests.cluster down [--dir .cluster]             # make cluster-down
    python -m tests.cluster build                              # make cluster-build
    python -m tests.cluster bench [--runs 3]                   # warm start time, printed

``up`` writes ``<dir>/admin.kubeconfig`` (``export KUBECONFIG=$PWD/.cluster/admin.kubeconfig``)
and ``<dir>/state.json`` (PIDs, ports); component logs are in ``<dir>/logs/``. The pytest
fixture ``kube_cluster`` reuses this control plane while it is healthy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.cluster import binaries
from tests.cluster.cluster import DEFAULT_STATE_DIR, ClusterError, ControlPlane


def _up(state_dir: Path, nodes: int) -> int:
    existing = ControlPlane.attach(state_dir)
    if existing is not None and existing.healthy():
        print(f"already running: {existing.api_url}, kubeconfig {existing.kubeconfig}")
        return 0
    if existing is not None:  # stale or half-dead: clean it up first
        existing.stop()
    cp = ControlPlane(state_dir, nodes=nodes)
    try:
        cp.start(detach=True)
    except ClusterError as exc:
        print(f"control plane failed to start:\n{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: stopped the components that had started", file=sys.stderr)
        return 130
    print(f"control plane up in {cp.startup_seconds:.1f}s: {cp.api_url}")
    print(f"  export KUBECONFIG={cp.kubeconfig}")
    print(f"  nodes: {', '.join(cp.node_names)}; logs: {cp.log_dir}")
    return 0


def _down(state_dir: Path) -> int:
    cp = ControlPlane.attach(state_dir)
    if cp is None:
        print(f"no control plane recorded in {state_dir}")
        return 0
    pids = cp.pids()
    cp.stop()
    left = {n: alive for n, alive in cp.alive().items() if alive}
    if left:
        print(f"still running after stop: {left}", file=sys.stderr)
        return 1
    print(f"stopped {', '.join(f'{n} ({p})' for n, p in pids.items())}")
    return 0


def _status(state_dir: Path) -> int:
    cp = ControlPlane.attach(state_dir)
    if cp is None:
        print(f"no control plane recorded in {state_dir}")
        return 1
    healthy = cp.healthy()
    print(
        json.dumps(
            {
                "api_url": cp.api_url,
                "kubeconfig": str(cp.kubeconfig),
                "readyz": cp.readyz(),
                "components": {
                    n: {"pid": c.pid, "alive": c.alive()} for n, c in cp.components.items()
                },
                "healthy": healthy,
            },
            indent=2,
        )
    )
    return 0 if healthy else 1


def _bench(runs: int, nodes: int) -> int:
    """Start and stop a private control plane ``runs`` times; print each start time."""
    import shutil
    import statistics
    import time

    from tests.cluster.cluster import new_state_dir

    binaries.ensure_built()
    starts, stops = [], []
    for i in range(runs):
        cp = ControlPlane(new_state_dir(), nodes=nodes)
        try:
            cp.start()
        except ClusterError as exc:
            print(f"run {i + 1}: failed to start:\n{exc}", file=sys.stderr)
            return 1
        t = time.monotonic()
        cp.stop()
        stops.append(time.monotonic() - t)
        shutil.rmtree(cp.state_dir, ignore_errors=True)
        assert cp.startup_seconds is not None
        starts.append(cp.startup_seconds)
        print(
            f"run {i + 1}: start (to nodes Ready + default ServiceAccount) "
            f"{cp.startup_seconds:.1f}s, stop {stops[-1]:.1f}s",
            flush=True,
        )
    print(
        f"warm start: median {statistics.median(starts):.1f}s, min {min(starts):.1f}s, "
        f"max {max(starts):.1f}s over {runs} runs; stop median {statistics.median(stops):.1f}s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("up", "down", "status", "build", "bench"))
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="state directory (default: .cluster in the repository)",
    )
    parser.add_argument("--nodes", type=int, default=2, help="number of kwok fake nodes")
    parser.add_argument("--runs", type=int, default=3, help="bench: number of start/stop cycles")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(binaries.ensure_built())
        return 0
    if args.command == "bench":
        return _bench(args.runs, args.nodes)
    if args.command == "up":
        return _up(args.dir, args.nodes)
    if args.command == "down":
        return _down(args.dir)
    return _status(args.dir)


if __name__ == "__main__":
    sys.exit(main())

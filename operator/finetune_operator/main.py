"""finetune-operator: the FineTuneJob operator (kopf).

Run:
    finetune-operator                       # in a pod (ServiceAccount) or with $KUBECONFIG
    finetune-operator --standalone          # no leader election (development, single replica)
    python -m finetune_operator.main --metrics-port 8080 --liveness-port 8081

Needs the CRDs from crds/ and the RBAC in operator/finetune_operator/rbac.yaml. Replicas elect
one leader through a Lease (`leader.py`); the others wait without watching anything, and a leader
that loses its Lease exits (exit code 1), as controller-runtime managers do.
Metrics: http://<addr>:<metrics-port>/metrics; liveness: http://<addr>:<liveness-port>/healthz
(served by standbys too).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

# kopf imports the kubernetes client library, when it is installed, only to recognise its
# objects; this operator talks to the API server with aiohttp and kopf's own credential readers.
# Not loading the client's thousands of model classes saves ~40 MB of RSS per replica.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

import kopf  # noqa: E402
from aiohttp import web  # noqa: E402
from prometheus_client import start_http_server  # noqa: E402

from finetune_operator import constants as c  # noqa: E402
from finetune_operator import (  # noqa: E402
    handlers,  # noqa: F401  (registers the kopf handlers)
    kopf_fixes,
    leader,
    metrics,
)
from finetune_operator.kube import Kube  # noqa: E402

log = logging.getLogger("finetune_operator.main")
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Exit code of a replica that lost the leader Lease (its pod restarts and stands by).
EXIT_LOST_LEADERSHIP = 1


def _default_namespace() -> str:
    env = os.environ.get("FINETUNE_OPERATOR_NAMESPACE") or os.environ.get("POD_NAMESPACE")
    if env:
        return env
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def _default_identity() -> str:
    """Pod name (or host name) plus a random suffix: a restarted process is a new candidate."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "finetune-operator"
    return f"{base}_{uuid.uuid4().hex[:8]}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="finetune-operator", description="Run the FineTuneJob operator.")
    p.add_argument("--metrics-port", type=int, default=int(env("FINETUNE_OPERATOR_METRICS_PORT", "8080")), help="0 disables")
    p.add_argument("--metrics-addr", default=env("FINETUNE_OPERATOR_METRICS_ADDR", "0.0.0.0"))
    p.add_argument("--liveness-port", type=int, default=int(env("FINETUNE_OPERATOR_LIVENESS_PORT", "8081")), help="0 disables")
    p.add_argument(
        "--standalone",
        action="store_true",
        default=env("FINETUNE_OPERATOR_STANDALONE") == "1",
        help="no leader election: act at once (one replica only, development)",
    )
    p.add_argument("--leader-election-namespace", default=None, help="namespace of the leader Lease (default: the pod's namespace)")
    p.add_argument("--leader-election-id", default=env("FINETUNE_OPERATOR_LEADER_ELECTION_ID", c.LEASE_NAME), help="name of the leader Lease")
    p.add_argument("--identity", default=env("FINETUNE_OPERATOR_IDENTITY") or None, help="this replica's holder identity (default: pod name + random suffix)")
    p.add_argument("--lease-seconds", type=float, default=float(env("FINETUNE_OPERATOR_LEASE_SECONDS", str(leader.LEASE_SECONDS))))
    p.add_argument("--renew-deadline", type=float, default=float(env("FINETUNE_OPERATOR_RENEW_DEADLINE", str(leader.RENEW_DEADLINE_SECONDS))))
    p.add_argument("--retry-period", type=float, default=float(env("FINETUNE_OPERATOR_RETRY_PERIOD", str(leader.RETRY_PERIOD_SECONDS))))
    p.add_argument("--default-image", default=env("FINETUNE_OPERATOR_TRAINER_IMAGE", c.DEFAULT_IMAGE), help="trainer image of runtimes that name none")
    p.add_argument(
        "--default-runtime",
        default=env("FINETUNE_OPERATOR_DEFAULT_RUNTIME") or None,
        help="ClusterFineTuneRuntime of jobs without spec.runtimeRef (without it such jobs fail with RuntimeRequired)",
    )
    p.add_argument("--liveness", default=None, help="liveness endpoint URL (overrides --liveness-port), e.g. http://0.0.0.0:8081/healthz; served by standbys too")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="watch all namespaces (the default)")
    p.add_argument("--namespace", "-n", action="append", default=[], help="watch only these namespaces (repeatable)")
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env("FINETUNE_OPERATOR_RESYNC_SECONDS", "60")),
        help="how often every unfinished job is reconciled even without a watch event",
    )
    p.add_argument(
        "--progress-seconds",
        type=float,
        default=float(env("FINETUNE_OPERATOR_PROGRESS_SECONDS", "15")),
        help="how often rank 0's /progress of each running job is read into its status",
    )
    p.add_argument(
        "--image-pull-secrets",
        default=env("FINETUNE_OPERATOR_IMAGE_PULL_SECRETS", ""),
        help="comma-separated imagePullSecrets (in each job's namespace) of trainer and validation pods whose runtime names none",
    )
    p.add_argument(
        "--unconfirmed-deletion-seconds",
        type=float,
        default=float(env("FINETUNE_OPERATOR_UNCONFIRMED_DELETION_SECONDS", str(c.UNCONFIRMED_DELETION_SECONDS))),
        help="a restarting attempt's pod still there this long past its grace period (its node unreachable) is deleted with grace 0",
    )
    p.add_argument("--api-workers", type=int, default=int(env("FINETUNE_OPERATOR_API_WORKERS", "32")), help="concurrent API requests")
    p.add_argument("--log-level", default=env("FINETUNE_OPERATOR_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def _liveness_address(args: argparse.Namespace) -> tuple[str, int] | None:
    if args.liveness:
        url = urlsplit(args.liveness)
        return url.hostname or "0.0.0.0", url.port or 80
    return ("0.0.0.0", args.liveness_port) if args.liveness_port else None


async def _health_server(address: tuple[str, int] | None, is_leader: Callable[[], bool]) -> web.AppRunner | None:
    """/healthz on every replica, leader or standby (the event loop answering is what counts)."""
    if address is None:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": is_leader()})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, *address).start()
    return runner


async def run(args: argparse.Namespace) -> None:
    identity = args.identity or _default_identity()
    lease: leader.LeaseThread | None = None
    if not args.standalone:
        namespace = args.leader_election_namespace or _default_namespace()
        lease = leader.LeaseThread(
            lambda: leader.LeaderElector(
                Kube(concurrency=2, identity=identity),  # its own connections and event loop
                namespace,
                args.leader_election_id,
                identity,
                lease_seconds=args.lease_seconds,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            ),
            exit_code=EXIT_LOST_LEADERSHIP,
        )
        lease.start()
    health = await _health_server(_liveness_address(args), lease.is_leader if lease else lambda: True)
    if lease is not None:
        await asyncio.to_thread(lease.acquired.wait)
    metrics.LEADER.set(1)

    async def release() -> None:
        if lease is not None:
            await asyncio.to_thread(lease.release)

    if not kopf_fixes.apply():
        log.warning("kopf %s is not the version kopf_fixes was written for: the first listing of many objects will be slow", getattr(kopf, "__version__", "?"))
    memo = kopf.Memo(options=vars(args), identity=identity, fence=lease.is_leader if lease else None, release=release)
    try:
        await kopf.operator(clusterwide=not args.namespace, namespaces=args.namespace, standalone=True, memo=memo)
    finally:
        await release()  # also when kopf stopped without its cleanup hook
        if health is not None:
            await health.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kubernetes.client.rest", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_addr)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

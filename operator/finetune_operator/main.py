"""finetune-operator: the FineTuneJob operator (kopf).

Run:
    finetune-operator                       # in a pod (ServiceAccount) or with $KUBECONFIG
    finetune-operator --standalone          # no peering (development, single replica)
    python -m finetune_operator.main --metrics-port 8080 --liveness-port 8081

Needs the CRDs from crds/ (including kopf's ClusterKopfPeering and the `finetune-operator`
peering object unless --standalone) and the RBAC in operator/finetune_operator/rbac.yaml.
Metrics: http://<addr>:<metrics-port>/metrics; liveness: http://<addr>:<liveness-port>/healthz.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys

# kopf imports the kubernetes client library, when it is installed, only to recognise its
# objects; this operator talks to the API server with aiohttp and kopf's own credential readers.
# Not loading the client's thousands of model classes saves ~40 MB of RSS per replica.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

import kopf  # noqa: E402

from finetune_operator import constants as c  # noqa: E402
from finetune_operator import handlers  # noqa: E402, F401  (registers the kopf handlers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="finetune-operator", description="Run the FineTuneJob operator.")
    p.add_argument("--metrics-port", type=int, default=int(env("FINETUNE_OPERATOR_METRICS_PORT", "8080")), help="0 disables")
    p.add_argument("--metrics-addr", default=env("FINETUNE_OPERATOR_METRICS_ADDR", "0.0.0.0"))
    p.add_argument("--liveness-port", type=int, default=int(env("FINETUNE_OPERATOR_LIVENESS_PORT", "8081")), help="0 disables")
    p.add_argument("--standalone", action="store_true", default=env("FINETUNE_OPERATOR_STANDALONE") == "1", help="no peering")
    p.add_argument(
        "--priority",
        type=int,
        default=int(env("FINETUNE_OPERATOR_PRIORITY", "0")) or random.randint(1, 1_000_000),
        help="peering priority; the highest live replica acts, the others wait (random by default)",
    )
    p.add_argument("--peering-lifetime", type=int, default=int(env("FINETUNE_OPERATOR_PEERING_LIFETIME", "30")))
    p.add_argument("--default-image", default=env("FINETUNE_OPERATOR_TRAINER_IMAGE", c.DEFAULT_IMAGE), help="trainer image when neither job nor runtime names one")
    p.add_argument("--liveness", default=None, help="liveness endpoint URL (overrides --liveness-port), e.g. http://0.0.0.0:8081/healthz")
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
    p.add_argument("--api-workers", type=int, default=int(env("FINETUNE_OPERATOR_API_WORKERS", "32")), help="concurrent API requests")
    p.add_argument("--log-level", default=env("FINETUNE_OPERATOR_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kubernetes.client.rest", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    liveness = args.liveness or (f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        memo=kopf.Memo(options=vars(args)),
    )


if __name__ == "__main__":
    main()

"""Run as a ServiceAccount: mint a token with the TokenRequest API and write a kubeconfig for it.

The operator's tests use this so that they run with exactly the RBAC the Helm chart grants,
never as admin::

    kubeconfig = kube_cluster.service_account_kubeconfig("ftop-system", "finetune-operator")
    subprocess.run([...], env=kube_cluster.env(kubeconfig))
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.cluster.cluster import ControlPlane


def request_token(cluster: ControlPlane, namespace: str, name: str, expiration_seconds: int) -> str:
    """A bound token for ServiceAccount ``namespace/name`` (POST .../serviceaccounts/NAME/token)."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": expiration_seconds},
    }
    resp = cluster.request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body
    )
    token = resp["status"]["token"]
    if not isinstance(token, str) or not token:
        raise RuntimeError(f"TokenRequest for {namespace}/{name} returned no token")
    return token


def service_account_kubeconfig(
    cluster: ControlPlane,
    namespace: str,
    name: str,
    *,
    path: Path | None = None,
    expiration_seconds: int = 3600,
) -> Path:
    """Write a kubeconfig that authenticates as ``system:serviceaccount:<namespace>:<name>``."""
    from tests.cluster.cluster import write_kubeconfig

    token = request_token(cluster, namespace, name, expiration_seconds)
    if path is None:
        directory = cluster.state_dir / "kubeconfigs"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"sa-{namespace}-{name}-{uuid.uuid4().hex[:8]}.kubeconfig"
    return write_kubeconfig(
        path,
        server=cluster.api_url,
        ca_file=cluster.pki.ca_crt,
        user=f"system:serviceaccount:{namespace}:{name}",
        token=token,
        namespace=namespace,
    )

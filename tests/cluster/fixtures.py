"""pytest fixtures for tests that need the real control plane.

Use from any test folder's conftest.py::

    from tests.cluster.fixtures import kube_cluster, kube_namespace  # noqa: F401

``kube_cluster`` (session scope) reuses a live control plane started by ``make cluster-up``
(``.cluster/state.json``) and otherwise starts its own in a temporary directory, stopping
every process it started at the end of the session (also on failure, Ctrl-C or SIGTERM).
``FTOP_CLUSTER=own`` always starts a private one; ``FTOP_CLUSTER=shared`` requires the shared one.
``FTOP_KEEP_CLUSTER_DIR=1`` keeps the private state directory (logs, kubeconfig) after a pass;
after a failure it is always kept and its path printed.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest

from tests.cluster.binaries import BuildError
from tests.cluster.cluster import DEFAULT_STATE_DIR, ClusterError, ControlPlane, new_state_dir


class _Shared:
    """One control plane per pytest process.

    Each conftest.py that imports ``kube_cluster`` registers its own session fixture, so the
    fixture may be instantiated once per test folder; they all share this one cluster, and the
    last of them to be torn down stops it.
    """

    cluster: ControlPlane | None = None
    users = 0


def _acquire() -> ControlPlane:
    if _Shared.cluster is not None:
        _Shared.users += 1
        return _Shared.cluster
    mode = os.environ.get("FTOP_CLUSTER", "auto")
    if mode not in ("auto", "own", "shared"):
        raise pytest.UsageError(f"FTOP_CLUSTER must be auto, own or shared, not {mode!r}")
    cp: ControlPlane | None = None
    if mode != "own":
        shared = ControlPlane.attach(DEFAULT_STATE_DIR)
        if shared is not None and shared.healthy():
            cp = shared
        elif mode == "shared":
            pytest.fail(
                f"FTOP_CLUSTER=shared but no live control plane in {DEFAULT_STATE_DIR} "
                "(run `make cluster-up`)",
                pytrace=False,
            )
    if cp is None:
        cp = ControlPlane(new_state_dir())
        try:
            cp.start()
        except (ClusterError, BuildError) as exc:
            pytest.fail(
                f"control plane did not start (state dir {cp.state_dir}):\n{exc}", pytrace=False
            )
        print(
            f"\n[tests.cluster] control plane up in {cp.startup_seconds:.1f}s at {cp.api_url} "
            f"(state dir {cp.state_dir})",
            file=sys.stderr,
        )
    _Shared.cluster, _Shared.users = cp, 1
    return cp


def _release(session: pytest.Session) -> None:
    _Shared.users -= 1
    cp = _Shared.cluster
    if _Shared.users > 0 or cp is None:
        return
    _Shared.cluster = None
    if not cp.owned:
        return  # started by `make cluster-up`: leave it running
    failed = session.testsfailed > 0
    if failed:
        print(
            f"\n[tests.cluster] tests failed; component logs kept in {cp.log_dir}\n"
            + cp.diagnostics(15),
            file=sys.stderr,
        )
    cp.stop()
    if not failed and os.environ.get("FTOP_KEEP_CLUSTER_DIR") != "1":
        shutil.rmtree(cp.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """A running control plane: ``.kubeconfig`` (admin), ``.api_url``, ``.kubectl()``,
    ``.helm()``, ``.api_client()``, ``.namespace()``, ``.service_account_kubeconfig()``."""
    cp = _acquire()
    try:
        yield cp
    finally:
        _release(request.session)


@pytest.fixture
def kube_namespace(kube_cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    with kube_cluster.namespace() as name:
        yield name

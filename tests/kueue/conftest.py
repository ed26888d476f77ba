"""Fixtures of the Kueue tests: a private control plane with Kueue's manager, CRDs and webhooks
(tests/cluster/kueue.py), plus the operator fixtures of tests/operator.

The control plane is always this session's own (never the shared one of `make cluster-up`):
Kueue's webhooks on batch Jobs must not reach other tests' clusters.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest

from tests.cluster.binaries import BuildError
from tests.cluster.cluster import ClusterError, ControlPlane, new_state_dir
from tests.cluster.kueue import Kueue
from tests.operator.cluster_support import ftop, kube  # noqa: F401
from tests.operator.conftest import RESTRICTED


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    cp = ControlPlane(new_state_dir())
    try:
        cp.start()
    except (ClusterError, BuildError) as exc:
        pytest.fail(f"control plane did not start (state dir {cp.state_dir}):\n{exc}", pytrace=False)
    print(f"\n[tests.kueue] control plane up in {cp.startup_seconds:.1f}s (state dir {cp.state_dir})", file=sys.stderr)
    try:
        yield cp
    finally:
        failed = request.session.testsfailed > 0
        cp.stop()
        if failed or os.environ.get("FTOP_KEEP_CLUSTER_DIR") == "1":
            print(f"\n[tests.kueue] logs kept in {cp.log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(cp.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kueue(kube_cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[Kueue]:
    """Kueue's manager (batch/job integration) on the private control plane, ready."""
    kq = Kueue(kube_cluster)
    try:
        kq.start()
    except (ClusterError, BuildError) as exc:
        pytest.fail(f"kueue did not start:\n{exc}", pytrace=False)
    try:
        yield kq
    finally:
        kq.stop()
        if request.session.testsfailed:
            print("\n" + kq.diagnostics(60), file=sys.stderr)


@pytest.fixture
def kube_namespace(kube_cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace under Pod Security `restricted` (as the operator tests), deleted
    afterwards."""
    with kube_cluster.namespace(labels=RESTRICTED) as name:
        yield name

"""The chaos suite's own control plane: more fake nodes than the shared one (hundreds of jobs run
at once), the operator's CRDs, ServiceAccount and RBAC installed as for the integration tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.cluster.cluster import ControlPlane, new_state_dir
from tests.operator.cluster_support import Kube, install

NODES = 6  # 110 pods each: a validator and a trainer pod per job, for 200 jobs at once


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[ControlPlane]:
    cp = ControlPlane(new_state_dir(), nodes=NODES)
    cp.start()
    print(f"\n[tests.chaos] control plane with {NODES} fake nodes up in {cp.startup_seconds:.1f}s", file=sys.stderr)
    try:
        install(cp)
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def chaos_kube(chaos_cluster: ControlPlane) -> Kube:
    return Kube(chaos_cluster)


@pytest.fixture
def chaos_namespace(chaos_cluster: ControlPlane) -> Iterator[str]:
    with chaos_cluster.namespace("chaos") as name:
        yield name

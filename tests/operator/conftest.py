from collections.abc import Iterator

import pytest

from tests.cluster.cluster import ControlPlane
from tests.cluster.fixtures import kube_cluster  # noqa: F401
from tests.operator.cluster_support import ftop, kube  # noqa: F401

#: Pod Security Admission labels of every namespace the operator's integration tests work in: the
#: API server itself refuses any pod the operator renders (validation pod, Job pods) that
#: breaks the `restricted` profile.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture
def kube_namespace(kube_cluster: ControlPlane) -> Iterator[str]:  # noqa: F811
    """A fresh namespace under Pod Security `restricted` (enforced), deleted afterwards."""
    with kube_cluster.namespace(labels=RESTRICTED) as name:
        yield name

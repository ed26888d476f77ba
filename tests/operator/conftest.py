from tests.cluster.fixtures import kube_cluster, kube_namespace  # noqa: F401
from tests.operator.cluster_support import ftop, kube  # noqa: F401

"""The chart tests that install into the real control plane use the harness's fixtures."""

from tests.cluster.fixtures import kube_cluster, kube_namespace

__all__ = ["kube_cluster", "kube_namespace"]

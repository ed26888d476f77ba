"""Fixtures for the harness's own tests (other folders import them the same way)."""

from tests.cluster.fixtures import kube_cluster, kube_namespace

__all__ = ["kube_cluster", "kube_namespace"]

"""A real Kubernetes control plane for the tests, built from Go modules.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes) run as local
processes on loopback. See docs/test-harness.md. Entry points:

- pytest: ``from tests.cluster.fixtures import kube_cluster`` (session fixture) in a conftest.py.
- shell: ``python -m tests.cluster up|down|status`` (``make cluster-up`` / ``make cluster-down``).
"""

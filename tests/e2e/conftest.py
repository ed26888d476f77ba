"""Session fixture for the real-node end-to-end tests (``make e2e``): see ``tests/e2e/harness.py``.

Needs root (network namespace, cgroups, containerd), Debian's containerd, runc,
containernetworking-plugins, iptables and docker.io (`hack/install-node-deps.sh`, run by
`make e2e`), and the binaries of `hack/build-control-plane.sh` (Prometheus among them: Debian's
package is built without Kubernetes service discovery).
``FTOP_KEEP_CLUSTER_DIR=1`` keeps the state directory (logs, kubeconfig) after a pass.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

from tests.cluster.cluster import new_state_dir
from tests.cluster.node import HOST_IP, start_cluster_with_node
from tests.e2e import harness
from tests.support.s3 import start_s3_server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs on the real node (make e2e)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_node_lifecycle.py starts nodes of its own: it runs before any test takes the machine's
    one node for the session (the `e2e` fixture holds it until the end), whatever the file names."""
    items.sort(key=lambda item: 0 if item.path.name == "test_node_lifecycle.py" else 1)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


_FIGURES: dict[str, object] = {}


@pytest.fixture(scope="session")
def images() -> dict[str, harness.Image]:
    """The operator and trainer images, built from our Dockerfiles (`hack/build-images.sh`)."""
    if os.geteuid() != 0:
        pytest.fail("the real-node tests need root (network namespace, cgroups, containerd)", pytrace=False)
    t0 = time.monotonic()
    built = harness.build_images()
    _FIGURES["images_ready_s"] = round(time.monotonic() - t0, 1)
    return built


@pytest.fixture(scope="session")
def e2e(request: pytest.FixtureRequest, images: dict[str, harness.Image]) -> Iterator[harness.E2E]:
    figures = _FIGURES
    state_dir = new_state_dir()
    t1 = time.monotonic()
    cp, node = start_cluster_with_node(state_dir)
    figures["cluster_and_node_up_s"] = round(time.monotonic() - t1, 1)
    s3 = None
    prom = None
    try:
        for name, image in images.items():
            figures[f"import_{name}_s"] = round(node.ensure_image(image.ref, image.archive, image.image_id), 1)
        s3 = start_s3_server(host=HOST_IP)
        for bucket in ("models", "data", "out"):
            s3.create_bucket(bucket)
        t2 = time.monotonic()
        harness.install_operator(cp, s3.endpoint)
        figures["helm_install_to_operator_ready_s"] = round(time.monotonic() - t2, 1)
        harness.create_tenant(cp, s3)
        # built from its Go module: Debian's package has no Kubernetes service discovery
        prom = harness.start_prometheus(cp, str(cp.tool("prometheus")))
        env = harness.E2E(cp, node, s3, prom, figures)
        yield env
    finally:
        failed = request.session.testsfailed > 0
        figures["load_average"] = _load()
        print("\n[e2e] figures: " + json.dumps(figures), file=sys.stderr)
        (state_dir / "figures.json").write_text(json.dumps(figures, indent=2))
        if prom is not None:
            prom.__exit__(None, None, None)
        if s3 is not None:
            s3.process.terminate()
            s3.process.wait(timeout=10)
        if failed:
            print(f"\n[e2e] tests failed; logs kept in {cp.log_dir}\n" + node.diagnostics(20), file=sys.stderr)
        node.stop()
        cp.stop()
        if not failed and os.environ.get("FTOP_KEEP_CLUSTER_DIR") != "1":
            shutil.rmtree(state_dir, ignore_errors=True)

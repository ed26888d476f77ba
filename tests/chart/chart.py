"""Rendering the Helm chart with the harness-built `helm` (hack/build-control-plane.sh).

`render()` runs `helm template` and returns the parsed documents; `template_error()` returns
helm's error text for values that must be rejected. Both are plain functions so that other test
folders (tests/operator) can render the chart's RBAC and run the operator under exactly it.
"""

from __future__ import annotations

import functools
import json
import pathlib
import subprocess
import tempfile
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
RELEASE = "ftop"
NAMESPACE = "finetune-system"
#: `helm template` renders for this API version (the harness builds kube-apiserver v1.34).
KUBE_VERSION = "1.34.0"


@functools.cache
def helm_bin() -> pathlib.Path:
    from tests.cluster import binaries

    return binaries.tool("helm")


#: The chart requires both images (none is published): what the tests install unless told.
TEST_IMAGES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/finetune-operator"},
    "trainerImage": "registry.example.com/finetune-trainer:0.1.0",
}


def with_images(values: dict[str, Any] | None) -> dict[str, Any]:
    """`values` with TEST_IMAGES where they name no image (empty counts as none)."""
    out = dict(values or {})
    image = dict(out.get("image") or {})
    image["repository"] = image.get("repository") or TEST_IMAGES["image"]["repository"]
    out["image"] = image
    out["trainerImage"] = out.get("trainerImage") or TEST_IMAGES["trainerImage"]
    return out


def _values_args(values: dict[str, Any] | None, tmp: pathlib.Path, images: bool = True) -> list[str]:
    values = with_images(values) if images else values
    if not values:
        return []
    path = tmp / "values.json"
    path.write_text(json.dumps(values))
    return ["-f", str(path)]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_bin()), *args], capture_output=True, text=True, check=check,
                          timeout=120)


#: What `render` tells helm the cluster serves unless told otherwise: the Prometheus Operator's API
#: (the monitoring objects are rendered only where it is served).
MONITORING_API = "monitoring.coreos.com/v1"


def render_text(values: dict[str, Any] | None = None, *, include_crds: bool = False,
                release: str = RELEASE, namespace: str = NAMESPACE, api_versions: list[str] | None = None) -> str:
    """`helm template`; `api_versions` as the cluster would serve them (`--api-versions`; default:
    the Prometheus Operator's API)."""
    if api_versions is None:
        api_versions = [MONITORING_API]
    with tempfile.TemporaryDirectory() as d:
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                *_values_args(values, pathlib.Path(d))]
        if include_crds:  # the chart has no crds/ folder any more (templates/crds.yaml); kept for callers
            args.append("--include-crds")
        for api in api_versions or []:
            args += ["--api-versions", api]
        proc = helm(*args, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed:\n{proc.stderr}")
    return proc.stdout


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The chart's manifests for `values`, parsed (empty documents dropped)."""
    return [d for d in yaml.safe_load_all(render_text(values, **kwargs)) if d]


def template_error(values: dict[str, Any], *, images: bool = True) -> str:
    """helm's error output for values that must fail; AssertionError if they render.
    `images` False: without TEST_IMAGES underneath."""
    with tempfile.TemporaryDirectory() as d:
        proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                    *_values_args(values, pathlib.Path(d), images), check=False)
    if proc.returncode == 0:
        raise AssertionError(f"helm template accepted values it should reject: {values}")
    return proc.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def rbac_documents(values: dict[str, Any] | None = None, *, release: str = RELEASE,
                   namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """ServiceAccount, (Cluster)Roles and bindings the chart creates, for applying in tests."""
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    return [d for d in render(values, release=release, namespace=namespace) if d["kind"] in kinds]

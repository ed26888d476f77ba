"""The chart owns the CRDs (templates/crds.yaml): install, upgrade, adoption, uninstall, for real.

Run: .venv/bin/python -m pytest tests/chart/test_crd_upgrade.py   (builds/starts the control plane)

Against the real API server (tests/cluster), with the harness-built helm and kubectl:

1. `helm install` on a cluster without the CRDs creates them as release objects (labels, the
   release's ownership annotations, `helm.sh/resource-policy: keep`) and the presets (a
   post-install hook, as their kind is not served until the CRD exists).
2. `helm upgrade` with a chart whose ClusterFineTuneRuntime CRD gained a field and a CEL rule
   updates the CRD on the API server (the rule is enforced), and takes the presets over as release
   objects without re-creating them.
3. `helm uninstall` leaves the CRDs and a FineTuneJob (keep); `helm install` under the same name
   takes the kept CRDs back.
4. Migration: an install made by the earlier chart (CRDs from the chart's `crds/` folder, then the
   old documented `kubectl apply --server-side`) fails to upgrade until the adoption block of
   docs/chart.md, run verbatim, hands the CRDs to the release; then the upgrade applies the new
   schema and the FineTuneJob is untouched.

CRDs are cluster-wide and other tests apply finetune.dev's own, so each test renames the API group
of a copy of the chart (`t<hex>.finetune.dev`: CRD names, groups, presets, RBAC) and deletes its
CRDs at the end: the chart's templates are exercised as they are, on a "fresh" API group.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import urllib.error
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, REPO, with_images
from tests.cluster.cluster import ControlPlane
from tests.support.waiting import wait

pytestmark = pytest.mark.cluster

VERSION = "v1alpha1"
#: what the "next release" of the chart changes in the ClusterFineTuneRuntime CRD
NEW_FIELD = "upgradeTestNote"
NEW_RULE = {"rule": "!has(self.maxNodes) || self.maxNodes != 13", "message": "upgrade test: maxNodes 13 is refused"}


@dataclass
class Group:
    """A renamed copy of the chart's API group, its CRD names, and the charts made from it."""

    name: str  # e.g. t1a2b3c.finetune.dev
    suffix: str
    releases: list[tuple[str, str]] = field(default_factory=list)  # (release, namespace), uninstalled at the end

    @property
    def crds(self) -> tuple[str, str]:
        return f"finetunejobs.{self.name}", f"clusterfinetuneruntimes.{self.name}"

    @property
    def runtime_crd(self) -> str:
        return self.crds[1]


def _rename(text: str, group: Group) -> str:
    # one pass: str.replace does not re-scan what it inserted
    return text.replace("finetune.dev", group.name)


def _crd_files(chart: Path) -> list[Path]:
    return sorted((chart / "files" / "crds").glob("*.yaml"))


def copy_chart(dest: Path, group: Group, *, legacy: bool = False, upgraded: bool = False) -> Path:
    """The chart with its API group renamed. `legacy`: laid out as the earlier chart was (the CRDs
    in Helm's install-only `crds/` folder, no templates/crds.yaml). `upgraded`: the runtime CRD's
    spec gained NEW_FIELD and NEW_RULE, as a later operator version would ship them."""
    shutil.copytree(CHART, dest)
    values = yaml.safe_load((dest / "values.yaml").read_text())
    (dest / "values.yaml").write_text(yaml.safe_dump(with_images(values), sort_keys=False))  # the required images
    for path in (dest / "templates").glob("*"):
        path.write_text(_rename(path.read_text(), group))
    for path in _crd_files(dest):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for crd in docs:
            crd["metadata"]["name"] = _rename(crd["metadata"]["name"], group)
            crd["spec"]["group"] = group.name
            names = crd["spec"]["names"]  # no `kubectl get ftj` ambiguity while the copy exists
            names["shortNames"] = [f"{s}{group.suffix}" for s in names.get("shortNames", [])]
            names["categories"] = [f"{c}{group.suffix}" for c in names.get("categories", [])]
            if upgraded and names["kind"] == "ClusterFineTuneRuntime":
                spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                spec["properties"][NEW_FIELD] = {"type": "string", "maxLength": 64}
                spec.setdefault("x-kubernetes-validations", []).append(NEW_RULE)
        path.write_text("# test copy\n---\n" + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs))
    if legacy:
        (dest / "crds").mkdir()
        for path in _crd_files(dest):
            path.rename(dest / "crds" / path.name)
        (dest / "templates" / "crds.yaml").unlink()
    return dest


def _get(cluster: ControlPlane, path: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = cluster.request("GET", path)
        return found
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def crd(cluster: ControlPlane, name: str) -> dict[str, Any] | None:
    return _get(cluster, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")


def _established(cluster: ControlPlane, name: str) -> bool:
    conds = ((crd(cluster, name) or {}).get("status") or {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


def runtime_spec_schema(cluster: ControlPlane, group: Group) -> dict[str, Any]:
    found = crd(cluster, group.runtime_crd)
    assert found is not None
    spec: dict[str, Any] = found["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def presets(cluster: ControlPlane, group: Group) -> dict[str, dict[str, Any]]:
    listed = _get(cluster, f"/apis/{group.name}/{VERSION}/clusterfinetuneruntimes") or {"items": []}
    return {p["metadata"]["name"]: p for p in listed["items"]}


def manifest_kinds(cluster: ControlPlane, release: str, namespace: str, what: str = "manifest") -> set[str]:
    out = cluster.helm("get", what, release, "-n", namespace).stdout
    return {f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(out) if d}


def helm_ok(cluster: ControlPlane, *args: str) -> str:
    proc = cluster.helm(*args, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_owned(cluster: ControlPlane, group: Group, release: str, namespace: str) -> None:
    """Both CRDs carry what Helm checks before it updates an object, and the keep policy."""
    for name in group.crds:
        meta = (crd(cluster, name) or {}).get("metadata")
        assert meta is not None, f"CRD {name} missing"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", meta["labels"]
        assert meta["labels"]["app.kubernetes.io/instance"] == release, meta["labels"]
        annotations = meta["annotations"]
        assert annotations["meta.helm.sh/release-name"] == release, annotations
        assert annotations["meta.helm.sh/release-namespace"] == namespace, annotations
        assert annotations["helm.sh/resource-policy"] == "keep", annotations
    assert {f"CustomResourceDefinition/{n}" for n in group.crds} <= manifest_kinds(cluster, release, namespace)


def finetune_job(cluster: ControlPlane, group: Group, namespace: str, tmp: Path) -> dict[str, Any]:
    """examples/classification-minilm.yaml in the test group, created; returns it as stored."""
    doc = yaml.safe_load((REPO / "examples" / "classification-minilm.yaml").read_text())
    doc["apiVersion"] = f"{group.name}/{VERSION}"
    doc["metadata"] = {"name": "kept", "namespace": namespace}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    cluster.kubectl("create", "-f", str(path))
    found = _get(cluster, f"/apis/{group.name}/{VERSION}/namespaces/{namespace}/finetunejobs/kept")
    assert found is not None
    return found


def try_preset(cluster: ControlPlane, group: Group, tmp: Path, name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": f"{group.name}/{VERSION}", "kind": "ClusterFineTuneRuntime",
                                    "metadata": {"name": name}, "spec": {"image": "registry.example/trainer:1", **spec}}))
    return cluster.kubectl("create", "-f", str(path), check=False)


@contextlib.contextmanager
def api_group(cluster: ControlPlane) -> Iterator[Group]:
    """A fresh API group; its releases and their namespaces go, and its CRDs (kept by design) are deleted."""
    suffix = uuid.uuid4().hex[:7]
    group = Group(f"t{suffix}.finetune.dev", suffix)
    try:
        yield group
    finally:
        for release, namespace in group.releases:
            cluster.helm("uninstall", release, "-n", namespace, check=False)
            with contextlib.suppress(Exception):
                cluster.request("DELETE", f"/api/v1/namespaces/{namespace}")
        for name in group.crds:
            with contextlib.suppress(Exception):
                cluster.request("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")


def new_release(group: Group) -> tuple[str, str]:
    release, namespace = f"crd-{group.suffix}", f"crd-system-{group.suffix}"
    group.releases.append((release, namespace))
    return release, namespace


def test_install_upgrade_uninstall_own_and_keep_the_crds(kube_cluster: ControlPlane, tmp_path: Path) -> None:
    cluster = kube_cluster
    with api_group(cluster) as group, cluster.namespace() as team:
        v1 = copy_chart(tmp_path / "v1", group)
        v2 = copy_chart(tmp_path / "v2", group, upgraded=True)
        release, namespace = new_release(group)
        assert all(crd(cluster, n) is None for n in group.crds)

        # 1. a fresh install: CRDs as release objects, presets through the post-install hook
        helm_ok(cluster, "install", release, str(v1), "-n", namespace, "--create-namespace")
        for name in group.crds:
            assert wait(f"CRD {name} established", functools.partial(_established, cluster, name), 60, 0.3)
        assert_owned(cluster, group, release, namespace)
        names = {p["name"] for p in yaml.safe_load((CHART / "values.yaml").read_text())["runtimePresets"]["presets"]}
        made = presets(cluster, group)
        assert set(made) == names
        assert {f"ClusterFineTuneRuntime/{n}" for n in names} <= manifest_kinds(cluster, release, namespace, "hooks")
        assert NEW_FIELD not in runtime_spec_schema(cluster, group)["properties"]
        assert try_preset(cluster, group, tmp_path, "thirteen-before", {"maxNodes": 13}).returncode == 0

        # 2. upgrade with a changed CRD: the API server gets the new field and CEL rule
        helm_ok(cluster, "upgrade", release, str(v2), "-n", namespace)
        schema = runtime_spec_schema(cluster, group)
        assert NEW_FIELD in schema["properties"]
        assert NEW_RULE in schema.get("x-kubernetes-validations", [])
        refused = try_preset(cluster, group, tmp_path, "thirteen-after", {"maxNodes": 13})
        assert refused.returncode != 0 and NEW_RULE["message"] in refused.stderr, refused.stderr
        accepted = try_preset(cluster, group, tmp_path, "noted", {"maxNodes": 2, NEW_FIELD: "kept by the new schema"})
        assert accepted.returncode == 0, accepted.stderr
        assert presets(cluster, group)["noted"]["spec"][NEW_FIELD] == "kept by the new schema"  # not pruned
        assert_owned(cluster, group, release, namespace)
        # the presets are release objects now, the same objects (a preset in use carries a finalizer)
        assert {f"ClusterFineTuneRuntime/{n}" for n in names} <= manifest_kinds(cluster, release, namespace)
        assert not manifest_kinds(cluster, release, namespace, "hooks")
        after = presets(cluster, group)
        assert {n: after[n]["metadata"]["uid"] for n in names} == {n: made[n]["metadata"]["uid"] for n in names}

        # 3. uninstall keeps the CRDs and the users' jobs; the same release name takes them back
        job = finetune_job(cluster, group, team, tmp_path)
        helm_ok(cluster, "uninstall", release, "-n", namespace, "--wait")
        for name in group.crds:
            assert crd(cluster, name) is not None, f"helm uninstall deleted CRD {name} (crds.keep)"
        kept = _get(cluster, f"/apis/{group.name}/{VERSION}/namespaces/{team}/finetunejobs/kept")
        assert kept is not None and kept["metadata"]["uid"] == job["metadata"]["uid"]
        assert not set(presets(cluster, group)) & names, "the release's presets go with it"
        helm_ok(cluster, "install", release, str(v2), "-n", namespace)
        assert_owned(cluster, group, release, namespace)
        assert set(presets(cluster, group)) >= names


def _adoption_block() -> str:
    """The fenced bash block of docs/chart.md that adopts the CRDs (the one with `kubectl label crd`)."""
    text = (REPO / "docs" / "chart.md").read_text()
    blocks: list[str] = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "kubectl label crd" in b]
    assert len(blocks) == 1, "docs/chart.md: one ```bash block with the CRD adoption commands"
    return blocks[0]


def test_the_documented_adoption_migrates_a_crds_folder_install(kube_cluster: ControlPlane, tmp_path: Path) -> None:
    cluster = kube_cluster
    with api_group(cluster) as group, cluster.namespace() as team:
        old = copy_chart(tmp_path / "old", group, legacy=True)
        new = copy_chart(tmp_path / "new", group, upgraded=True)
        release, namespace = new_release(group)

        # the earlier chart: Helm's crds/ folder (not release objects), then its documented upgrade step
        helm_ok(cluster, "install", release, str(old), "-n", namespace, "--create-namespace")
        for name in group.crds:
            meta = (crd(cluster, name) or {}).get("metadata") or {}
            assert "meta.helm.sh/release-name" not in (meta.get("annotations") or {}), meta
        names = {p["name"] for p in yaml.safe_load((CHART / "values.yaml").read_text())["runtimePresets"]["presets"]}
        assert {f"ClusterFineTuneRuntime/{n}" for n in names} <= manifest_kinds(cluster, release, namespace)
        cluster.kubectl("apply", "--server-side", "-f", str(old / "crds"))
        job = finetune_job(cluster, group, team, tmp_path)

        # without the adoption, Helm refuses to take over objects it did not create
        refused = cluster.helm("upgrade", release, str(new), "-n", namespace, check=False)
        assert refused.returncode != 0
        assert "exists and cannot be imported into the current release: invalid ownership metadata" in refused.stderr, refused.stderr

        # the documented commands, verbatim but for the names
        block = _adoption_block()
        script = block.replace("charts/finetune-operator", str(new)).replace("finetune.dev", group.name)
        script, n = re.subn(r"^RELEASE=\S+ NAMESPACE=\S+", f"RELEASE={release} NAMESPACE={namespace}", script, flags=re.M)
        assert n == 1, block
        env = {**cluster.env(), "PATH": f"{cluster.bin_dir}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"

        assert_owned(cluster, group, release, namespace)
        schema = runtime_spec_schema(cluster, group)
        assert NEW_FIELD in schema["properties"] and NEW_RULE in schema.get("x-kubernetes-validations", [])
        refused_preset = try_preset(cluster, group, tmp_path, "thirteen", {"maxNodes": 13})
        assert refused_preset.returncode != 0 and NEW_RULE["message"] in refused_preset.stderr, refused_preset.stderr
        kept = _get(cluster, f"/apis/{group.name}/{VERSION}/namespaces/{team}/finetunejobs/kept")
        assert kept is not None and kept["metadata"]["uid"] == job["metadata"]["uid"]
        assert set(presets(cluster, group)) >= names

"""Copy the CRDs from crds/ into the Helm chart (`make chart-crds`); `--check` reports drift.

It also copies the ClusterFineTuneRuntime spec schema into values.schema.json
(`definitions.runtimeSpec`), so a bad preset in the values fails `helm install` before anything is
created, naming the field (unknown fields too, as the operator's models forbid them).

Run: .venv/bin/python hack/sync_chart_crds.py [--check]

Every CustomResourceDefinition document of crds/<file>.yaml goes, unchanged, into
charts/finetune-operator/files/crds/<file>.yaml, which templates/crds.yaml renders as release
objects (`crds.enabled`, `crds.keep`), so that `helm upgrade` applies schema and CEL changes.
The chart has no `crds/` folder any more (Helm installs that folder once and never upgrades it,
and its CRDs would collide with the templated ones): a leftover one is drift, and is removed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import pathlib
import re
import shutil
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = REPO / "crds"
CHART = REPO / "charts" / "finetune-operator"
TARGET = CHART / "files" / "crds"
#: where earlier charts kept the CRDs (Helm's install-only `crds/` folder); must not come back
LEGACY_TARGET = CHART / "crds"
VALUES_SCHEMA = REPO / "charts" / "finetune-operator" / "values.schema.json"
RUNTIME_CRD = SOURCE / "finetune.dev_clusterfinetuneruntimes.yaml"
HEADER = ("# Copied from crds/{name} by `make chart-crds`; templates/crds.yaml renders it.\n"
          "# Do not edit: change crds/ and re-run.\n")


def chart_files() -> dict[str, str]:
    """File name -> the text the chart's files/crds/ folder must hold."""
    out = {}
    for path in sorted(SOURCE.glob("*.yaml")):
        # Split on document markers and keep the CRD chunks byte for byte.
        chunks = re.split(r"(?m)^---[ \t]*\n", path.read_text())
        crds = []
        for chunk in chunks:
            doc = yaml.safe_load(chunk)
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds.append(_strip_comments_header(chunk))
        if crds:
            out[path.name] = HEADER.format(name=path.name) + "---\n" + "---\n".join(crds)
    return out


def _json_schema(node: object) -> object:
    """An OpenAPI (CRD) schema as JSON schema: x-kubernetes-* dropped, unknown fields forbidden."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def values_schema_text() -> str:
    """values.schema.json with definitions.runtimeSpec taken from the runtime CRD."""
    schema = json.loads(VALUES_SCHEMA.read_text())
    crd = next(d for d in yaml.safe_load_all(RUNTIME_CRD.read_text()) if d and d.get("kind") == "CustomResourceDefinition")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    runtime = _json_schema(spec)
    assert isinstance(runtime, dict)
    runtime["required"] = [r for r in runtime.get("required", []) if r != "image"]  # defaults to trainerImage
    if not runtime["required"]:
        del runtime["required"]
    schema["definitions"]["runtimeSpec"] = runtime
    return json.dumps(schema, indent=2) + "\n"


def _strip_comments_header(chunk: str) -> str:
    """The chunk without its leading comment lines (crds/ files start with a 'generated' note)."""
    lines = chunk.splitlines(True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when the chart's CRDs differ from crds/")
    args = parser.parse_args(argv)
    wanted = chart_files()
    current = {p.name: p.read_text() for p in TARGET.glob("*.yaml")}
    drift = False
    for name in sorted(set(wanted) | set(current)):
        if wanted.get(name) == current.get(name):
            continue
        drift = True
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(
                current.get(name, "").splitlines(True), wanted.get(name, "").splitlines(True),
                f"{TARGET.relative_to(REPO)}/{name}", f"from crds/{name}"))
        elif name in wanted:
            TARGET.mkdir(parents=True, exist_ok=True)
            (TARGET / name).write_text(wanted[name])
            print(f"wrote {TARGET.relative_to(REPO)}/{name}")
        else:
            (TARGET / name).unlink()
            print(f"removed {TARGET.relative_to(REPO)}/{name} (no longer in crds/)")
    if LEGACY_TARGET.is_dir():
        drift = True
        if args.check:
            print(f"{LEGACY_TARGET.relative_to(REPO)}/ exists: Helm would install it besides templates/crds.yaml")
        else:
            shutil.rmtree(LEGACY_TARGET)
            print(f"removed {LEGACY_TARGET.relative_to(REPO)}/ (the CRDs are in {TARGET.relative_to(REPO)}/)")
    schema_text = values_schema_text()
    if VALUES_SCHEMA.read_text() != schema_text:
        drift = True
        if args.check:
            print("charts/finetune-operator/values.schema.json: definitions.runtimeSpec differs from crds/")
        else:
            VALUES_SCHEMA.write_text(schema_text)
            print(f"wrote {VALUES_SCHEMA.relative_to(REPO)} (definitions.runtimeSpec)")
    if args.check and drift:
        print(f"{TARGET.relative_to(REPO)}/ drifted from crds/: run `make chart-crds`", file=sys.stderr)
        return 1
    if not drift:
        print("chart CRDs match crds/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generate the CRDs in `crds/` from the pydantic models in `finetune_operator.api`.

Run:  python -m finetune_operator.crdgen crds/          (what `make crds` does)
      python -m finetune_operator.crdgen --check crds/  (exit 1 when the committed YAML drifts)

The pydantic JSON Schema is turned into a Kubernetes structural schema: `$ref`s inlined,
`Optional[X]` becomes an optional X, `const` an enum, numeric exclusive bounds the OpenAPI v3.0
form, pydantic defaults and titles dropped (the operator applies defaults, so `kubectl get -o yaml`
shows what the user wrote). Strings, lists and maps without bounds get generous ones so the API
server can estimate the cost of the CEL rules.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import pathlib
import sys
from typing import Any

import yaml

from finetune_operator import api
from finetune_operator import constants as c
from finetune_operator.api import cel

DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 64

#: Spec fields that may change after the job started (everything else is immutable then).
MUTABLE_AFTER_START = ("suspend", "ttlSecondsAfterFinished")

_DROP_KEYS = {"title", "default", "additionalProperties", "$defs"}


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON Schema node into a Kubernetes structural schema node."""
    node = copy.deepcopy(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = copy.deepcopy(target)
        # Field-level keys (description, CEL rules) win over the model's own.
        for key, value in node.items():
            if key == "x-kubernetes-validations":
                merged[key] = merged.get(key, []) + value
            else:
                merged[key] = value
        node = merged
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express anyOf {branches} in a structural schema")
        branch = structural(branches[0], defs)
        for key in ("description", "x-kubernetes-validations"):
            if key in node:
                branch[key] = node[key] if key == "description" else branch.get(key, []) + node[key]
        node = {**branch, **{k: v for k, v in node.items() if k not in ("description", "x-kubernetes-validations")}}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[flag] = node.pop(bound)
            node[bound] = True
    additional = node.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        else:
            out[key] = value
    if isinstance(additional, dict):
        out["additionalProperties"] = structural(additional, defs)
    kind = out.get("type")
    if kind == "string" and "maxLength" not in out and "enum" not in out:
        out["maxLength"] = DEFAULT_MAX_LENGTH
    if kind == "array" and "maxItems" not in out:
        out["maxItems"] = DEFAULT_MAX_ITEMS
    if kind == "object" and "additionalProperties" in out and "maxProperties" not in out:
        out["maxProperties"] = DEFAULT_MAX_PROPERTIES
    if kind == "array" and out.get("items", {}).get("enum"):
        out["x-kubernetes-list-type"] = "set"
    if "required" in out:
        out["required"] = sorted(out["required"])
    return dict(sorted(out.items()))


def model_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _immutability_rules(spec_fields: list[str]) -> list[dict[str, Any]]:
    started = "!has(oldSelf.status) || !has(oldSelf.status.startTime)"
    rules = []
    for name in spec_fields:
        if name in MUTABLE_AFTER_START:
            continue
        same = (
            f"has(self.spec.{name}) == has(oldSelf.spec.{name}) && "
            f"(!has(self.spec.{name}) || self.spec.{name} == oldSelf.spec.{name})"
        )
        rules.append(
            cel(
                f"{started} || ({same})",
                f"spec.{name} is immutable once the job has started (only spec.suspend and spec.ttlSecondsAfterFinished may change)",
                f".spec.{name}",
                "FieldValueForbidden",
            )
        )
    return rules


def _crd(plural: str, kind: str, scope: str, short: list[str], root: dict[str, Any], columns: list[dict[str, Any]], status: bool) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": c.contract.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
        "additionalPrinterColumns": columns,
    }
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{c.contract.GROUP}",
            "labels": {c.contract.LABEL_MANAGED_BY: c.MANAGED_BY_CHART},
        },
        "spec": {
            "group": c.contract.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": kind + "List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["finetune"],
            },
            "versions": [version],
        },
    }


def _root_schema(description: str, **properties: dict[str, Any]) -> dict[str, Any]:
    """The openAPIV3Schema of a custom resource: the object envelope around spec (and status)."""
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            **properties,
        },
    }


def finetunejob_crd() -> dict[str, Any]:
    spec = model_schema(api.FineTuneJobSpec)
    status = model_schema(api.FineTuneJobStatus)
    spec["description"] = api.FineTuneJobSpec.__doc__.strip() if api.FineTuneJobSpec.__doc__ else ""
    status["description"] = "Observed state, written only by the operator."
    # One condition per type (a map-list, as in metav1.Condition lists): merge patches and
    # server-side apply address a condition by its type.
    status["properties"]["conditions"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    root = _root_schema("A fine-tuning run: model + dataset + method -> an adapter in object storage.", spec=spec, status=status)
    root["x-kubernetes-validations"] = [
        cel(
            f"size(self.metadata.name) <= {c.MAX_JOB_NAME_LENGTH}",
            f"metadata.name must be at most {c.MAX_JOB_NAME_LENGTH} characters (it names the Job, its pods and the <name>-workers Service)",
            None,
            "FieldValueInvalid",
        ),
        cel(
            f"self.metadata.name.matches('{c.JOB_NAME_PATTERN}')",
            "metadata.name must start with a letter and hold only lowercase letters, digits and '-' "
            "(a DNS-1035 label: it names the <name>-workers Service)",
            None,
            "FieldValueInvalid",
        ),
        *_immutability_rules(list(spec["properties"])),
    ]
    columns: list[dict[str, Any]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent", "description": "Percent of training steps done"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
        {"name": "Workers", "type": "integer", "jsonPath": ".status.workers.ready", "priority": 1},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(c.contract.PLURAL_JOB, c.contract.KIND_JOB, "Namespaced", ["ftj"], root, columns, status=True)


def runtime_crd() -> dict[str, Any]:
    spec = model_schema(api.ClusterFineTuneRuntimeSpec)
    root = _root_schema("A preset for FineTuneJobs, owned by the platform team (cluster-scoped).", spec=spec)
    columns: list[dict[str, Any]] = [
        {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
        {"name": "Max-Nodes", "type": "integer", "jsonPath": ".spec.maxNodes"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(c.contract.PLURAL_RUNTIME, c.contract.KIND_RUNTIME, "Cluster", ["ftr"], root, columns, status=False)


HEADER = "# Generated by `make crds` (python -m finetune_operator.crdgen crds/) from\n# operator/finetune_operator/api.py. Do not edit: change the models and regenerate.\n"


def render() -> dict[str, str]:
    """File name -> YAML text for everything in crds/."""
    files = {
        "finetune.dev_finetunejobs.yaml": [finetunejob_crd()],
        "finetune.dev_clusterfinetuneruntimes.yaml": [runtime_crd()],
    }
    return {
        name: HEADER + "---\n".join(yaml.safe_dump(doc, sort_keys=False, width=120) for doc in docs)
        for name, docs in files.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=pathlib.Path)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on drift")
    args = parser.parse_args(argv)
    drift = False
    for name, text in render().items():
        path = args.directory / name
        if args.check:
            current = path.read_text() if path.exists() else ""
            if current != text:
                drift = True
                sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), "generated"))
        else:
            args.directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if drift:
        print("crds/ drifted from operator/finetune_operator/api.py: run `make crds`", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())

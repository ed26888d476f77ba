"""Reading a FineTuneJob manifest and checking it with the operator's own API models.

The spec is validated by `finetune_operator.api.parse_job`, the pydantic models the CRD is
generated from, so `ftctl validate` rejects what the API server would reject, naming each field.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import yaml
from finetune_operator.constants import JOB_NAME_PATTERN as NAME_PATTERN  # the CRD's own rule
from finetune_trainer import contract

from .errors import UserError


@dataclasses.dataclass(frozen=True)
class JobManifest:
    """A FineTuneJob read from a file: the raw document and its validated spec."""

    path: pathlib.Path
    document: dict[str, Any]
    spec: Any  # finetune_operator.api.FineTuneJobSpec

    @property
    def name(self) -> str:
        return str(self.document["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        ns = self.document["metadata"].get("namespace")
        return str(ns) if ns else None


def read_document(path: pathlib.Path) -> dict[str, Any]:
    """The single YAML document in `path`; clear errors for a missing file or broken YAML."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a FineTuneJob YAML file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if len(docs) != 1:
        raise UserError(f"{path}: expected exactly one YAML document (a FineTuneJob), found {len(docs)}")
    doc = docs[0]
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping (a FineTuneJob), found {type(doc).__name__}")
    return doc


def check_document(doc: dict[str, Any], path: pathlib.Path) -> Any:
    """Validate apiVersion/kind/metadata and the spec; every problem reported at once."""
    from finetune_operator.api import InvalidResource, parse_job
    from finetune_operator.constants import MAX_JOB_NAME_LENGTH

    problems: list[str] = []
    if doc.get("apiVersion") != contract.API_VERSION:
        problems.append(f"apiVersion: must be {contract.API_VERSION}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != contract.KIND_JOB:
        problems.append(f"kind: must be {contract.KIND_JOB}, got {doc.get('kind')!r}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        problems.append("metadata: required (with a name)")
    else:
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            problems.append("metadata.name: required")
        elif not re.fullmatch(NAME_PATTERN, name) or len(name) > MAX_JOB_NAME_LENGTH:
            problems.append(
                f"metadata.name: {name!r} must be a DNS label of at most "
                f"{MAX_JOB_NAME_LENGTH} characters "
                "(starting with a letter; lowercase letters, digits, '-')"
            )
    spec = doc.get("spec")
    parsed = None
    if not isinstance(spec, dict):
        problems.append("spec: required (a mapping with model, dataset, ...)")
    else:
        try:
            parsed = parse_job(spec)
        except InvalidResource as err:
            problems.extend(_friendlier(line, spec) for line in str(err).splitlines())
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise UserError(f"{path} is not a valid FineTuneJob:\n{listing}")
    return parsed


def _friendlier(line: str, spec: dict[str, Any]) -> str:
    """Replace pydantic's regex dump for a pattern mismatch by the field's own description."""
    m = re.match(r"^spec\.([\w.]+): String should match pattern", line)
    if not m:
        return line
    from finetune_operator.api import FineTuneJobSpec

    path = m.group(1).split(".")
    model: Any = FineTuneJobSpec
    value: Any = spec
    description = None
    for part in path:
        field = next((f for n, f in getattr(model, "model_fields", {}).items()
                      if (f.alias or n) == part or n == part), None)
        value = value.get(part) if isinstance(value, dict) else None
        if field is None:
            return line
        description = field.description
        model = _model_of(field.annotation)
    if not description:
        return line
    return f"spec.{m.group(1)}: {value!r} is not valid (expected {description})"


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside `X | None` (or the annotation itself)."""
    from typing import get_args

    for arg in (annotation, *get_args(annotation)):
        if hasattr(arg, "model_fields"):
            return arg
    return None


def apply_sets(doc: dict[str, Any], assignments: list[str], path: pathlib.Path) -> dict[str, Any]:
    """Apply `--set spec.a.b=value` (value parsed as YAML) to a copy of the document."""
    import copy

    out = copy.deepcopy(doc)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected PATH=VALUE, e.g. spec.hyperparameters.epochs=4")
        parts = key.strip().split(".")
        if parts[0] != "spec":
            parts.insert(0, "spec")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        node: Any = out
        for part in parts[:-1]:
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part} is not a mapping in {path}")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a mapping in {path}")
        node[parts[-1]] = value
    return out


def load(path: pathlib.Path, sets: list[str] | None = None) -> JobManifest:
    doc = read_document(path)
    if sets:
        doc = apply_sets(doc, sets, path)
    spec = check_document(doc, path)
    return JobManifest(path=path, document=doc, spec=spec)

"""The declared layering of operator/finetune_operator (docs/operator.md), checked on imports:
handlers -> reconcile -> plan -> builders/resolve -> api/constants/views; `kube` is the only
module that talks to the API server, `progress` the only one that talks to trainer pods."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "operator" / "finetune_operator"

ALLOWED = {
    "main": {"handlers", "constants", "kube", "leader", "metrics", "kopf_fixes"},
    "leader": {"kube"},
    "kopf_fixes": set(),
    "handlers": {"reconcile", "kube", "progress", "resolve", "views", "constants"},
    "reconcile": {"plan", "kube", "metrics", "api", "resolve", "views", "progress", "constants"},
    "kube": {"plan", "resolve", "views", "constants"},
    "plan": {"builders", "resolve", "api", "views", "constants"},
    "builders": {"resolve", "constants"},
    "resolve": {"api", "constants"},
    "api": {"constants"},
    "views": {"constants"},
    "progress": {"api", "constants"},
    "metrics": {"constants"},
    "crdgen": {"api", "constants"},
    "constants": set(),
    "__init__": set(),
}
#: Network clients: only these modules may import them.
NETWORK = {"aiohttp": {"kube", "progress", "handlers", "main"}, "kubernetes": set(), "requests": set(), "urllib3": set()}  # main: the /healthz server


def imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
    own, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "finetune_operator":
                own |= {a.name for a in node.names}
            elif node.module.startswith("finetune_operator."):
                own.add(node.module.split(".")[1])
            else:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                (own.add(a.name.split(".")[1]) if a.name.startswith("finetune_operator.") else external.add(a.name.split(".")[0]))
    return own, external


@pytest.mark.parametrize("path", sorted(PKG.glob("*.py")), ids=lambda p: p.stem)
def test_module_imports_only_its_lower_layers(path: pathlib.Path) -> None:
    assert path.stem in ALLOWED, f"new module {path.name}: declare its layer in ALLOWED"
    own, external = imports(path)
    assert own <= ALLOWED[path.stem], f"{path.name} imports {sorted(own - ALLOWED[path.stem])}"
    for lib, modules in NETWORK.items():
        if lib in external:
            assert path.stem in modules, f"{path.name} imports {lib}: only {sorted(modules)} may talk to the network"


#: The one module allowed to touch kopf's internals: a pinned-version fix (see its docstring).
KOPF_INTERNALS = {"kopf_fixes"}


def test_no_private_kopf_imports() -> None:
    for path in PKG.glob("*.py"):
        if path.stem not in KOPF_INTERNALS:
            assert "kopf._" not in path.read_text(), f"{path.name} imports kopf internals"


#: kopf decorators the operator may use. Change-detecting ones (on.create/update/resume/delete/
#: field) would need a diff-base, which handlers.NoDiffBase deliberately does not keep.
KOPF_DECORATORS = {"on.startup", "on.cleanup", "on.login", "on.probe", "on.event", "index"}


def kopf_decorators(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                name = ast.unparse(target)
                if name.startswith("kopf."):
                    found.add(name.removeprefix("kopf."))
    return found


def test_only_level_triggered_kopf_handlers() -> None:
    used = set().union(*(kopf_decorators(p) for p in PKG.glob("*.py")))
    assert "on.event" in used and "index" in used  # the scan itself works
    assert used <= KOPF_DECORATORS, f"change-detecting kopf handlers need a diff-base storage: {sorted(used - KOPF_DECORATORS)}"

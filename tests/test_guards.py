"""Grep-level guards over the test suite itself (run in CI with everything else).

- No `assert ... .count(...)` on Prometheus text: a metric's name appears in its HELP and TYPE
  lines and in a 0 sample, so counting occurrences passes whatever the code does. Parse the
  exposition instead (tests/support/metrics.py) and compare sample values.
- Every `def test_` asserts something: an `assert` statement, `pytest.raises`/`pytest.fail`/
  `pytest.warns`, or a call to a helper named `assert_*`. Tests that rely on something else
  (a helper that raises on timeout, say) must be listed in ALLOWED_WITHOUT_ASSERT with a reason.
"""

from __future__ import annotations

import ast
import pathlib
import re

TESTS = pathlib.Path(__file__).resolve().parent
#: "path::test name" -> why it needs no assert of its own (keep this empty if at all possible).
ALLOWED_WITHOUT_ASSERT: dict[str, str] = {}
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*_(total|seconds|bytes|ratio|count|sum|bucket|info)$|^finetune_[a-z0-9_]+$")
METRIC_SOURCES = re.compile(r"metric|scrape|exposition|prom", re.I)


def suite_files() -> list[pathlib.Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


def metric_counts(tree: ast.AST) -> list[int]:
    """Lines of `assert` statements that count occurrences in metric text."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for call in ast.walk(node.test):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "count"):
                continue
            receiver = _name(call.func.value)
            arg = call.args[0] if call.args else None
            named = isinstance(arg, ast.Constant) and isinstance(arg.value, str) and METRIC_NAME.search(arg.value)
            if named or METRIC_SOURCES.search(receiver):
                lines.append(node.lineno)
    return lines


def asserts_something(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in ("raises", "fail", "warns") or name.startswith("assert_"):
                return True
    return False


def test_no_assert_counts_occurrences_in_metric_text() -> None:
    found = [f"{p.relative_to(TESTS.parent)}:{line}" for p in suite_files() for line in metric_counts(ast.parse(p.read_text()))]
    assert found == [], "parse the metrics (tests/support/metrics.py) instead of counting names in the text: " + ", ".join(found)


def test_every_test_asserts_something() -> None:
    missing = []
    for p in suite_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_") and not asserts_something(node):
                key = f"{p.relative_to(TESTS.parent)}::{node.name}"
                if key not in ALLOWED_WITHOUT_ASSERT:
                    missing.append(key)
    assert missing == [], "tests that assert nothing: " + ", ".join(missing)


def test_the_guards_catch_what_they_name() -> None:
    """The checks themselves: the patterns they exist for are found, lookalikes are not."""
    bad = ast.parse('def test_x():\n    assert ftop.metrics().count("finetune_operator_restarts_total") >= 1\n'
                    'def test_y():\n    assert text.count("foo_total") == 1\n')
    assert metric_counts(bad) == [2, 4]
    fine = ast.parse('def test_z():\n    assert kinds.count("Deployment") == 1 and ids.count(3) == 1\n')
    assert metric_counts(fine) == []
    tree = ast.parse("def test_a():\n    run()\ndef test_b():\n    assert_exact(1)\ndef test_c():\n    with pytest.raises(E):\n        run()\n")
    assert [asserts_something(f) for f in tree.body if isinstance(f, ast.FunctionDef)] == [False, True, True]

"""ftctl reports user mistakes as one clean message naming the field, exit code 2, no traceback.

Run: .venv/bin/python -m pytest tests/cli/test_user_errors.py
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from ftctl.main import app
from typer.testing import CliRunner

from tests.cli.conftest import VALID_JOB, job


def invoke(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, list(args), env=env)
    assert "Traceback" not in result.output + (result.stderr or ""), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_valid_manifest_passes_schema_check(runner: CliRunner, write_manifest: Any) -> None:
    result = invoke(runner, "validate", "--no-preflight", str(write_manifest(VALID_JOB)))
    assert result.exit_code == 0, result.output
    assert "matches the schema" in result.output


BAD_MANIFESTS: list[tuple[str, Any, list[str]]] = [
    ("broken YAML", "apiVersion: finetune.dev/v1alpha1\nkind: FineTuneJob\nspec: [unclosed\n", ["not valid YAML", "line"]),
    ("two documents", "a: 1\n---\nb: 2\n", ["exactly one YAML document"]),
    ("a list", "- 1\n- 2\n", ["expected a mapping"]),
    ("wrong kind", {**VALID_JOB, "kind": "TrainJob"}, ["kind: must be FineTuneJob"]),
    ("wrong apiVersion", {**VALID_JOB, "apiVersion": "finetune.dev/v1"}, ["apiVersion: must be finetune.dev/v1alpha1"]),
    ("no name", {**VALID_JOB, "metadata": {}}, ["metadata.name: required"]),
    ("name too long", {**VALID_JOB, "metadata": {"name": "x" * 60}}, ["metadata.name", "48"]),
    ("uppercase name", {**VALID_JOB, "metadata": {"name": "Sentiment"}}, ["metadata.name", "DNS label"]),
    ("missing model", job(model=None), ["spec.model", "required"]),
    ("bad model URI", job(model={"uri": "ftp://models/x"}), ["spec.model.uri"]),
    ("bad dataset format", job(dataset={"uri": "s3://datasets/x.jsonl", "format": "csv"}), ["spec.dataset.format"]),
    ("learning rate 0", job(hyperparameters={"learningRate": 0}), ["spec.hyperparameters.learningRate"]),
    ("batch size as text", job(hyperparameters={"batchSize": "big"}), ["spec.hyperparameters.batchSize"]),
    ("misspelled block", job(hyperparams={"epochs": 1}), ["spec.hyperparams", "Extra inputs"]),
    ("lora block with full", job(method={"type": "full", "lora": {"r": 8}}), ["method.lora is only allowed"]),
    ("too many nodes", job(resources={"nodes": 500}), ["spec.resources.nodes"]),
    ("name starting with a digit", {**VALID_JOB, "metadata": {"name": "1job"}}, ["metadata.name", "starting with a letter"]),
]


@pytest.mark.parametrize(("case", "doc", "expected"), BAD_MANIFESTS, ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_a_clean_user_error(runner: CliRunner, write_manifest: Any, case: str, doc: Any,
                                            expected: list[str]) -> None:
    result = invoke(runner, "validate", "--no-preflight", str(write_manifest(doc)))
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output, f"{case}: {text!r} not in:\n{result.output}"


def test_every_problem_is_reported_at_once(runner: CliRunner, write_manifest: Any) -> None:
    doc = job(hyperparameters={"learningRate": -1, "batchSize": 0}, model={"uri": "nope"})
    result = invoke(runner, "validate", "--no-preflight", str(write_manifest(doc)))
    assert result.exit_code == 2
    for field in ("spec.hyperparameters.learningRate", "spec.hyperparameters.batchSize", "spec.model.uri"):
        assert field in result.output


def test_missing_file(runner: CliRunner, tmp_path: pathlib.Path) -> None:
    result = invoke(runner, "validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_submit_with_missing_kubeconfig(runner: CliRunner, write_manifest: Any, tmp_path: pathlib.Path) -> None:
    result = invoke(runner, "submit", str(write_manifest(VALID_JOB)), "--kubeconfig", str(tmp_path / "kc"))
    assert result.exit_code == 2
    assert "kubeconfig" in result.output and "does not exist" in result.output


def test_submit_checks_the_manifest_before_the_cluster(runner: CliRunner, write_manifest: Any) -> None:
    result = invoke(runner, "submit", str(write_manifest(job(model=None))), "--kubeconfig", "/nonexistent")
    assert result.exit_code == 2
    assert "spec.model" in result.output


def test_unreachable_cluster_is_a_failure_not_a_traceback(runner: CliRunner, tmp_path: pathlib.Path) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u, namespace: team-a}}]\n"
    )
    result = invoke(runner, "list", "--kubeconfig", str(kc))
    assert result.exit_code == 1
    assert "cannot reach the Kubernetes API server" in result.output


def test_run_needs_local(runner: CliRunner, write_manifest: Any) -> None:
    result = invoke(runner, "run", str(write_manifest(VALID_JOB)))
    assert result.exit_code == 2
    assert "--local" in result.output


def test_status_rejects_unknown_output_format(runner: CliRunner, tmp_path: pathlib.Path) -> None:
    result = invoke(runner, "status", "x", "--output", "yaml", "--kubeconfig", str(tmp_path / "none"))
    assert result.exit_code == 2


def test_download_from_missing_directory_names_it(runner: CliRunner, tmp_path: pathlib.Path) -> None:
    result = invoke(runner, "download", str(tmp_path / "no-run"), str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "manifest.json does not exist" in result.output


def test_console_script_exit_code_and_stderr() -> None:
    """The installed entry point (python -m ftctl) prints one line on stderr, no traceback."""
    env = {**os.environ, "FTCTL_DEBUG": ""}
    proc = subprocess.run([sys.executable, "-m", "ftctl", "validate", "/nonexistent.yaml"],
                          capture_output=True, text=True, env=env, check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""

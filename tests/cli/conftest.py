"""Helpers for the ftctl tests: a valid FineTuneJob document and a CLI runner."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.cluster.fixtures import kube_cluster, kube_namespace
from tests.support.s3 import s3_server

__all__ = ["kube_cluster", "kube_namespace", "s3_server"]

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data" / "sentiment.jsonl"

VALID_JOB: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "sentiment", "namespace": "team-a"},
    "spec": {
        "model": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2"},
        "dataset": {"uri": "s3://datasets/sentiment.jsonl", "format": "classification"},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
        "hyperparameters": {"epochs": 1, "learningRate": 5.0e-4, "batchSize": 16, "maxSeqLength": 64},
        "resources": {"nodes": 1, "gpusPerNode": 0},
        "output": {"uri": "s3://models/sentiment/", "endpoint": "http://minio.minio:9000"},
    },
}


def job(**spec_changes: Any) -> dict[str, Any]:
    """A copy of VALID_JOB; keyword arguments replace whole spec fields (None deletes one)."""
    doc = copy.deepcopy(VALID_JOB)
    for key, value in spec_changes.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


@pytest.fixture
def write_manifest(tmp_path: pathlib.Path) -> Any:
    def write(doc: Any, name: str = "job.yaml") -> pathlib.Path:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


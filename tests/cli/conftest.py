"""Helpers for the ftctl tests: a valid FineTuneJob document and a CLI runner."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.cluster.fixtures import kube_cluster, kube_namespace

__all__ = ["kube_cluster", "kube_namespace"]

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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real moto S3 server process on 127.0.0.1 (a free port); stopped by PID at the end."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    exe = pathlib.Path(sys.executable).with_name("moto_server")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(s3_server: str, tmp_path: pathlib.Path) -> dict[str, str]:
    """Environment for ftctl against the moto server (moto accepts any credentials)."""
    import os

    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test-secret")

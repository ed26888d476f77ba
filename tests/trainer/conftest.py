"""Fixtures for trainer tests: the shared S3/HTTP/Prometheus fixtures plus tiny models on disk."""

from __future__ import annotations

import pathlib

import pytest

from tests.support.caches import CACHE_ROOT
from tests.support.http import http_files  # noqa: F401  (pytest fixture)
from tests.support.prometheus import prometheus_binary  # noqa: F401  (pytest fixture)
from tests.support.s3 import s3, s3_server  # noqa: F401  (pytest fixtures)

from .helpers import build_tiny_llama, minilm_path


@pytest.fixture(scope="session")
def tiny_llama() -> pathlib.Path:
    """A 2-layer Llama (hidden 64) with MiniLM's tokenizer and a chat template, built once."""
    return build_tiny_llama(CACHE_ROOT / "models" / "tiny-llama-h64-l2-v2")


@pytest.fixture(scope="session")
def minilm() -> pathlib.Path:
    return minilm_path()


@pytest.fixture
def work_env(tmp_path: pathlib.Path) -> dict[str, str]:
    """Per-test scratch directories for the trainer (work dir, termination message)."""
    return {
        "FINETUNE_WORK_DIR": str(tmp_path / "work"),
        "FINETUNE_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log"),
    }

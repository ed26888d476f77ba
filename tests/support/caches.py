"""Cache directories the tests control (never the repository, never the default home caches)."""

from __future__ import annotations

import os
import pathlib

CACHE_ROOT = pathlib.Path(os.environ.get("FINETUNE_TEST_CACHE", pathlib.Path.home() / ".cache" / "finetune-operator"))


def cache_env() -> dict[str, str]:
    """Environment for processes that run torch/transformers/DeepSpeed offline with our caches."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    return {
        "HF_HOME": str(CACHE_ROOT / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": str(CACHE_ROOT / "torch_extensions"),
        "TRITON_CACHE_DIR": str(CACHE_ROOT / "triton"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }

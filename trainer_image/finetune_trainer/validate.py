"""The `validate` command: check a job's inputs without training (the operator's Validating phase).

    python -m finetune_trainer validate --config cfg.yaml

Loads the model config and tokenizer (weights are not downloaded from s3:// or hf://), fetches
the dataset, parses every row for its format and reports row count, token statistics and rows
longer than maxSeqLength as a JSON summary; writes (and deletes) a probe object at the output
location, so a typo in the output bucket fails here, before any GPU is requested. Exit code 0
when usable, else a contract code (2 for an output that cannot be written).
"""

from __future__ import annotations

import tempfile
from typing import Any

from .config import TrainerConfig
from .data import split
from .errors import DataError
from .inputs import prepare
from .recipes import load_inputs
from .sources import fetch_dataset, fetch_model, work_dir
from .storage import Output


def run(cfg: TrainerConfig) -> dict[str, Any]:
    """Return the summary; raise DataError/ConfigError when the inputs are not usable."""
    work = work_dir(cfg)
    with tempfile.TemporaryDirectory(dir=work, prefix="validate-") as tmp:
        from pathlib import Path

        scratch = Path(tmp)
        model_dir = fetch_model(cfg, scratch, config_only=True)
        model_info = _model_info(model_dir, cfg)
        inputs = load_inputs(model_dir, cfg)
        files = fetch_dataset(cfg, scratch)
        prepared = prepare(cfg, files, model_dir, inputs, scratch)
        hp = cfg.hyperparameters
        train, val = split(prepared.examples, cfg.dataset.validation_split, hp.seed)
    Output(cfg.output.uri, cfg.output.endpoint).check_writable()
    summary: dict[str, Any] = {
        "status": "Valid",
        "model": model_info,
        "dataset": {
            "format": cfg.dataset.format,
            "files": len(files),
            **prepared.stats_dict(),
            "trainRows": len(train),
            "validationRows": len(val),
        },
        "maxSeqLength": hp.max_seq_length,
        "output": {"uri": cfg.output.uri, "writable": True},
    }
    return summary


def _model_info(model_dir: Any, cfg: TrainerConfig) -> dict[str, Any]:
    from transformers import AutoConfig

    try:
        mc = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=cfg.model.trust_remote_code)
    except Exception as err:
        raise DataError(f"model.uri: config.json does not load: {type(err).__name__}: {err}") from None
    return {
        "uri": cfg.model.uri,
        "modelType": getattr(mc, "model_type", None),
        "architectures": getattr(mc, "architectures", None),
        "vocabSize": getattr(mc, "vocab_size", None),
        "maxPositionEmbeddings": getattr(mc, "max_position_embeddings", None),
    }

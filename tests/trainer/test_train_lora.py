"""Real LoRA fine-tunes on CPU with every byte going through the moto S3 server.

- tiny Llama (built from a config), chat format: model, dataset and output on S3
- MiniLM classifier, dataset over HTTP from a local server
The loss must fall, the manifest must describe every uploaded file, and the uploaded adapter,
reloaded with peft onto a fresh base model, must reproduce the trained model's outputs.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import torch
from finetune_trainer import contract
from finetune_trainer.storage import sha256_file

from tests.support.http import HttpFiles
from tests.support.s3 import S3Server

from .helpers import (
    chat_rows,
    run_trainer,
    sentiment_rows,
    summary_of,
    trainer_env,
    write_config,
    write_jsonl,
)

pytestmark = pytest.mark.slow


def _download_output(s3: S3Server, uri: str, dest: pathlib.Path) -> dict[str, Any]:
    s3.download_prefix(uri, dest)
    manifest = json.loads((dest / contract.MANIFEST_NAME).read_text())
    for f in manifest["files"]:
        p = dest / f["path"]
        assert p.stat().st_size == f["size"] and sha256_file(p) == f["sha256"], f["path"]
    return dict(manifest)


def _check_reload(base_dir: pathlib.Path, adapter_dir: pathlib.Path, manifest: dict[str, Any], classification: bool) -> None:
    """peft.PeftModel.from_pretrained on a fresh base reproduces the trained model's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check = manifest["outputCheck"]
    if classification:
        base = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=len(manifest["dataset"]["labels"]))
    else:
        base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    for ids, expected in zip(check["inputIds"], check["logits"], strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        row = logits if logits.dim() == 1 else logits[-1]
        assert torch.allclose(row[: len(expected)], torch.tensor(expected), atol=1e-4), (row[:4], expected[:4])
    # and the base model alone does NOT produce them (the adapter carries the training)
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=torch.tensor([check["inputIds"][0]])).logits[0]
    plain_row = plain if plain.dim() == 1 else plain[-1]
    assert not torch.allclose(plain_row[: len(check["logits"][0])], torch.tensor(check["logits"][0]), atol=1e-3)


def test_lora_chat_tiny_llama_all_on_s3(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    bucket = s3.create_bucket()
    s3.upload_dir(tiny_llama, f"s3://{bucket}/models/tiny-llama/")
    s3.upload_file(write_jsonl(tmp_path / "chat.jsonl", chat_rows(96)), f"s3://{bucket}/data/chat.jsonl")
    cfg = write_config(tmp_path / "cfg.json", {
        "jobName": "chat-lora", "namespace": "team-a",
        "model": {"uri": f"s3://{bucket}/models/tiny-llama"},
        "dataset": {"uri": f"s3://{bucket}/data/chat.jsonl", "format": "chat", "validationSplit": 0.1},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                            "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}},
        "hyperparameters": {"maxSteps": 16, "learningRate": 0.01, "batchSize": 8, "maxSeqLength": 64, "warmupRatio": 0.0, "evalEverySteps": 8},
        "checkpoint": {"everySteps": 8, "keep": 1},
        "output": {"uri": f"s3://{bucket}/runs/chat-lora/", "endpoint": s3.endpoint},
    })
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env({**s3.env(), **work_env}))
    summary = summary_of(proc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert summary["status"] == "Succeeded" and summary["steps"] == 16
    assert summary["manifestUri"] == f"s3://{bucket}/runs/chat-lora/manifest.json"
    assert json.loads(pathlib.Path(work_env["FINETUNE_TERMINATION_MESSAGE_PATH"]).read_text())["status"] == "Succeeded"

    manifest = _download_output(s3, f"s3://{bucket}/runs/chat-lora/", tmp_path / "out2")
    rows = [json.loads(line) for line in (tmp_path / "out2" / contract.METRICS_HISTORY_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses  # loss goes down
    evals = [r["evalLoss"] for r in rows if "evalLoss" in r]
    assert len(evals) >= 2 and evals[-1] < evals[0], evals
    paths = {f["path"] for f in manifest["files"]}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer_config.json", "metrics.jsonl"} <= paths
    assert manifest["baseModel"] == f"s3://{bucket}/models/tiny-llama"
    adapter_config = json.loads((tmp_path / "out2" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == f"s3://{bucket}/models/tiny-llama"  # not the pod's download dir
    assert manifest["method"]["type"] == "lora" and manifest["hyperparameters"]["maxSteps"] == 16
    assert {"torch", "transformers", "peft"} <= set(manifest["versions"])
    assert manifest["metrics"]["trainedTokens"] > 0
    # manifest.json is written after every file it lists
    client = s3.client()
    stamp = {k: client.head_object(Bucket=bucket, Key=f"runs/chat-lora/{k}")["LastModified"] for k in [*paths, "manifest.json"]}
    assert all(stamp["manifest.json"] >= t for t in stamp.values())
    # the last checkpoint kept (keep: 1) is complete
    ckpt_keys = s3.list_keys(f"s3://{bucket}/runs/chat-lora/checkpoints/")
    assert "runs/chat-lora/checkpoints/step-8/manifest.json" in ckpt_keys
    _check_reload(tiny_llama, tmp_path / "out2" / "adapter", manifest, classification=False)
    assert s3.secret_key not in proc.stdout + proc.stderr


def test_lora_classification_minilm_http_dataset(
    s3: S3Server, minilm: pathlib.Path, http_files: HttpFiles, tmp_path: pathlib.Path, work_env: dict[str, str]
) -> None:
    bucket = s3.create_bucket()
    s3.upload_dir(minilm, f"s3://{bucket}/minilm/")
    url = http_files.add("sentiment.jsonl", "".join(json.dumps(r) + "\n" for r in sentiment_rows(160)).encode())
    cfg = write_config(tmp_path / "cfg.json", {
        "jobName": "sentiment",
        "model": {"uri": f"s3://{bucket}/minilm", "endpoint": s3.endpoint},
        "dataset": {"uri": url, "format": "classification", "validationSplit": 0.2},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 24, "learningRate": 0.003, "batchSize": 16, "maxSeqLength": 64, "warmupRatio": 0.0},
        "checkpoint": {"everySteps": 100},
        "output": {"uri": f"s3://{bucket}/runs/sentiment"},
    })
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env({**s3.env(), **work_env}))
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = _download_output(s3, f"s3://{bucket}/runs/sentiment/", tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:4]) / 4
    last = sum(r["loss"] for r in rows[-5:-1]) / 4
    assert last < first - 0.1, (first, last)
    assert manifest["method"]["resolvedTargetModules"] == ["dense", "key", "query", "value"]  # all-linear by default
    assert manifest["dataset"]["rows"] == 160 and manifest["dataset"]["validationExamples"] == 32
    assert "final" in rows[-1] and rows[-1]["evalLoss"] < 0.69
    _check_reload(minilm, tmp_path / "out" / "adapter", manifest, classification=True)


def test_wrong_credentials_and_missing_objects_are_clear(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    bucket = s3.create_bucket()
    s3.upload_dir(tiny_llama, f"s3://{bucket}/m/")
    s3.put_bytes(f"s3://{bucket}/d/chat.jsonl", "".join(json.dumps(r) + "\n" for r in chat_rows(8)).encode())

    def cfg(model: str, data: str, name: str) -> pathlib.Path:
        return write_config(tmp_path / f"{name}.json", {
            "model": {"uri": model}, "dataset": {"uri": data, "format": "chat"},
            "hyperparameters": {"maxSteps": 1, "maxSeqLength": 32},
            "output": {"uri": str(tmp_path / f"out-{name}")},
        })

    # wrong secret key: the server rejects the signature
    proc = run_trainer(["validate", "--config", str(cfg(f"s3://{bucket}/m", f"s3://{bucket}/d/chat.jsonl", "creds"))],
                       trainer_env({**s3.env(wrong_secret=True), **work_env}))
    summary = summary_of(proc)
    assert proc.returncode == contract.EXIT_DATA_ERROR
    assert f"s3://{bucket}/m" in summary["message"] and "credentials were rejected" in summary["message"]
    assert "Traceback" not in proc.stderr
    assert s3.secret_key not in proc.stdout + proc.stderr

    # a dataset key that does not exist
    proc = run_trainer(["validate", "--config", str(cfg(f"s3://{bucket}/m", f"s3://{bucket}/d/missing.jsonl", "missing"))],
                       trainer_env({**s3.env(), **work_env}))
    summary = summary_of(proc)
    assert proc.returncode == contract.EXIT_DATA_ERROR
    assert summary["message"] == f"cannot read s3://{bucket}/d/missing.jsonl: no objects under this prefix"

    # a bucket that does not exist, for the model
    proc = run_trainer(["validate", "--config", str(cfg("s3://no-such-bucket-x/m", f"s3://{bucket}/d/chat.jsonl", "bucket"))],
                       trainer_env({**s3.env(), **work_env}))
    assert proc.returncode == contract.EXIT_DATA_ERROR
    assert "s3://no-such-bucket-x/m: bucket does not exist" in summary_of(proc)["message"]

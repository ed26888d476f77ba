"""Multi-process training on CPU: two torchrun "nodes" on loopback, DeepSpeed ZeRO-2 and ZeRO-3.

Each launcher is configured only through the PET_* environment, as the operator configures pods.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import torch
from finetune_trainer import contract
from safetensors.torch import load_file

from tests.support.ports import free_port
from tests.support.s3 import S3Server

from .helpers import (
    CACHE_ROOT,
    chat_rows,
    run_trainer,
    summary_of,
    trainer_env,
    write_config,
    write_jsonl,
)
from .test_train_lora import _check_reload, _download_output

pytestmark = pytest.mark.slow

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _chat_config(tmp_path: pathlib.Path, name: str, model: str, data: str, output: str, method: dict, steps: int = 8, lr: float = 0.01) -> pathlib.Path:  # type: ignore[type-arg]
    return write_config(tmp_path / f"{name}.json", {
        "jobName": name,
        "model": {"uri": model},
        "dataset": {"uri": data, "format": "chat", "validationSplit": 0.1},
        "method": method,
        "hyperparameters": {"maxSteps": steps, "learningRate": lr, "batchSize": 4, "maxSeqLength": 64, "warmupRatio": 0.0},
        "checkpoint": {"everySteps": 4, "keep": 2},
        "output": {"uri": output},
    })


def test_two_torchrun_nodes_on_loopback_train_one_job(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bucket = s3.create_bucket()
    s3.upload_dir(tiny_llama, f"s3://{bucket}/model/")
    s3.upload_file(write_jsonl(tmp_path / "chat.jsonl", chat_rows(96)), f"s3://{bucket}/chat.jsonl")
    cfg = _chat_config(tmp_path, "two-nodes", f"s3://{bucket}/model", f"s3://{bucket}/chat.jsonl", f"s3://{bucket}/out",
                       {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ALL_LINEAR}})
    results = _two_nodes(s3, cfg, tmp_path, {})
    for rc, _out, err in results:
        assert rc == 0, err[-4000:]
    out0 = results[0][1]
    summary = json.loads(out0[out0.find("{"):])
    assert summary["status"] == "Succeeded" and summary["steps"] == 8
    manifest = _download_output(s3, f"s3://{bucket}/out/", tmp_path / "out")
    assert manifest["worldSize"] == 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    # both nodes stored their RNG state in the shared checkpoint
    keys = s3.list_keys(f"s3://{bucket}/out/checkpoints/step-4/")
    assert {"out/checkpoints/step-4/rng-rank0.pt", "out/checkpoints/step-4/rng-rank1.pt", "out/checkpoints/step-4/manifest.json"} <= set(keys)
    _check_reload(tiny_llama, tmp_path / "out" / "adapter", manifest, classification=False)


def _two_nodes(s3: S3Server, cfg: pathlib.Path, tmp_path: pathlib.Path, node_env: dict[int, dict[str, str]], timeout: float = 600) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of two torchrun "nodes" on loopback running `cfg`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    launchers = []
    for node_rank in (0, 1):
        env = trainer_env({
            **s3.env(),
            "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(node_rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
            "FINETUNE_WORK_DIR": str(tmp_path / f"node{node_rank}"),
            "FINETUNE_TERMINATION_MESSAGE_PATH": str(tmp_path / f"termination-{node_rank}"),
            **node_env.get(node_rank, {}),
        }, threads=1)
        launchers.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "-m", "finetune_trainer", "train", "--config", str(cfg)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(CACHE_ROOT),
        ))
    results = []
    for p in launchers:
        out, err = p.communicate(timeout=timeout)
        results.append((p.returncode, out, err))
    return results


def test_a_model_downloaded_once_reaches_the_other_node_from_the_first(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """model.download Once: only rank 0 reads the model from its source; node 1 gets the files
    over the job's network. Node 1's own model credentials are wrong, so any read of the model
    it made would fail (403, exit 3): with PerNode it does, with Once the job trains."""
    bucket = s3.create_bucket()
    s3.upload_dir(tiny_llama, f"s3://{bucket}/model/")
    s3.upload_file(write_jsonl(tmp_path / "chat.jsonl", chat_rows(64)), f"s3://{bucket}/chat.jsonl")
    wrong = {contract.role_env("MODEL", "AWS_ACCESS_KEY_ID"): s3.access_key, contract.role_env("MODEL", "AWS_SECRET_ACCESS_KEY"): "wrong-secret"}
    lora = {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}}

    def config(name: str, download: str) -> pathlib.Path:
        path = _chat_config(tmp_path, name, f"s3://{bucket}/model", f"s3://{bucket}/chat.jsonl", f"s3://{bucket}/{name}", lora, steps=2)
        cfg = json.loads(path.read_text())
        cfg["model"]["download"] = download
        path.write_text(json.dumps(cfg))
        return path

    once = _two_nodes(s3, config("once", "Once"), tmp_path / "once", {1: wrong})
    for rc, _out, err in once:
        assert rc == 0, err[-4000:]
    received = tmp_path / "once" / "node1" / "finetune" / "once" / "node-1" / "model-shared"
    assert sorted(p.name for p in received.iterdir()) == sorted(p.name for p in tiny_llama.iterdir())
    assert (received / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()
    assert not (tmp_path / "once" / "node1" / "finetune" / "once" / "node-1" / "model").exists()

    def ended(run: pathlib.Path, node: int) -> dict[str, Any]:
        """What the node's trainer wrote as its termination message (plain torchrun exits 1 for
        any failure; the image's launcher relays this exitCode)."""
        return dict(json.loads((run / f"termination-{node}").read_text()))

    per_node = _two_nodes(s3, config("pernode", "PerNode"), tmp_path / "pernode", {1: wrong})
    assert per_node[1][0] != 0 and ended(tmp_path / "pernode", 1)["exitCode"] == contract.EXIT_DATA_ERROR, per_node[1][2][-3000:]

    # rank 0 cannot read it: every rank ends with rank 0's error at once, none waits for files
    failed = _two_nodes(s3, config("broken", "Once"), tmp_path / "broken", {0: wrong}, timeout=300)
    first, second = ended(tmp_path / "broken", 0), ended(tmp_path / "broken", 1)
    assert first["exitCode"] == second["exitCode"] == contract.EXIT_DATA_ERROR, [e[-2000:] for _r, _o, e in failed]
    assert "(downloaded by rank 0)" in second["message"] and first["message"] in second["message"], (first, second)


def _torchrun_two(cfg: pathlib.Path, tmp_path: pathlib.Path, extra: dict[str, str] | None = None) -> tuple[dict, str]:  # type: ignore[type-arg]
    """(summary, stderr) of a two-process torchrun of the trainer."""
    env = trainer_env({"FINETUNE_WORK_DIR": str(tmp_path / "work"), **(extra or {})}, threads=1)
    proc = run_trainer(["train", "--config", str(cfg)], env, torchrun=["--standalone", "--nproc-per-node", "2"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    return summary_of(proc), proc.stderr


def test_deepspeed_zero2_lora_two_processes(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bucket = s3.create_bucket()
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(64))
    cfg = _chat_config(tmp_path, "ds-lora", str(tiny_llama), str(data), f"s3://{bucket}/out",
                       {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ALL_LINEAR}, "deepspeed": {"zeroStage": 2}})
    summary, _ = _torchrun_two(cfg, tmp_path, s3.env())
    assert summary["steps"] == 8
    manifest = _download_output(s3, f"s3://{bucket}/out/", tmp_path / "out")
    assert manifest["worldSize"] == 2 and manifest["method"]["deepspeed"]["zeroStage"] == 2
    # ZeRO-2 shards the optimizer: one shard per rank in the checkpoint
    keys = s3.list_keys(f"s3://{bucket}/out/checkpoints/step-4/")
    assert sum("optim_states" in k for k in keys) == 2, keys
    _check_reload(tiny_llama, tmp_path / "out" / "adapter", manifest, classification=False)

    # the same job asked for more steps resumes from the DeepSpeed checkpoint (ZeRO shards reloaded)
    longer = json.loads(cfg.read_text())
    longer["hyperparameters"]["maxSteps"] = 10
    cfg.write_text(json.dumps(longer))
    summary, stderr = _torchrun_two(cfg, tmp_path, s3.env())
    assert "resumed from checkpoint step 4 " in stderr and summary["steps"] == 10


def test_deepspeed_zero3_full_saves_consolidated_weights(tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(64))
    out = tmp_path / "out"
    cfg = _chat_config(tmp_path, "ds-full", str(tiny_llama), str(data), str(out),
                       {"type": "full", "deepspeed": {"zeroStage": 3}}, steps=4, lr=0.001)
    _, stderr = _torchrun_two(cfg, tmp_path)
    # from_pretrained ran under zero.Init: no rank ever held the whole model
    assert "ZeRO-3: weights loaded partitioned (zero.Init)" in stderr, stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == "model/"
    trained = load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(tiny_llama / "model.safetensors"))
    # no tensor was saved empty (a plain state_dict under ZeRO-3 would hold shape-(0,) tensors)
    for name, tensor in base.items():
        assert trained[name].shape == tensor.shape, name
    changed = [n for n in base if not torch.equal(base[n], trained[n])]
    assert len(changed) >= len(base) // 2, changed
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert torch.equal(model.state_dict()["model.layers.0.self_attn.q_proj.weight"], trained["model.layers.0.self_attn.q_proj.weight"])


def test_deepspeed_zero2_full_with_optimizer_offload(tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Optimizer states offloaded to CPU (DeepSpeedCPUAdam, built on first use and cached)."""
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(32))
    out = tmp_path / "out"
    cfg = _chat_config(tmp_path, "ds-offload", str(tiny_llama), str(data), str(out),
                       {"type": "full", "deepspeed": {"zeroStage": 2, "offloadOptimizer": True}}, steps=2, lr=0.001)
    summary, _ = _torchrun_two(cfg, tmp_path)
    assert summary["steps"] == 2
    trained = load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(tiny_llama / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert trained[name].shape == base[name].shape and not torch.equal(trained[name], base[name])


def test_deepspeed_zero2_full_in_one_process(tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The one-GPU setup (full fine-tune with ZeRO-2) runs without torchrun: a world of one."""
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(32))
    out = tmp_path / "out"
    cfg = _chat_config(tmp_path, "ds-one", str(tiny_llama), str(data), str(out),
                       {"type": "full", "deepspeed": {"zeroStage": 2}}, steps=3, lr=0.001)
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env({"FINETUNE_WORK_DIR": str(tmp_path / "work")}))
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary = summary_of(proc)
    assert summary["status"] == "Succeeded" and summary["steps"] == 3
    assert json.loads((out / "manifest.json").read_text())["worldSize"] == 1
    trained = load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(tiny_llama / "model.safetensors"))
    name = "model.layers.1.self_attn.o_proj.weight"
    assert trained[name].shape == base[name].shape and not torch.equal(trained[name], base[name])


@pytest.mark.parametrize(
    ("uri", "download", "nodes", "once"),
    [
        ("hf://org/model", "Auto", 2, True),  # the Hub: one download per job
        ("s3://models/base", "Auto", 4, False),  # an object store serves the nodes in parallel
        ("s3://models/base", "Once", 2, True),
        ("hf://org/model", "PerNode", 2, False),
        ("hf://org/model", "Once", 1, False),  # one node: nothing to share
        ("pvc://claim/model", "Once", 2, False),  # mounted, never downloaded
    ],
)
def test_which_models_are_downloaded_once_per_job(uri: str, download: str, nodes: int, once: bool) -> None:
    from finetune_trainer.config import ModelSource

    assert ModelSource.model_validate({"uri": uri, "download": download}).downloads_once(nodes) is once

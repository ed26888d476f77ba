"""Killed mid-run and restarted: the trainer resumes from the newest COMPLETE checkpoint on S3.

A checkpoint directory without its manifest (as left by a kill during a save) is never used.
The resumed run ends with exactly the weights of an uninterrupted run (same data order, RNG,
optimizer and scheduler state).
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
from finetune_trainer import contract

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

pytestmark = pytest.mark.slow

STEPS = 24


def _config(tmp_path: pathlib.Path, name: str, model: pathlib.Path, data: pathlib.Path, output: str) -> pathlib.Path:
    return write_config(tmp_path / f"{name}.json", {
        "jobName": name,
        "model": {"uri": str(model)},
        "dataset": {"uri": str(data), "format": "chat", "validationSplit": 0.1},
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
        "hyperparameters": {"maxSteps": STEPS, "learningRate": 0.01, "batchSize": 4, "maxSeqLength": 64, "packing": False},
        "checkpoint": {"everySteps": 4, "keep": 2},
        "output": {"uri": output},
    })


def test_kill_and_restart_resumes_from_newest_complete_checkpoint(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bucket = s3.create_bucket()
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(80))
    out = f"s3://{bucket}/resume"
    cfg = _config(tmp_path, "resume", tiny_llama, data, out)
    env = trainer_env({**s3.env(), "FINETUNE_WORK_DIR": str(tmp_path / "work")})

    # 1. start, wait for the step-8 checkpoint to be complete, then kill -9 (no chance to clean up)
    proc = subprocess.Popen([sys.executable, "-m", "finetune_trainer", "train", "--config", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(CACHE_ROOT))
    deadline = time.monotonic() + 300
    while "resume/checkpoints/step-8/manifest.json" not in s3.list_keys(f"{out}/checkpoints/"):
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    keys = s3.list_keys(f"{out}/checkpoints/")
    complete = sorted(int(m.group(1)) for k in keys if (m := re.search(r"step-(\d+)/manifest.json$", k)))
    assert complete and complete[-1] >= 8 and complete[-1] < STEPS
    assert "resume/manifest.json" not in s3.list_keys(out)  # not finished

    # 2. a half-written newer checkpoint: files, no manifest
    s3.put_bytes(f"{out}/checkpoints/step-{STEPS - 1}/trainable.pt", b"torn write")
    s3.put_bytes(f"{out}/checkpoints/step-{STEPS - 1}/trainer_state.json", b'{"step": 23')

    # 3. restart: resumes from the newest complete checkpoint and finishes
    proc2 = run_trainer(["train", "--config", str(cfg)], env)
    assert proc2.returncode == 0, proc2.stderr[-4000:]
    assert f"resumed from checkpoint step {complete[-1]} " in proc2.stderr
    summary = summary_of(proc2)
    assert summary["steps"] == STEPS
    history = [json.loads(line) for line in s3.get_bytes(f"{out}/metrics.jsonl").decode().splitlines()]
    steps = [r["step"] for r in history if "final" not in r]
    assert steps == list(range(1, STEPS + 1))  # history carried over from the checkpoint, no gaps
    kept = sorted({int(m.group(1)) for k in s3.list_keys(f"{out}/checkpoints/") if (m := re.search(r"step-(\d+)/manifest.json$", k))})
    assert kept == [16, 20]  # keep: 2

    # 4. the same job run without interruption ends with the same adapter outputs
    ref = run_trainer(["train", "--config", str(_config(tmp_path, "reference", tiny_llama, data, str(tmp_path / "ref")))],
                      trainer_env({"FINETUNE_WORK_DIR": str(tmp_path / "work-ref")}))
    assert ref.returncode == 0, ref.stderr[-3000:]
    resumed = json.loads(s3.get_bytes(f"{out}/manifest.json"))
    reference = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    for a, b in zip(resumed["outputCheck"]["logits"], reference["outputCheck"]["logits"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert resumed["metrics"]["loss"] == pytest.approx(reference["metrics"]["loss"], rel=1e-4)


def _corrupt_one_file(s3: S3Server, bucket: str, checkpoint_prefix: str) -> str:
    """Flip one byte of the checkpoint's largest file (same size, so only the sha256 can catch it)."""
    keys = [k for k in s3.list_keys(f"s3://{bucket}/{checkpoint_prefix}") if not k.endswith("manifest.json")]
    sizes = {k: len(s3.get_bytes(f"s3://{bucket}/{k}")) for k in keys}
    key = max(sizes, key=lambda k: sizes[k])
    data = bytearray(s3.get_bytes(f"s3://{bucket}/{key}"))
    data[len(data) // 2] ^= 0xFF
    s3.put_bytes(f"s3://{bucket}/{key}", bytes(data))
    return key


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A checkpoint whose file fails its sha256 is skipped with a warning; restart uses the next older one."""
    steps = 12
    bucket = s3.create_bucket()
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    out = f"s3://{bucket}/damaged"
    cfg = write_config(tmp_path / "damaged.json", {
        "jobName": "damaged",
        "model": {"uri": str(tiny_llama)},
        "dataset": {"uri": str(data), "format": "chat"},
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
        "hyperparameters": {"maxSteps": steps, "learningRate": 0.01, "batchSize": 4, "maxSeqLength": 64, "packing": False},
        "checkpoint": {"everySteps": 4, "keep": 2},
        "output": {"uri": out},
    })
    env = trainer_env({**s3.env(), "FINETUNE_WORK_DIR": str(tmp_path / "work")})

    # 1. an uninterrupted run leaves complete checkpoints at steps 4 and 8 (keep: 2)
    first = run_trainer(["train", "--config", str(cfg)], env)
    assert first.returncode == 0, first.stderr[-4000:]
    reference = json.loads(s3.get_bytes(f"{out}/manifest.json"))
    complete = sorted(int(m.group(1)) for k in s3.list_keys(f"{out}/checkpoints/") if (m := re.search(r"step-(\d+)/manifest.json$", k)))
    assert complete == [4, 8]

    # 2. damage the newest: the restart warns, resumes from step 4 and finishes
    damaged = _corrupt_one_file(s3, bucket, "damaged/checkpoints/step-8/")
    second = run_trainer(["train", "--config", str(cfg)], env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert damaged.startswith("damaged/")
    assert f"warning: checkpoint step 8 is damaged ({damaged.removeprefix('damaged/')} does not match its manifest" in second.stderr, second.stderr[-4000:]
    assert "resumed from checkpoint step 4 " in second.stderr
    assert "starting at step 4," in second.stderr
    assert summary_of(second)["steps"] == steps
    history = [json.loads(line) for line in s3.get_bytes(f"{out}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in history if "final" not in r] == list(range(1, steps + 1))
    resumed = json.loads(s3.get_bytes(f"{out}/manifest.json"))
    for a, b in zip(resumed["outputCheck"]["logits"], reference["outputCheck"]["logits"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)  # resuming from step 4 redoes steps 5-12 exactly

    # 3. every checkpoint damaged: a clear failure naming each, never a silent start from scratch
    for step in (4, 8):
        _corrupt_one_file(s3, bucket, f"damaged/checkpoints/step-{step}/")
    third = run_trainer(["train", "--config", str(cfg)], env)
    assert third.returncode == contract.EXIT_TRAINING_ERROR
    message = summary_of(third)["message"]
    assert "no checkpoint matches its manifest" in message and "step 8:" in message and "step 4:" in message
    assert "starting at step" not in third.stderr

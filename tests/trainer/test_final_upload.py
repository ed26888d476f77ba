"""The final upload: a stale manifest is deleted before any new file, and storage failures are retried.

The S3 outage is real network failure, not a mock: the trainer talks to the moto server through
a TCP proxy that, once the first adapter file is being uploaded, drops every connection until
the test ends the outage. The test ends it when the trainer reports its first failed attempt,
and checks at that moment that no manifest is in the bucket (the stale one is already gone).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
from typing import Any

import pytest
from finetune_trainer import contract
from finetune_trainer.storage import sha256_file

from tests.support.proxy import TriggerProxy
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

STALE_MANIFEST = {"apiVersion": "finetune.dev/manifest-v1", "jobName": "earlier", "files": [{"path": "adapter/adapter_model.safetensors", "sha256": "0" * 64, "size": 1}]}


class OutageProxy(TriggerProxy):
    """127.0.0.1:port -> the S3 server. After a request containing `trigger` arrives, every
    connection (open or new) is dropped until `end_outage()`."""

    def __init__(self, upstream: tuple[str, int], trigger: bytes) -> None:
        self.outage = False
        self.started = threading.Event()
        self.dropped = 0
        super().__init__(upstream, trigger)

    def end_outage(self) -> None:
        with self._lock:
            self.outage = False

    def admit(self) -> bool:
        if self.outage:
            self.dropped += 1
        return not self.outage

    def on_trigger(self) -> bool:
        if self.started.is_set():
            return False
        with self._lock:
            self.outage = True
            self.dropped += 1
        self.started.set()
        self.drop_all()
        return True


def _config(tmp_path: pathlib.Path, tiny_llama: pathlib.Path, output: dict[str, Any]) -> pathlib.Path:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(24))
    return write_config(tmp_path / "cfg.json", {
        "jobName": "upload",
        "model": {"uri": str(tiny_llama)},
        "dataset": {"uri": str(data), "format": "chat", "validationSplit": 0.0},
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 2, "learningRate": 0.01, "batchSize": 4, "maxSeqLength": 48},
        "checkpoint": {"everySteps": 1000},
        "output": output,
    })


def test_transient_s3_outage_during_the_final_upload_is_retried(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    bucket = s3.create_bucket()
    out = f"s3://{bucket}/runs/upload"
    s3.put_bytes(f"{out}/manifest.json", json.dumps(STALE_MANIFEST).encode())  # an earlier run's
    host, port = s3.endpoint.removeprefix("http://").split(":")
    proxy = OutageProxy((host, int(port)), trigger=f"PUT /{bucket}/runs/upload/adapter/".encode())
    cfg = _config(tmp_path, tiny_llama, {"uri": out, "endpoint": proxy.endpoint})
    proc = subprocess.Popen([sys.executable, "-m", "finetune_trainer", "train", "--config", str(cfg)],
                            env=trainer_env({**s3.env(), **work_env}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(CACHE_ROOT))
    stdout_box: list[str] = []
    reader = threading.Thread(target=lambda: stdout_box.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    stderr: list[str] = []
    keys_at_first_failure: list[str] | None = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            if keys_at_first_failure is None and "attempt 1 of 4 failed" in line:
                keys_at_first_failure = s3.list_keys(f"{out}/")  # straight to the server, not through the proxy
                proxy.end_outage()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()
    reader.join(timeout=10)
    err = "".join(stderr)
    assert proc.returncode == 0, err[-5000:]
    assert proxy.started.is_set() and proxy.dropped >= 2, proxy.dropped

    # while new files were going up, no manifest was in the bucket: the stale one was deleted first
    assert keys_at_first_failure is not None, err[-5000:]
    assert f"runs/upload/{contract.MANIFEST_NAME}" not in keys_at_first_failure, keys_at_first_failure
    # record then act: announced before it was deleted
    deleting = err.index(f"deleting {out}/manifest.json from an earlier run before uploading new files")
    assert deleting < err.index("final upload to")
    failure = next(line for line in stderr if "attempt 1 of 4 failed" in line)
    assert failure.startswith(f"final upload to {out}: attempt 1 of 4 failed: cannot write s3://{bucket}/runs/upload/") and "retrying in 2s" in failure
    assert "attempt 2 of 4 failed" not in err
    assert s3.secret_key not in err + stdout_box[0] and s3.access_key not in err + stdout_box[0]

    # the new manifest describes exactly the new files
    summary = json.loads(stdout_box[0][stdout_box[0].rfind("\n{") + 1 :])
    assert summary["status"] == "Succeeded" and summary["manifestUri"] == f"{out}/manifest.json"
    s3.download_prefix(f"{out}/", tmp_path / "dl")
    manifest = json.loads((tmp_path / "dl" / contract.MANIFEST_NAME).read_text())
    assert manifest["jobName"] == "upload"
    for f in manifest["files"]:
        p = tmp_path / "dl" / f["path"]
        assert p.stat().st_size == f["size"] and sha256_file(p) == f["sha256"], f["path"]


def test_final_upload_that_keeps_failing_gives_up_without_leaving_the_stale_manifest(tiny_llama: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / contract.MANIFEST_NAME).write_text(json.dumps(STALE_MANIFEST))
    (out / "adapter").write_text("a file where the adapter directory must go")  # every attempt fails
    cfg = _config(tmp_path, tiny_llama, {"uri": str(out)})
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env(work_env))
    assert proc.returncode == contract.EXIT_TRAINING_ERROR, proc.stderr[-4000:]
    message = summary_of(proc)["message"]
    assert message.startswith(f"final upload to {out} failed 4 times, giving up; last error: ")
    for attempt in (1, 2, 3):
        assert f"attempt {attempt} of 4 failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / contract.MANIFEST_NAME).exists()  # never left describing files it did not list

"""A seq2seq LoRA job (tiny T5, built from a config) under a 2-process torchrun, killed and restarted.

The trainer reaches the moto S3 server through a TCP proxy that holds (never forwards) the first
upload of the step-12 checkpoint's manifest. When that upload arrives, the step-8 checkpoint is
complete and the step-12 one is torn (files, no manifest); the test then SIGKILLs every process
of the job (the launcher and both ranks, as when a pod is killed), so the kill lands at a known
point and no timing decides the outcome. The same config started again, in a fresh work
directory (a new pod), resumes from step 8 and finishes: every step trained exactly once, the
loss history from before the kill carried over unchanged and continued after it.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from finetune_trainer import contract

from tests.support.caches import CACHE_ROOT
from tests.support.proxy import TriggerProxy
from tests.support.s3 import S3Server

from .helpers import REPO, run_trainer, summary_of, trainer_env, write_config, write_jsonl
from .tiny_models import build_tiny_t5

pytestmark = pytest.mark.slow

STEPS = 20
EVERY = 4
RESUME_FROM = 8  # the newest complete checkpoint when the kill lands (step 12's manifest is held)
TORCHRUN = ["--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def tiny_t5() -> pathlib.Path:
    return build_tiny_t5(CACHE_ROOT / "models" / "tiny-t5-d32-l2")


class HoldingProxy(TriggerProxy):
    """127.0.0.1:port -> the S3 server, byte for byte, except the first request containing
    `trigger`: nothing of it is forwarded, its connection is held open until `close()` and then
    dropped. `held` is set when that request arrives."""

    def __init__(self, upstream: tuple[str, int], trigger: bytes) -> None:
        self.held = threading.Event()
        self._closing = threading.Event()
        super().__init__(upstream, trigger)

    def close(self) -> None:
        self._closing.set()
        super().close()

    def on_trigger(self) -> bool:
        with self._lock:
            hold = not self.held.is_set()
            self.held.set()
        if hold:
            self._closing.wait()
        return hold


def _kill_job(launcher: subprocess.Popen[bytes]) -> list[list[str]]:
    """SIGKILL the launcher and every process under it; once all are gone, the command lines of
    those under it. (torchrun starts each worker in a session of its own: the launcher's process
    group alone would miss them.)"""
    root = psutil.Process(launcher.pid)
    procs = [root, *root.children(recursive=True)]
    cmdlines = [p.cmdline() for p in procs[1:]]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    launcher.wait(timeout=60)

    def dead(p: psutil.Process) -> bool:
        try:
            return bool(p.status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 60
    while not all(dead(p) for p in procs[1:]):
        assert time.monotonic() < deadline, [p.pid for p in procs[1:] if not dead(p)]
        time.sleep(0.05)
    return cmdlines


def _complete_steps(s3: S3Server, out: str) -> list[int]:
    keys = s3.list_keys(f"{out}/checkpoints/")
    return sorted(
        int(m.group(1))
        for k in keys
        if (m := re.search(r"checkpoints/step-(\d+)/manifest\.json$", k))
    )


def test_two_process_seq2seq_lora_resumes_after_sigkill(
    s3: S3Server, tiny_t5: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    bucket = s3.create_bucket()
    rows = [
        json.loads(line)
        for line in (REPO / "examples" / "data" / "rewrite.jsonl").read_text().splitlines()
        if line.strip()
    ][:48]
    data = write_jsonl(tmp_path / "rewrite.jsonl", rows)
    out = f"s3://{bucket}/t5"
    host, port = s3.endpoint.removeprefix("http://").split(":")
    proxy = HoldingProxy(
        (host, int(port)),
        trigger=f"PUT /{bucket}/t5/checkpoints/step-{RESUME_FROM + EVERY}/manifest.json ".encode(),
    )
    cfg = write_config(
        tmp_path / "t5-resume.json",
        {
            "jobName": "t5-resume",
            "model": {"uri": str(tiny_t5)},
            "dataset": {"uri": str(data), "format": "seq2seq", "validationSplit": 0.1},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "hyperparameters": {
                "maxSteps": STEPS,
                "learningRate": 0.01,
                "batchSize": 4,
                "maxSeqLength": 32,
                "warmupRatio": 0.0,
            },
            "checkpoint": {"everySteps": EVERY, "keep": 2},
            "output": {"uri": out, "endpoint": proxy.endpoint},
        },
    )

    # each attempt a fresh pod: nothing local survives the kill
    def env(attempt: int) -> dict[str, str]:
        return trainer_env(
            {
                **s3.env(),
                "FINETUNE_WORK_DIR": str(tmp_path / f"work-{attempt}"),
                "FINETUNE_TERMINATION_MESSAGE_PATH": str(tmp_path / f"termination-{attempt}"),
            },
            threads=1,
        )

    try:
        # 1. first attempt: once the step-12 manifest upload is held, SIGKILL every process of the job
        log = tmp_path / "attempt-0.log"
        with log.open("w") as err:
            first = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    *TORCHRUN,
                    "-m",
                    "finetune_trainer",
                    "train",
                    "--config",
                    str(cfg),
                ],
                env=env(0),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=str(CACHE_ROOT),
            )
        workers: list[list[str]] = []
        try:
            deadline = time.monotonic() + 300
            while not proxy.held.wait(0.1):
                assert first.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
            # the moment of the kill: step 8 complete, step 12 torn, the job unfinished
            assert _complete_steps(s3, out) == [EVERY, RESUME_FROM]
            torn = s3.list_keys(f"{out}/checkpoints/step-{RESUME_FROM + EVERY}/")
            assert f"t5/checkpoints/step-{RESUME_FROM + EVERY}/{contract.MANIFEST_NAME}" not in torn
            assert f"t5/checkpoints/step-{RESUME_FROM + EVERY}/trainer_state.json" in torn, torn
            workers = _kill_job(first)
        finally:
            if first.poll() is None:
                _kill_job(first)
        text = log.read_text()
        assert first.returncode == -signal.SIGKILL, text[-4000:]
        assert len(workers) == 2 and all("finetune_trainer" in w for w in workers), workers
        assert (
            f"checkpoint step {RESUME_FROM} saved to " in text
            and f"checkpoint step {RESUME_FROM + EVERY} saved" not in text
        )
        assert f"t5/{contract.MANIFEST_NAME}" not in s3.list_keys(out)
        before = json.loads(
            s3.get_bytes(f"{out}/checkpoints/step-{RESUME_FROM}/trainer_state.json")
        )
        assert before["step"] == RESUME_FROM and [r["step"] for r in before["history"]] == list(
            range(1, RESUME_FROM + 1)
        )

        # 2. second attempt, same config: skips the torn step 12, resumes from step 8 and finishes
        second = run_trainer(["train", "--config", str(cfg)], env(1), torchrun=TORCHRUN)
    finally:
        proxy.close()
    assert second.returncode == 0, second.stderr[-5000:]
    assert f"resumed from checkpoint step {RESUME_FROM} " in second.stderr, second.stderr[-4000:]
    assert (
        f"on 2 process(es), {STEPS} steps" in second.stderr
        and f"starting at step {RESUME_FROM}," in second.stderr
    )
    summary = summary_of(second)
    assert summary["status"] == "Succeeded" and summary["steps"] == STEPS
    # keep: 2; the torn step 12 was written again whole
    assert _complete_steps(s3, out) == [STEPS - 2 * EVERY, STEPS - EVERY]

    # 3. the history: carried over unchanged up to the checkpoint, then continued once per step
    history = [
        json.loads(line)
        for line in s3.get_bytes(f"{out}/{contract.METRICS_HISTORY_NAME}").decode().splitlines()
        if line.strip()
    ]
    steps = [r["step"] for r in history if "final" not in r]
    assert steps == list(range(1, STEPS + 1))  # nothing repeated, nothing lost
    assert history[:RESUME_FROM] == before["history"]
    manifest = json.loads(s3.get_bytes(f"{out}/{contract.MANIFEST_NAME}"))
    assert manifest["worldSize"] == 2 and manifest["metrics"]["steps"] == STEPS
    first_loss = history[0]["loss"]
    assert history[-1].get("final") and history[-1]["evalLoss"] == pytest.approx(
        summary["evalLoss"]
    )
    assert summary["evalLoss"] < first_loss, (summary["evalLoss"], first_loss)
    after = [r["loss"] for r in history[RESUME_FROM:] if "final" not in r]
    assert sum(after[-4:]) / 4 < first_loss, after  # training went on learning after the resume

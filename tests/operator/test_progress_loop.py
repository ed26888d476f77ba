"""`progress_loop` (handlers.py) against the trainer's real metrics server: rank 0's /progress is
read, queued and folded into one status patch with percent, loss, ETA and the trainer's own
phase names (finetune_trainer.train sets Initializing, Running, Uploading, Succeeded).

The trainer server listens on port 9400 (contract.METRICS_PORT, the port the operator asks) of
a random 127.x.y.z address, which stands for the pod IP: nothing of the operator is patched.
"""

from __future__ import annotations

import asyncio
import pathlib
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from finetune_operator import constants as c
from finetune_operator.handlers import progress_loop
from finetune_operator.reconcile import Indexes
from finetune_trainer import train as trainer_train
from finetune_trainer.metrics import Progress as TrainerProgress
from finetune_trainer.metrics import TrainerMetrics

from tests.operator.helpers import RUNTIMES, VALIDATED, job, pod
from tests.operator.test_reconcile import KEY, RecordingKube, reconciler, record, until

ct = c.contract


def trainer_phases() -> set[str]:
    """The phase names finetune_trainer.train really puts into its progress document."""
    source = pathlib.Path(trainer_train.__file__).read_text()
    return set(re.findall(r'phase\s*=\s*"(\w+)"', source))


@pytest.fixture
def rank0() -> Iterator[tuple[str, TrainerMetrics]]:
    """(pod IP, the trainer's metrics) served on <pod IP>:METRICS_PORT with /progress."""
    for _ in range(20):
        ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        metrics = TrainerMetrics("job", "ns", 0)
        if metrics.serve(ct.METRICS_PORT, with_progress=True, host=ip) == ct.METRICS_PORT:
            break
    else:
        pytest.fail(f"no loopback address with port {ct.METRICS_PORT} free")
    try:
        yield ip, metrics
    finally:
        metrics.close()


def test_the_trainer_uses_the_phase_names_this_test_drives() -> None:
    assert {"Initializing", "Running", "Uploading", "Succeeded"} == trainer_phases()


def test_progress_loop_folds_the_live_trainer_progress_into_the_status(rank0: tuple[str, TrainerMetrics]) -> None:
    ip, metrics = rank0
    assert "Running" in trainer_phases()
    # what train.py's loop publishes at step 40 of 160 (1.3 s per step)
    metrics.update(TrainerProgress(phase="Running", step=40, total_steps=160, epoch=0.25, percent=25.0, loss=0.71234,
                                   tokens_per_second=2750.54, eta_seconds=round(1.3 * 120, 1), trained_tokens=81920))

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        kube = RecordingKube()
        running = {"phase": "Running", "conditions": [VALIDATED], "startTime": "2026-01-01T12:00:00Z"}
        jobs: dict[Any, Any] = {KEY: [record(running)]}
        pods: dict[Any, Any] = {KEY: [pod("job-0", index=0, pod_ip=ip), pod("job-1", index=1, pod_ip="127.0.0.1")]}
        r = reconciler(kube, jobs, pods)
        r.indexes = Indexes(jobs=jobs, runtimes=RUNTIMES, children={KEY: [job()]}, pods=pods)
        first = await r.reconcile(KEY)
        assert first is not None and first.status.phase == "Running" and first.status.progress is None
        jobs[KEY] = [record(first.status.to_wire())]
        kube.patches.clear()
        tasks = [*r.start(), asyncio.create_task(progress_loop(r, seconds=0.05))]
        try:
            await until(lambda: any("progress" in p for p in kube.patches), tries=500)
            running_patches = list(kube.patches)
            metrics.update(TrainerProgress(phase="Uploading", step=160, total_steps=160, epoch=1.0, percent=100.0, loss=0.5,
                                           tokens_per_second=2700.0, eta_seconds=0.0, trained_tokens=327680))
            await until(lambda: any(p.get("phase") == "Uploading" for p in kube.patches), tries=500)
            return running_patches, list(kube.patches)
        finally:
            for t in tasks:
                t.cancel()

    running_patches, later = asyncio.run(go())
    patch = next(p for p in running_patches if "progress" in p)
    assert patch["phase"] == "Running"
    progress = patch["progress"]
    assert progress["stage"] == "Running"
    assert (progress["step"], progress["totalSteps"], progress["percent"]) == (40, 160, 25.0)
    assert progress["loss"] == 0.7123
    assert (progress["etaSeconds"], progress["eta"]) == (156, "2m36s")
    assert progress["tokensPerSecond"] == 2750.5 and progress["trainedTokens"] == 81920
    assert patch["trainedTokens"] == 81920
    uploading = next(p for p in later if p.get("phase") == "Uploading")
    assert uploading["progress"]["stage"] == "Uploading" and uploading["progress"]["percent"] == 100.0
    assert uploading["progress"]["etaSeconds"] == 0 and uploading["progress"]["eta"] == "0s"
    assert uploading["message"] == "uploading the adapter"

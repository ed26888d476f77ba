"""Metrics over HTTP and through a real Prometheus; /progress for the operator; SIGTERM.

One long-running training run is scraped directly and by Debian's Prometheus, then stopped
with SIGTERM through torchrun: it must write a checkpoint and exit with contract.EXIT_PREEMPTED.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import requests
import torch
from finetune_trainer import contract
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port
from tests.support.prometheus import Prometheus

from .helpers import CACHE_ROOT, chat_rows, trainer_env, write_config, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

EXPECTED = {
    "finetune_trainer_step", "finetune_trainer_total_steps", "finetune_trainer_epoch", "finetune_trainer_loss",
    "finetune_trainer_learning_rate", "finetune_trainer_tokens_per_second", "finetune_trainer_progress_ratio",
    "finetune_trainer_eta_seconds", "finetune_trainer_trained_tokens",
}


def _wait_progress(url: str, proc: subprocess.Popen[str], min_step: int, timeout: float = 180) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "trainer exited early"
        try:
            doc = requests.get(url, timeout=2).json()
            if doc["step"] >= min_step:
                return dict(doc)
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def test_metrics_progress_prometheus_and_sigterm(prometheus_binary: str, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(64))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.json", {
        "jobName": "metrics-job", "namespace": "team-m",
        "model": {"uri": str(tiny_llama)},
        "dataset": {"uri": str(data), "format": "chat", "validationSplit": 0.1},
        "hyperparameters": {"maxSteps": 5000, "batchSize": 2, "maxSeqLength": 32, "evalEverySteps": 3},
        "checkpoint": {"everySteps": 100000},
        "output": {"uri": str(out)},
    })
    port = free_port()
    term = tmp_path / "termination-log"
    env = trainer_env({"FINETUNE_METRICS_PORT": str(port), "FINETUNE_WORK_DIR": str(tmp_path / "work"),
                       "FINETUNE_TERMINATION_MESSAGE_PATH": str(term)})
    # launched as in the image: torchrun (via finetune_trainer.launch), which forwards SIGTERM
    launcher = [sys.executable, "-m", "finetune_trainer.launch", "--standalone", "--nproc-per-node", "1", "-m", "finetune_trainer"]
    proc = subprocess.Popen([*launcher, "train", "--config", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(CACHE_ROOT))
    try:
        base = f"http://127.0.0.1:{port}"
        progress = _wait_progress(base + contract.HTTP_PROGRESS_PATH, proc, min_step=4)
        assert progress["phase"] == "Running" and progress["totalSteps"] == 5000
        assert 0 < progress["percent"] < 100 and progress["loss"] > 0 and progress["etaSeconds"] > 0
        assert progress["evalLoss"] is not None  # evaluated at step 3

        text = requests.get(base + contract.HTTP_METRICS_PATH, timeout=5).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert set(families) | {"finetune_trainer_eval_loss"} >= EXPECTED
        step = families["finetune_trainer_step"].samples[0]
        assert step.labels == {"job": "metrics-job", "namespace": "team-m", "node_rank": "0"}
        assert step.value >= 4
        assert families["finetune_trainer_tokens_per_second"].samples[0].value > 0
        assert not any(name.startswith("finetune_trainer_gpu_") for name in families)  # no GPU: absent, not zero
        assert requests.get(base + contract.HTTP_HEALTH_PATH, timeout=5).status_code == 200

        with Prometheus(prometheus_binary, tmp_path / "prom", targets=[f"127.0.0.1:{port}"], interval=0.5) as prom:
            series = prom.wait_for('finetune_trainer_step{job="metrics-job",namespace="team-m"} > 0', timeout=60)
            assert series[0]["metric"]["node_rank"] == "0"
            loss = prom.wait_for("finetune_trainer_loss")
            assert float(loss[0]["value"][1]) > 0
            rate = prom.wait_for("rate(finetune_trainer_trained_tokens_total[5s]) > 0", timeout=30)
            assert float(rate[0]["value"][1]) > 0
            assert prom.query("finetune_trainer_gpu_utilization_ratio") == []

        step_before = requests.get(base + contract.HTTP_PROGRESS_PATH, timeout=5).json()["step"]
        proc.send_signal(signal.SIGTERM)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == contract.EXIT_PREEMPTED, stderr[-3000:]
    summary = json.loads(term.read_text())
    assert summary["status"] == "Preempted" and summary["exitCode"] == contract.EXIT_PREEMPTED
    checkpoints = [p for p in (out / "checkpoints").iterdir() if (p / "manifest.json").is_file()]
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert stopped_at >= step_before
    assert "SIGTERM: writing a checkpoint" in stderr
    assert not (out / "manifest.json").exists()  # a preempted run publishes no final output


def test_classification_scores_are_exported_as_gauges_and_in_progress() -> None:
    from finetune_trainer.metrics import Progress, TrainerMetrics
    from finetune_trainer.train import classification_scores
    from prometheus_client import generate_latest

    # 3 classes; rows = true class, columns = predicted: accuracy 5/8; per class
    # F1 = 2 tp / (support + predicted) = 4/5, 2/5, 4/6
    confusion = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    accuracy, f1 = classification_scores(confusion)
    assert accuracy == pytest.approx(5 / 8)
    assert f1 == pytest.approx((2 * 2 / (2 + 3) + 2 * 1 / (3 + 2) + 2 * 2 / (3 + 3)) / 3)
    assert classification_scores(torch.tensor([[3.0, 1.0], [0.0, 4.0]]))[1] is None  # binary: accuracy only

    m = TrainerMetrics("job", "ns", 0)
    m.update(Progress(phase="Running", eval_loss=0.5, eval_accuracy=accuracy, eval_f1=f1))
    text = generate_latest(m.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["finetune_trainer_eval_accuracy"].samples[0].value == pytest.approx(0.625)
    assert families["finetune_trainer_eval_f1"].samples[0].value == pytest.approx(f1)
    doc = json.loads(m.progress_json())
    assert doc["evalAccuracy"] == pytest.approx(0.625) and doc["evalF1"] == pytest.approx(f1)

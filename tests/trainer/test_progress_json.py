"""/progress stays valid JSON when the loss diverges: NaN and infinities are served as null."""

from __future__ import annotations

import json
import math

import requests
from finetune_trainer import contract
from finetune_trainer.metrics import Progress, TrainerMetrics

from tests.support.ports import free_port


def test_progress_serves_non_finite_floats_as_null() -> None:
    metrics = TrainerMetrics("job", "ns", 0)
    port = metrics.serve(free_port(), with_progress=True, host="127.0.0.1")
    assert port is not None
    try:
        p = Progress(phase="Training", step=7, total_steps=10, epoch=0.7, percent=70.0, loss=math.nan, eval_loss=math.inf, learning_rate=-math.inf, tokens_per_second=12.5)
        metrics.update(p)
        resp = requests.get(f"http://127.0.0.1:{port}{contract.HTTP_PROGRESS_PATH}", timeout=5)
        assert resp.status_code == 200
        # strict parsing: Python's json accepts NaN by default, other clients (Go, JSON.parse) do not
        doc = json.loads(resp.text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        assert doc["loss"] is None and doc["evalLoss"] is None and doc["learningRate"] is None
        assert doc["step"] == 7 and doc["tokensPerSecond"] == 12.5 and doc["phase"] == "Training"
        assert "NaN" not in resp.text and "Infinity" not in resp.text
    finally:
        metrics.close()

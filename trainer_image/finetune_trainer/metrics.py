"""Prometheus metrics (`finetune_trainer_*`) and the JSON progress the operator reads.

Local rank 0 of every node serves `/metrics` (and `/healthz`); rank 0 of the job also serves
`/progress`. GPU gauges come from NVML at scrape time; without a GPU the collector is a null
object and the gauges are absent (not zero). Labels: job, namespace, node_rank (+ gpu).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import contract

PREFIX = "finetune_trainer_"
LABELS = ("job", "namespace", "node_rank")


@dataclasses.dataclass
class Progress:
    """The progress document at /progress (camelCase, as in FineTuneJob.status.progress)."""

    phase: str = "Initializing"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    percent: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None  # classification only
    eval_f1: float | None = None  # classification with more than two labels (macro-F1)
    eval_exact_match: float | None = None  # seq2seq: greedy outputs equal to their targets
    eval_rouge_l: float | None = None  # seq2seq: mean ROUGE-L F-measure of greedy outputs
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    trained_tokens: int = 0
    world_size: int = 1
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            parts = f.name.split("_")
            key = parts[0] + "".join(p.title() for p in parts[1:])
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                value = None  # NaN/inf (a diverged loss) have no JSON form: null, as "not known"
            out[key] = value
        return out


class NoGpu(Collector):
    """No NVML (CPU node, or the library is missing): exposes nothing."""

    def collect(self) -> Iterator[Metric]:
        return iter(())


class NvmlGpus(Collector):
    """Per-GPU utilization, memory, power and temperature read from NVML on every scrape."""

    def __init__(self, labels: dict[str, str]) -> None:
        import pynvml

        self.nvml = pynvml
        self.labels = labels
        self.count = pynvml.nvmlDeviceGetCount()

    def collect(self) -> Iterator[Metric]:
        nv = self.nvml
        names = [*LABELS, "gpu"]
        util = GaugeMetricFamily(PREFIX + "gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=names)
        used = GaugeMetricFamily(PREFIX + "gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=names)
        total = GaugeMetricFamily(PREFIX + "gpu_memory_total_bytes", "GPU memory size (NVML)", labels=names)
        power = GaugeMetricFamily(PREFIX + "gpu_power_watts", "GPU power draw (NVML)", labels=names)
        temp = GaugeMetricFamily(PREFIX + "gpu_temperature_celsius", "GPU temperature (NVML)", labels=names)
        for i in range(self.count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                values = [*(self.labels[k] for k in LABELS), str(i)]
                util.add_metric(values, nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                used.add_metric(values, float(mem.used))
                total.add_metric(values, float(mem.total))
                power.add_metric(values, nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
                temp.add_metric(values, float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
            except nv.NVMLError:
                continue
        yield from (util, used, total, power, temp)


def gpu_collector(labels: dict[str, str]) -> Collector:
    """NVML when a GPU is there, else the null collector."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return NoGpu()
        return NvmlGpus(labels)
    except Exception:  # pynvml.NVMLError_LibraryNotFound without a driver, ImportError
        return NoGpu()


class TrainerMetrics:
    """Training gauges in a private registry, updated by the loop, served over HTTP."""

    def __init__(self, job: str, namespace: str, node_rank: int) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"job": job, "namespace": namespace, "node_rank": str(node_rank)}
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, LABELS, registry=r)

        self.step = gauge("step", "Optimizer steps done")
        self.total_steps = gauge("total_steps", "Optimizer steps planned")
        self.epoch = gauge("epoch", "Epochs done (fractional)")
        self.loss = gauge("loss", "Training loss of the last step")
        self.eval_loss = gauge("eval_loss", "Loss on the validation split (absent until the first evaluation)")
        self.eval_accuracy = gauge("eval_accuracy", "Accuracy on the validation split (classification; absent until the first evaluation)")
        self.eval_f1 = gauge("eval_f1", "Macro-F1 on the validation split (classification with more than two labels)")
        self.eval_exact_match = gauge("eval_exact_match", "Fraction of greedy outputs equal to their targets on a validation sample (seq2seq)")
        self.eval_rouge_l = gauge("eval_rouge_l", "Mean ROUGE-L F-measure of greedy outputs on a validation sample (seq2seq)")
        self.learning_rate = gauge("learning_rate", "Learning rate of the last step")
        self.tokens_per_second = gauge("tokens_per_second", "Trained tokens per second, all ranks together")
        self.progress = gauge("progress_ratio", "Fraction of planned steps done (0-1)")
        self.eta = gauge("eta_seconds", "Estimated seconds until training finishes")
        self.tokens = Counter(PREFIX + "trained_tokens", "Tokens trained on, all ranks together", LABELS, registry=r)
        self.progress_doc = Progress()
        self._lock = threading.Lock()
        self.registry.register(gpu_collector(self.labels))
        self._server: ThreadingHTTPServer | None = None

    def update(self, p: Progress, new_tokens: int = 0) -> None:
        lab = self.labels
        self.step.labels(**lab).set(p.step)
        self.total_steps.labels(**lab).set(p.total_steps)
        self.epoch.labels(**lab).set(p.epoch)
        self.progress.labels(**lab).set(p.percent / 100.0)
        if p.loss is not None:
            self.loss.labels(**lab).set(p.loss)
        if p.eval_loss is not None:
            self.eval_loss.labels(**lab).set(p.eval_loss)
        if p.eval_accuracy is not None:
            self.eval_accuracy.labels(**lab).set(p.eval_accuracy)
        if p.eval_f1 is not None:
            self.eval_f1.labels(**lab).set(p.eval_f1)
        if p.eval_exact_match is not None:
            self.eval_exact_match.labels(**lab).set(p.eval_exact_match)
        if p.eval_rouge_l is not None:
            self.eval_rouge_l.labels(**lab).set(p.eval_rouge_l)
        if p.learning_rate is not None:
            self.learning_rate.labels(**lab).set(p.learning_rate)
        if p.tokens_per_second is not None:
            self.tokens_per_second.labels(**lab).set(p.tokens_per_second)
        if p.eta_seconds is not None:
            self.eta.labels(**lab).set(p.eta_seconds)
        if new_tokens:
            self.tokens.labels(**lab).inc(new_tokens)
        with self._lock:
            self.progress_doc = dataclasses.replace(p)

    def progress_json(self) -> bytes:
        with self._lock:
            return json.dumps(self.progress_doc.to_json(), allow_nan=False).encode()

    def serve(self, port: int, *, with_progress: bool, host: str = "0.0.0.0") -> int | None:
        """Start the HTTP server in a thread; returns the bound port (None if it could not bind)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == contract.HTTP_METRICS_PATH:
                    self._send(200, generate_latest(metrics.registry), "text/plain; version=0.0.4; charset=utf-8")
                elif path == contract.HTTP_PROGRESS_PATH and with_progress:
                    self._send(200, metrics.progress_json(), "application/json")
                elif path == contract.HTTP_HEALTH_PATH:
                    self._send(200, b"ok\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            print(f"metrics: cannot listen on port {port} ({err.strerror}); continuing without /metrics", file=sys.stderr)
            return None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class NullMetrics:
    """Same methods as TrainerMetrics, doing nothing (ranks that do not serve metrics)."""

    def update(self, p: Progress, new_tokens: int = 0) -> None:
        return None

    def serve(self, port: int, *, with_progress: bool, host: str = "0.0.0.0") -> int | None:
        return None

    def close(self) -> None:
        return None

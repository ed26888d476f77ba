"""GPU gauges (finetune_trainer.metrics.NvmlGpus) read through pynvml's documented API.

Without a GPU, `FakeNvml` stands in for the `pynvml` module: the same functions, structs, units
and error class as NVIDIA's NVML bindings document them (utilization in percent, memory in
bytes, power in milliwatts, temperature in degrees Celsius). The gauges must come out as ratios
(0-1), bytes, watts and Celsius with the job's labels plus `gpu`. On a machine with a GPU the
last test reads the real NVML through the same code.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
from finetune_trainer import metrics as trainer_metrics
from prometheus_client import generate_latest

from tests.support import metrics as prom

GPU_GAUGES = {
    "finetune_trainer_gpu_utilization_ratio",
    "finetune_trainer_gpu_memory_used_bytes",
    "finetune_trainer_gpu_memory_total_bytes",
    "finetune_trainer_gpu_power_watts",
    "finetune_trainer_gpu_temperature_celsius",
}
LABELS = {"job": "llama", "namespace": "team-a", "node_rank": "1"}


@dataclasses.dataclass
class Utilization:  # nvmlUtilization_t
    gpu: int  # percent of the sample period a kernel ran
    memory: int  # percent of the period device memory was read or written


@dataclasses.dataclass
class Memory:  # nvmlMemory_t, bytes
    total: int
    free: int
    used: int


@dataclasses.dataclass
class Device:
    utilization: int
    total: int
    used: int
    milliwatts: int
    celsius: int
    broken: bool = False


class FakeNvml(types.ModuleType):
    """pynvml's documented API over a list of devices; a `broken` device raises NVMLError on
    every query (a GPU that fell off the bus)."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[Device]) -> None:
        super().__init__("pynvml")
        self.devices = devices
        self.initialized = False

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlDeviceGetCount(self) -> int:
        assert self.initialized, "nvmlInit must come first"
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Device:
        if not 0 <= index < len(self.devices):
            raise self.NVMLError("NVML_ERROR_INVALID_ARGUMENT")
        return self.devices[index]

    def _ok(self, handle: Device) -> Device:
        if handle.broken:
            raise self.NVMLError("NVML_ERROR_GPU_IS_LOST")
        return handle

    def nvmlDeviceGetUtilizationRates(self, handle: Device) -> Utilization:
        return Utilization(gpu=self._ok(handle).utilization, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: Device) -> Memory:
        d = self._ok(handle)
        return Memory(total=d.total, free=d.total - d.used, used=d.used)

    def nvmlDeviceGetPowerUsage(self, handle: Device) -> int:
        return self._ok(handle).milliwatts

    def nvmlDeviceGetTemperature(self, handle: Device, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._ok(handle).celsius


GIB = 1024**3


def scrape(monkeypatch: pytest.MonkeyPatch, devices: list[Device]) -> str:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(devices))
    m = trainer_metrics.TrainerMetrics(LABELS["job"], LABELS["namespace"], int(LABELS["node_rank"]))
    return generate_latest(m.registry).decode()


def test_nvml_readings_become_ratios_bytes_watts_and_celsius(monkeypatch: pytest.MonkeyPatch) -> None:
    text = scrape(monkeypatch, [Device(37, 80 * GIB, 20 * GIB, 312_500, 61), Device(100, 80 * GIB, 79 * GIB, 700_000, 83)])
    kinds = prom.families(text)
    assert {name: kinds.get(name) for name in GPU_GAUGES} == dict.fromkeys(GPU_GAUGES, "gauge")
    gpu0, gpu1 = {**LABELS, "gpu": "0"}, {**LABELS, "gpu": "1"}
    assert prom.value(text, "finetune_trainer_gpu_utilization_ratio", gpu0) == pytest.approx(0.37)
    assert prom.value(text, "finetune_trainer_gpu_utilization_ratio", gpu1) == 1.0
    assert prom.value(text, "finetune_trainer_gpu_memory_used_bytes", gpu0) == 20 * GIB
    assert prom.value(text, "finetune_trainer_gpu_memory_total_bytes", gpu1) == 80 * GIB
    assert prom.value(text, "finetune_trainer_gpu_power_watts", gpu0) == 312.5
    assert prom.value(text, "finetune_trainer_gpu_temperature_celsius", gpu1) == 83.0
    # every GPU sample carries exactly the job's labels plus the GPU index, and ratios stay in 0-1
    gpu_samples = {k: v for k, v in prom.samples(text).items() if k[0] in GPU_GAUGES}
    assert len(gpu_samples) == 2 * len(GPU_GAUGES)
    assert {frozenset(dict(labels).keys()) for _, labels in gpu_samples} == {frozenset({*LABELS, "gpu"})}
    assert all(0.0 <= v <= 1.0 for (name, _), v in gpu_samples.items() if name.endswith("_ratio"))


def test_a_gpu_that_stops_answering_is_left_out_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    text = scrape(monkeypatch, [Device(50, 16 * GIB, 1 * GIB, 100_000, 40, broken=True), Device(25, 16 * GIB, 2 * GIB, 90_000, 45)])
    assert prom.value(text, "finetune_trainer_gpu_utilization_ratio", {**LABELS, "gpu": "0"}) is None
    assert prom.value(text, "finetune_trainer_gpu_utilization_ratio", {**LABELS, "gpu": "1"}) == 0.25


def test_no_gpu_means_no_gpu_series(monkeypatch: pytest.MonkeyPatch) -> None:
    text = scrape(monkeypatch, [])
    assert not [name for name in prom.families(text) if name.startswith("finetune_trainer_gpu_")]


def test_real_nvml_when_a_gpu_is_there() -> None:
    """The same collector on the real pynvml (runs where a GPU and its driver are present)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as err:  # no driver (NVMLError_LibraryNotFound) or no pynvml
        pytest.skip(f"no NVML here: {err!r}")
    if count == 0:
        pytest.skip("NVML reports no GPU")
    m = trainer_metrics.TrainerMetrics(LABELS["job"], LABELS["namespace"], int(LABELS["node_rank"]))
    text = generate_latest(m.registry).decode()
    values: dict[str, dict[str, float]] = {}
    for (name, labels), v in prom.samples(text).items():
        if name in GPU_GAUGES:
            values.setdefault(dict(labels)["gpu"], {})[name] = v
    assert sorted(values) == [str(i) for i in range(count)]
    for gpu, by_name in values.items():
        assert set(by_name) == GPU_GAUGES, gpu
        assert 0.0 <= by_name["finetune_trainer_gpu_utilization_ratio"] <= 1.0
        assert 0 < by_name["finetune_trainer_gpu_memory_used_bytes"] <= by_name["finetune_trainer_gpu_memory_total_bytes"]
        assert 0 < by_name["finetune_trainer_gpu_power_watts"] < 2000 and 0 < by_name["finetune_trainer_gpu_temperature_celsius"] < 120

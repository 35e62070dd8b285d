"""switchyard.common.gpu: NVML readings, and a worker without a GPU says so without failing."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pynvml  # type: ignore[import-untyped]
import pytest
from prometheus_client import REGISTRY

from switchyard.common import gpu, metrics


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def per_gpu_series() -> list[str]:
    return [s.name for m in REGISTRY.collect() if m.name.startswith("switchyard_gpu_") and m.name != "switchyard_gpu_present"
            for s in m.samples]


@pytest.fixture(autouse=True)
def clean_gauges() -> None:
    for g in (metrics.GPU_MEMORY_USED, metrics.GPU_MEMORY_TOTAL, metrics.GPU_TEMPERATURE, metrics.GPU_UTILIZATION):
        g.clear()
    metrics.GPU_PRESENT.set(-1)


def test_this_machine_without_a_gpu_reports_zero_and_no_per_gpu_series() -> None:
    # The build machines have no NVIDIA driver: NVML cannot load, which is not an error.
    readings = gpu.GpuReadings()
    assert readings.open() == 0
    readings.read()
    assert value("switchyard_gpu_present") == 0
    assert per_gpu_series() == []
    asyncio.run(gpu.keep_reading(gpu.GpuReadings(), every_s=0.01))  # returns at once, no exception


class FakeNvml:
    """A FAKE pynvml: two GPUs with fixed readings (the real module's error class and constants)."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.shut = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=(h + 1) * 1024**3, total=80 * 1024**3, free=0)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 40 + h

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=25 * (h + 1), memory=0)


def test_fake_nvml_fills_the_per_gpu_gauges() -> None:
    fake = FakeNvml()
    readings = gpu.GpuReadings(fake)
    assert readings.open() == 2
    readings.read()
    assert value("switchyard_gpu_present") == 1
    assert value("switchyard_gpu_memory_used_bytes", gpu="1") == 2 * 1024**3
    assert value("switchyard_gpu_memory_total_bytes", gpu="0") == 80 * 1024**3
    assert value("switchyard_gpu_temperature_celsius", gpu="1") == 41
    assert value("switchyard_gpu_utilization_ratio", gpu="0") == 0.25
    readings.close()
    assert fake.shut


def test_a_failing_reading_is_skipped_not_raised() -> None:
    fake = FakeNvml(count=1)

    def broken(h: int) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    fake.nvmlDeviceGetMemoryInfo = broken  # type: ignore[method-assign]
    readings = gpu.GpuReadings(fake)
    assert readings.open() == 1
    readings.read()
    assert value("switchyard_gpu_present") == 1
    assert per_gpu_series() == []


def test_driver_present_but_no_device() -> None:
    assert gpu.GpuReadings(FakeNvml(count=0)).open() == 0
    assert value("switchyard_gpu_present") == 0

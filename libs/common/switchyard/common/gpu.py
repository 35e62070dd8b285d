"""The workers' own GPU readings (NVML through ``nvidia-ml-py``), as docs/metrics.md declares them.

Without a driver or a device the worker exports ``switchyard_gpu_present 0`` and no per-GPU
series, logs it once, and carries on: a CPU-only worker is normal, not an error.
"""

from __future__ import annotations

import asyncio
import logging
from types import ModuleType
from typing import Any

import pynvml  # type: ignore[import-untyped]

from switchyard.common import metrics

log = logging.getLogger("switchyard.gpu")

# How often the readings are refreshed (Prometheus scrapes every 15 s; dcgm-exporter has the fine grain).
READ_EVERY_S = 5.0


class GpuReadings:
    """NVML readings into the ``switchyard_gpu_*`` gauges. ``nvml``: the pynvml module (tests pass a fake)."""

    def __init__(self, nvml: ModuleType | Any = pynvml) -> None:
        self.nvml = nvml
        self.count = 0
        self._failed_read = False

    def open(self) -> int:
        """Initialise NVML; the number of GPUs (0 without a driver or a device: no error)."""
        try:
            self.nvml.nvmlInit()
            self.count = int(self.nvml.nvmlDeviceGetCount())
        except (self.nvml.NVMLError, OSError) as e:
            self.count = 0
            log.info("no GPU readings: NVML unavailable", extra={"fields": {"reason": str(e)}})
        else:
            if self.count == 0:
                log.info("no GPU readings: NVML found no device")
        metrics.GPU_PRESENT.set(1 if self.count else 0)
        return self.count

    def read(self) -> None:
        """Refresh every GPU's gauges (a failed reading is logged once and skipped)."""
        nvml = self.nvml
        for i in range(self.count):
            gpu = str(i)
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            except nvml.NVMLError as e:
                if not self._failed_read:
                    log.warning("GPU reading failed", extra={"fields": {"gpu": gpu, "reason": str(e)}})
                    self._failed_read = True
                continue
            metrics.GPU_MEMORY_USED.labels(gpu=gpu).set(mem.used)
            metrics.GPU_MEMORY_TOTAL.labels(gpu=gpu).set(mem.total)
            metrics.GPU_TEMPERATURE.labels(gpu=gpu).set(temperature)
            metrics.GPU_UTILIZATION.labels(gpu=gpu).set(utilization.gpu / 100.0)

    def close(self) -> None:
        if self.count:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass


async def keep_reading(readings: GpuReadings, every_s: float = READ_EVERY_S) -> None:
    """Open NVML and refresh the readings until cancelled (NVML calls run off the event loop)."""
    if not await asyncio.to_thread(readings.open):
        return
    try:
        while True:
            await asyncio.to_thread(readings.read)
            await asyncio.sleep(every_s)
    finally:
        readings.close()

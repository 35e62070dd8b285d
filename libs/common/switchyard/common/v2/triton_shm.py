"""Input tensors for Triton through POSIX shared memory (Triton's system shared memory extension).

A batch-1 EfficientNet input is 600 KB of FP32; sent as an HTTP body it costs the vision worker ~0.7 ms
per request on this machine (docs/vision.md). When Triton runs beside the worker (same host, or the
same pod with a shared ``/dev/shm``), the worker writes the tensor into a region Triton has mapped
and sends only its name and offset. One region per worker, cut into fixed slots, one per request in
flight; a tensor that does not fit a slot, or a request arriving while every slot is taken, goes as
an HTTP body as before. If Triton cannot map the region (another host) the pool turns itself off.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import tritonclient.http.aio as triton_http
from tritonclient.utils import InferenceServerException

log = logging.getLogger("switchyard.v2")


class ShmPool:
    def __init__(self, client: triton_http.InferenceServerClient, name: str, slots: int, slot_bytes: int) -> None:
        self.name = name
        self.slot_bytes = slot_bytes
        self._client = client
        self._slots = slots
        self._free: list[int] = []
        self._shm: shared_memory.SharedMemory | None = None
        self._registered = False

    async def open(self) -> None:
        """Create the region and register it with Triton; the pool turns off if Triton refuses it."""
        if self._slots == 0:
            return
        with suppress(FileNotFoundError):  # left by a previous run of this worker that was killed
            shared_memory.SharedMemory(self.name).unlink()
        self._shm = shared_memory.SharedMemory(self.name, create=True, size=self._slots * self.slot_bytes)
        self._free = list(range(self._slots))
        try:
            await self._register()
        except InferenceServerException as e:
            log.warning("Triton cannot map shared memory (is it on another host?); inputs go as HTTP bodies: %s", e.message())
            await self.close()
            return
        except (OSError, TimeoutError):
            pass  # Triton is not up yet: registered on first use
        log.info("Triton inputs through shared memory", extra={"fields": {"region": self.name, "slots": self._slots, "slot_bytes": self.slot_bytes}})

    async def _register(self) -> None:
        assert self._shm is not None
        with suppress(InferenceServerException):  # a stale registration under our name
            await self._client.unregister_system_shared_memory(self.name)
        await self._client.register_system_shared_memory(self.name, f"/{self.name}", self._shm.size)
        self._registered = True

    async def _ready(self) -> bool:
        if self._shm is None:
            return False
        if not self._registered:
            try:
                await self._register()
            except (InferenceServerException, OSError, TimeoutError):
                return False
        return True

    def invalidate(self) -> None:
        """Triton lost the registration (it restarted): register again before the next use."""
        self._registered = False

    @asynccontextmanager
    async def slot(self, batch: np.ndarray[Any, Any]) -> AsyncIterator[int | None]:
        """Copy ``batch`` into a free slot and yield its offset; None when the body must carry it."""
        if batch.nbytes > self.slot_bytes or not await self._ready() or not self._free:
            yield None
            return
        assert self._shm is not None
        i = self._free.pop()
        try:
            offset = i * self.slot_bytes
            np.copyto(np.ndarray(batch.shape, batch.dtype, buffer=self._shm.buf, offset=offset), batch)
            yield offset
        finally:
            self._free.append(i)

    async def close(self) -> None:
        if self._shm is None:
            return
        if self._registered:
            with suppress(InferenceServerException, OSError, TimeoutError):
                await self._client.unregister_system_shared_memory(self.name)
        self._registered = False
        self._shm.close()
        self._shm.unlink()
        self._shm = None

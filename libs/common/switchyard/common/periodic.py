"""A background task that does one round of work every few seconds, for the life of a process."""

from __future__ import annotations

import asyncio
import contextlib
import logging


class Periodic:
    """Subclasses implement ``tick``; a round that fails is logged and the next one runs anyway
    (a database or orchestrator briefly down must not end the task for the process's life)."""

    log = logging.getLogger("switchyard.periodic")

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    async def _forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                self.log.exception("%s failed; retried next round", type(self).__name__)
            await asyncio.sleep(self.every_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

"""When a worker must go (SIGTERM, SIGINT, a spot interruption notice), it drains: ``Drain.wait``
returns the first reason, and ``worker_main.serve`` then stops polling (``Worker.shutdown``), which
makes every in-flight activity inside ``temporal.heartbeating`` heartbeat its checkpoint and hand
its attempt back at once (``WorkerDraining``, retried on another worker within
``temporal.DRAIN_RETRY_DELAY``); the realtime front ends stop taking requests and finish those in
flight. See docs/deploy.md ("Graceful termination and spot recovery").
"""

from __future__ import annotations

import asyncio
import logging
import signal

from switchyard.common.imds import ImdsPoller

log = logging.getLogger("switchyard.drain")


class Drain:
    def __init__(self) -> None:
        self._requested = asyncio.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        """Ask for a drain; the first reason is the one kept (a later SIGTERM changes nothing)."""
        if not self._requested.is_set():
            self.reason = reason
            self._requested.set()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    async def wait(self) -> str:
        await self._requested.wait()
        return self.reason

    def on_signals(self, loop: asyncio.AbstractEventLoop, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        for sig in signals:
            loop.add_signal_handler(sig, self.request, sig.name)

    async def watch(self, poller: ImdsPoller) -> None:
        """Drain on the first spot interruption notice (runs until then, or until cancelled)."""
        notice = await poller.wait()
        log.warning("spot interruption notice", extra={"fields": {"action": notice.action, "time": notice.time}})
        self.request(f"spot interruption: {notice.action} at {notice.time}")

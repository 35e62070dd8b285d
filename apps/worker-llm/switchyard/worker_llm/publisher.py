"""Token publishing that survives retries: no duplicates while a retry reproduces what was sent."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from switchyard.common.events import EventBus

Token = tuple[str, list[dict[str, Any]]]  # text, logprobs


class TokenPublisher:
    """Publishes each choice's tokens in order, skipping those clients already received.

    A retried attempt regenerates with the job's seeds. While its tokens match what an earlier
    attempt published, nothing is sent again; on the first mismatch a ``reset`` event tells
    clients to drop the partial output, and everything produced so far is resent.
    """

    def __init__(self, bus: EventBus, job_id: str, attempt: int, already: dict[int, list[str]]) -> None:
        self.bus, self.job_id, self.attempt = bus, job_id, attempt
        self.sent: dict[int, list[str]] = defaultdict(list, {c: list(t) for c, t in already.items()})
        self.produced: dict[int, list[Token]] = defaultdict(list)
        self._lock = asyncio.Lock()

    async def token(self, choice: int, text: str, logprobs: list[dict[str, Any]]) -> None:
        async with self._lock:
            produced = self.produced[choice]
            produced.append((text, logprobs))
            i = len(produced) - 1
            sent = self.sent[choice]
            if i < len(sent):
                if sent[i] != text:
                    await self._reset()
                return
            await self._publish(choice, i, text, logprobs)

    async def finish(self) -> None:
        """After the last token: anything sent beyond what this attempt produced must go."""
        async with self._lock:
            if any(len(self.sent[c]) > len(self.produced[c]) for c in list(self.sent)):
                await self._reset()

    async def _publish(self, choice: int, index: int, text: str, logprobs: list[dict[str, Any]]) -> None:
        data: dict[str, Any] = {"choice": choice, "index": index, "text": text}
        if logprobs:
            data["logprobs"] = logprobs
        await self.bus.publish(self.job_id, "token", data)
        self.sent[choice].append(text)

    async def _reset(self) -> None:
        await self.bus.publish(self.job_id, "reset", {"attempt": self.attempt})
        self.sent.clear()
        for choice, tokens in sorted(self.produced.items()):
            for i, (text, logprobs) in enumerate(tokens):
                await self._publish(choice, i, text, logprobs)

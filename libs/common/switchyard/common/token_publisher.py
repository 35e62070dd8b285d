"""Token publishing that survives retries and lost streams: no duplicate, no gap, for any client."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from switchyard.common.contracts import EventType, JobEvent
from switchyard.common.events import EventBus, TokenLedger

Token = tuple[str, list[dict[str, Any]]]  # text, logprobs
# Resends after stream losses in a row before the attempt gives up (Temporal retries it).
MAX_RECOVERIES = 5
# How long a publish waits for an unreachable Redis (a restart takes a second or two) before the attempt fails.
REDIS_OUTAGE_S = 20.0


class StreamLost(RuntimeError):
    """The job's stream kept losing what was just published."""


def resume_point(events: list[JobEvent], attempt: int) -> tuple[dict[int, list[str]], bool]:
    """What a retried attempt starts from, read from the job's stream: the tokens clients hold
    (after the last ``reset``) and whether the stream is whole. A stream holding no ``running``
    event of an earlier attempt lost what that attempt published (Redis restarted without
    persistence, or the stream was flushed): clients may hold tokens it no longer shows, so the
    attempt must ``reset`` before sending any."""
    ledger = TokenLedger()
    for e in events:
        ledger.apply(e)
    whole = any(e.type == "status" and e.data.get("status") == "running" and int(e.data.get("attempt", 0)) < attempt for e in events)
    return ledger.texts(), whole


class TokenPublisher:
    """Publishes each choice's tokens in order, skipping those clients already received.

    A retried attempt regenerates with the job's seeds. While its tokens match what an earlier
    attempt published, nothing is sent again; on the first mismatch a ``reset`` event tells
    clients to drop the partial output, and everything produced so far is resent.

    Every token is appended right after the publisher's previous event (``EventBus.append(after=)``):
    when the stream no longer ends with it (a Redis restart or flush lost it), the publisher sends
    ``reset`` and everything produced so far, so a client resuming from any event id neither
    misses a token nor sees one twice.
    """

    def __init__(self, bus: EventBus, job_id: str, attempt: int, already: dict[int, list[str]], last_id: str | None = None) -> None:
        """``last_id``: the attempt's last event in the stream (its ``running`` status); None: no check."""
        self.bus, self.job_id, self.attempt = bus, job_id, attempt
        self.sent: dict[int, list[str]] = defaultdict(list, {c: list(t) for c, t in already.items()})
        self.produced: dict[int, list[Token]] = defaultdict(list)
        self.last_id = last_id
        self.recoveries = 0  # stream losses answered by a reset (tests, logs)
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

    async def stream_lost(self) -> None:
        """The stream no longer shows what clients may hold: reset, then resend what was produced."""
        async with self._lock:
            await self._reset("stream_lost")

    async def _append(self, type_: EventType, data: dict[str, Any]) -> bool:
        """Append after the publisher's last event; False when the stream no longer ends with it.

        A Redis that went away (restarting) is waited for, up to ``REDIS_OUTAGE_S``; a try whose
        reply was lost may have got through, and the next one then finds the stream moved on: a
        reset and resend, never a duplicate."""
        delay, deadline = 0.1, time.monotonic() + REDIS_OUTAGE_S
        while True:
            try:
                ids = await self.bus.append(self.job_id, [(type_, data)], after=self.last_id)
                break
            except (RedisConnectionError, RedisTimeoutError):
                if time.monotonic() + delay > deadline:
                    raise  # the attempt fails; Temporal retries it (resume_point)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if ids is None:
            return False
        self.last_id = ids[-1]
        return True

    async def _publish(self, choice: int, index: int, text: str, logprobs: list[dict[str, Any]]) -> None:
        data: dict[str, Any] = {"choice": choice, "index": index, "text": text}
        if logprobs:
            data["logprobs"] = logprobs
        if await self._append("token", data):
            self.sent[choice].append(text)
        else:
            await self._reset("stream_lost")

    async def _reset(self, reason: str | None = None) -> None:
        for _ in range(MAX_RECOVERIES):
            if reason == "stream_lost":
                self.recoveries += 1
            # Unconditional: it starts the stream over when the stream is gone.
            self.last_id = None
            if not await self._append("reset", {"attempt": self.attempt, **({"reason": reason} if reason else {})}):
                continue
            self.sent.clear()
            if await self._resend():
                return
            reason = "stream_lost"
        raise StreamLost(f"the event stream of job {self.job_id} lost what was published {MAX_RECOVERIES} times in a row")

    async def _resend(self) -> bool:
        for choice, tokens in sorted(self.produced.items()):
            for i, (text, logprobs) in enumerate(tokens):
                data: dict[str, Any] = {"choice": choice, "index": i, "text": text}
                if logprobs:
                    data["logprobs"] = logprobs
                if not await self._append("token", data):
                    return False
                self.sent[choice].append(text)
        return True

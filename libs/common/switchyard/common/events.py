"""Per-job event streams on Redis Streams: workers publish, the API replays and tails.

Stream ids are the event ids clients resume from (SSE ``Last-Event-ID``), so a reconnect gets
exactly the events after the last one seen. Temporal is not on this path. Every access to a
stream goes through ``EventBus``; publishing trims it (``MAXLEN ~``) and renews its expiry.

A retried LLM attempt that diverges from what was streamed publishes ``reset``: the tokens before
it are void and the attempt's tokens follow from position 0. ``TokenLedger`` is the one reading of
that rule, for the worker resuming a job and for the API re-shaping tokens for clients.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from switchyard.common.contracts import EventType, JobEvent, JobStatus

_TERMINAL = {s.value for s in JobStatus if s.terminal}
START = "0-0"


def make_redis(url: str) -> Redis:
    # Reads are bounded by the client's own XREAD BLOCK time, kept well under socket_timeout.
    return Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)


def stream_key(job_id: str) -> str:
    return f"switchyard:job:{job_id}:events"


def is_terminal(event: JobEvent) -> bool:
    return event.type == "status" and event.data.get("status") in _TERMINAL


def _decode(entry_id: bytes | str, fields: dict[Any, Any]) -> JobEvent:
    def s(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else v

    f = {s(k): s(v) for k, v in fields.items()}
    return JobEvent(id=s(entry_id), type=f["type"], data=json.loads(f["data"]))  # type: ignore[arg-type]


class TokenLedger:
    """A job's tokens as its clients hold them, per choice, across ``reset`` events."""

    def __init__(self) -> None:
        # Token events (their data) since the last reset, per choice, in order.
        self.current: dict[int, list[dict[str, Any]]] = {}
        # Positions per choice ever handed on: a reset replays them, they are not new.
        self._delivered: dict[int, int] = {}

    def apply(self, event: JobEvent) -> bool:
        """Account for one event; True if it is a token at a position not handed on before."""
        if event.type == "reset":
            self.current = {}
            return False
        if event.type != "token":
            return False
        choice = int(event.data.get("choice", 0))
        tokens = self.current.setdefault(choice, [])
        tokens.append(event.data)
        if len(tokens) <= self._delivered.get(choice, 0):
            return False  # the client has this position already (best effort after a divergent retry)
        self._delivered[choice] = len(tokens)
        return True

    def texts(self) -> dict[int, list[str]]:
        return {c: [t["text"] for t in tokens] for c, tokens in self.current.items()}

    def logprobs(self, choice: int) -> list[dict[str, Any]]:
        return [lp for t in self.current.get(choice, []) for lp in t.get("logprobs") or []]


class EventBus:
    def __init__(self, redis: Redis, *, ttl_s: int, maxlen: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.maxlen = maxlen

    async def publish(self, job_id: str, type_: EventType, data: dict[str, Any]) -> str:
        key = stream_key(job_id)
        fields = {"type": type_, "data": json.dumps(data, separators=(",", ":"))}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            # Every stream expires: a finished job stays replayable for ttl_s, an abandoned one goes.
            pipe.expire(key, self.ttl_s)
            entry_id, _ = await pipe.execute()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def delete(self, job_id: str) -> None:
        """Drop the job's stream now (purge), rather than when it expires."""
        await self.redis.delete(stream_key(job_id))

    async def exists(self, job_id: str) -> bool:
        """Whether the job's stream is there (it expires ``ttl_s`` after the last event)."""
        return bool(await self.redis.exists(stream_key(job_id)))

    async def read(self, job_id: str, after: str = START, count: int = 1000) -> list[JobEvent]:
        """Events strictly after ``after`` (no blocking)."""
        rows: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(stream_key(job_id), min=f"({after}" if after != START else "-", count=count)  # type: ignore[assignment]
        return [_decode(i, f) for i, f in rows]

    async def follow(self, job_id: str, after: str = START, block_ms: int = 5_000) -> AsyncIterator[JobEvent | None]:
        """Replay then tail the stream; ends after a terminal status event.

        Yields ``None`` when nothing arrived for ``block_ms`` so callers can send keep-alives
        and notice disconnected clients.
        """
        key = stream_key(job_id)
        last = after
        while True:
            resp: Any = await self.redis.xread({key: last}, count=500, block=block_ms)
            if not resp:
                yield None
                continue
            for entry_id, fields in resp[0][1]:
                event = _decode(entry_id, fields)
                last = event.id
                yield event
                if is_terminal(event):
                    return

    async def tokens_since_reset(self, job_id: str) -> dict[int, list[str]]:
        """Token texts clients currently hold (after the last ``reset``), per choice, in order."""
        ledger = TokenLedger()
        last = START
        while batch := await self.read(job_id, after=last, count=5000):
            for e in batch:
                ledger.apply(e)
            last = batch[-1].id
        return ledger.texts()

"""Per-job event streams on Redis Streams: workers publish, the API replays and tails.

Stream ids are the event ids clients resume from (SSE ``Last-Event-ID``), so a reconnect gets
exactly the events after the last one seen. Temporal is not on this path. Every access to a
stream goes through ``EventBus``; publishing trims it (``MAXLEN ~``) and renews its expiry.

A retried LLM attempt that diverges from what was streamed publishes ``reset``: the tokens before
it are void and the attempt's tokens follow from position 0. ``TokenLedger`` is the one reading of
that rule, for the worker resuming a job and for the API re-shaping tokens for clients.

Redis is not the record of a job, PostgreSQL is (docs/events.md): a stream may lose its tail or
vanish (a Redis restart, a flush). Publishers therefore append *conditionally* (``append`` with
``after``: only while the stream still ends with the publisher's last event; ``ensure_end``: the end,
once, rebuilt from the job's outcome when the stream is gone), so a loss is noticed where it
happens and answered with ``reset`` and a resend instead of a silent gap or duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from switchyard.common.contracts import EventType, JobEvent, JobStatus

_TERMINAL = {s.value for s in JobStatus if s.terminal}
START = "0-0"
# How long ``follow`` keeps reconnecting to an unreachable Redis before giving up (a restart takes seconds).
FOLLOW_OUTAGE_S = 60.0

log = logging.getLogger("switchyard.events")

Pending = tuple[EventType, dict[str, Any]]

# One conditional append, atomic in Redis. ARGV: mode, after, maxlen, ttl, prefix (how many of the
# events that follow are only appended when the stream is gone), then type/data pairs.
#   any:   always append.
#   after: only while the stream still ends with entry ``after`` (the caller's last event): else nil.
#   end:   the job's end, once: nil when the stream already ends with a terminal status; when its
#          last entry is the ``result`` the end starts with, only the status; when the stream is
#          gone, the ``prefix`` events (a rebuild) first.
_APPEND = """
local terminal = TERMINAL
local key, mode, after, maxlen, ttl, prefix = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local first = 6 + 2 * prefix
if mode == 'after' then
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if last == nil or last[1] ~= after then return false end
elseif mode == 'end' then
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if last == nil then
    first = 6
  else
    local f = {}
    for i = 1, #last[2], 2 do f[last[2][i]] = last[2][i + 1] end
    if f['type'] == 'status' and terminal[cjson.decode(f['data'])['status']] then return false end
    if f['type'] == 'result' and ARGV[first] == 'result' then first = first + 2 end
  end
end
local ids = {}
for i = first, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'type', ARGV[i], 'data', ARGV[i + 1])
end
redis.call('EXPIRE', key, ttl)
return ids
""".replace("TERMINAL", "{" + ", ".join(f"['{s}'] = true" for s in sorted(_TERMINAL)) + "}")


T = TypeVar("T")


async def once_more(call: Callable[[], Awaitable[T]]) -> T:
    """An idempotent call, tried again once when its connection broke: the pool's connections all
    break when Redis restarts (the pool hands out a stale one without noticing), and the client (no
    retries of its own: a retried XADD could add an event twice) reconnects on the next call."""
    try:
        return await call()
    except (RedisConnectionError, RedisTimeoutError):
        await asyncio.sleep(0.1)
        return await call()


def make_redis(url: str) -> Redis:
    # Reads are bounded by the client's own XREAD BLOCK time, kept well under socket_timeout.
    return Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)


def stream_key(job_id: str) -> str:
    return f"switchyard:job:{job_id}:events"


def is_terminal(event: JobEvent) -> bool:
    return event.type == "status" and event.data.get("status") in _TERMINAL


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _decode(entry_id: bytes | str, fields: dict[Any, Any]) -> JobEvent:
    f = {_s(k): _s(v) for k, v in fields.items()}
    return JobEvent(id=_s(entry_id), type=f["type"], data=json.loads(f["data"]))  # type: ignore[arg-type]


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


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


class JobEnd(BaseModel):
    """How a job ended, as its stream tells it: the ``result`` event (succeeded jobs) then the
    terminal ``status``. Built from the workflow's outcome (``job.finish``) or from the job's row
    (the API, when the stream lost the end)."""

    status: JobStatus
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    attempts: int | None = None
    endpoint: str | None = None

    def events(self) -> list[Pending]:
        out: list[Pending] = []
        if self.status is JobStatus.succeeded:
            # Timings, attempts and endpoint: for the request log of the API that relays the result (OpenAI).
            out.append(("result", {"result": self.result, "usage": self.usage, "timings": self.timings, "attempts": self.attempts,
                                   "endpoint": self.endpoint}))
        payload: dict[str, Any] = {"status": self.status.value}
        if self.error:
            payload["error"] = self.error
        out.append(("status", payload))
        return out

    def rebuild(self) -> list[Pending]:
        """What goes before a succeeded job's end in a stream rebuilt from nothing: ``reset`` (a
        resuming client drops what it holds), then each choice's whole text as one token (an LLM
        result's choices: the row keeps texts, not tokens)."""
        if self.status is not JobStatus.succeeded:
            return []  # no result to rebuild: the end alone tells it
        out: list[Pending] = [("reset", {"reason": "rebuilt"})]
        choices = (self.result or {}).get("choices")
        for c in choices if isinstance(choices, list) else []:
            if isinstance(c, dict) and isinstance(c.get("text"), str) and c["text"]:
                out.append(("token", {"choice": int(c.get("index", 0)), "index": 0, "text": c["text"]}))
        return out


class EventBus:
    def __init__(self, redis: Redis, *, ttl_s: int, maxlen: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.maxlen = maxlen
        self._append = redis.register_script(_APPEND)

    async def publish(self, job_id: str, type_: EventType, data: dict[str, Any]) -> str:
        key = stream_key(job_id)
        fields = {"type": type_, "data": _dumps(data)}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            # Every stream expires: a finished job stays replayable for ttl_s, an abandoned one goes.
            pipe.expire(key, self.ttl_s)
            entry_id, _ = await pipe.execute()
        return _s(entry_id)

    async def _run(self, job_id: str, mode: str, events: Sequence[Pending], *, after: str = "", prefix: int = 0) -> list[str] | None:
        args: list[str | int] = [mode, after, self.maxlen, self.ttl_s, prefix]
        for type_, data in events:
            args += [type_, _dumps(data)]
        ids: list[bytes] | None = await self._append(keys=[stream_key(job_id)], args=args)
        return None if ids is None else [_s(i) for i in ids]

    async def append(self, job_id: str, events: Sequence[Pending], *, after: str | None = None) -> list[str] | None:
        """Append events in one step; their ids. With ``after`` (the id of the caller's last event),
        only while the stream still ends with that event: None (and nothing written) when it does
        not: a Redis restart or flush lost it, or an earlier try of this append got through (its
        reply lost), or another writer appended meanwhile. The caller cannot tell which, and
        answers all alike (``reset`` and resend), which is right for each."""
        return await self._run(job_id, "after" if after else "any", events, after=after or "")

    async def ensure_end(self, job_id: str, end: JobEnd) -> list[str]:
        """Publish the job's end unless the stream has it already (idempotent; safe to race): a
        retried ``job.finish`` and an API that found the end missing both call it. A stream that is
        gone is rebuilt (``JobEnd.rebuild``) before the end. The ids written ([] if none)."""
        rebuild = end.rebuild()
        return await once_more(lambda: self._run(job_id, "end", [*rebuild, *end.events()], prefix=len(rebuild))) or []

    async def delete(self, job_id: str) -> None:
        """Drop the job's stream now (purge), rather than when it expires."""
        await self.redis.delete(stream_key(job_id))

    async def exists(self, job_id: str) -> bool:
        """Whether the job's stream is there (it expires ``ttl_s`` after the last event)."""
        return bool(await once_more(lambda: self.redis.exists(stream_key(job_id))))

    async def read(self, job_id: str, after: str = START, count: int = 1000) -> list[JobEvent]:
        """Events strictly after ``after`` (no blocking)."""
        rows: Any = await once_more(lambda: self.redis.xrange(stream_key(job_id), min=f"({after}" if after != START else "-", count=count))
        return [_decode(i, f) for i, f in rows]

    async def read_all(self, job_id: str) -> list[JobEvent]:
        out: list[JobEvent] = []
        while batch := await self.read(job_id, after=out[-1].id if out else START, count=5000):
            out += batch
        return out

    async def follow(self, job_id: str, after: str = START, block_ms: int = 5_000) -> AsyncIterator[JobEvent | None]:
        """Replay then tail the stream; ends after a terminal status event.

        Yields ``None`` when nothing arrived for ``block_ms`` so callers can send keep-alives
        and notice disconnected clients. An unreachable Redis (restarting) is waited for, up to
        ``FOLLOW_OUTAGE_S``, yielding ``None`` meanwhile; the tail resumes after the last event
        seen (a stream lost meanwhile is re-published with later ids, starting with ``reset``).
        """
        key = stream_key(job_id)
        last = after
        down_since: float | None = None
        while True:
            try:
                resp: Any = await self.redis.xread({key: last}, count=500, block=block_ms)
            except (RedisConnectionError, RedisTimeoutError) as e:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > FOLLOW_OUTAGE_S:
                    raise
                log.warning("event stream read failed; retrying", extra={"fields": {"job_id": job_id, "error": repr(e)}})
                yield None
                await asyncio.sleep(0.5)
                continue
            down_since = None
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
        for e in await self.read_all(job_id):
            ledger.apply(e)
        return ledger.texts()

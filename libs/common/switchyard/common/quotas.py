"""Per-key quotas and the per-model backlog, as atomic counters in Redis.

Every decision is one Lua script (one round trip, ``EVALSHA``), so API processes share the counters
and concurrent requests cannot both take the last unit:

- **requests per second**: a token bucket per key (capacity = burst = max(rps, 1), refilled at rps/s);
- **tokens per minute** (LLM work): a token bucket per key (capacity tpm, refilled tpm/60 per second);
  admission reserves the estimate (prompt + max_tokens), the job's end settles: the bucket gets back
  ``reserved - used``. The reservation is kept by job id (with a TTL), so the worker that finishes the
  job settles it without knowing the key;
- **concurrent streams**: a sorted set per key of leases scored by their expiry; an open stream renews
  its lease, so a crashed API process cannot hold slots longer than one lease;
- **backlog per model**: a sorted set of the model's unfinished job ids (score: accept time); a job
  is added when accepted if the set is below the limit, removed when it ends; ``reconcile`` drops the
  ids PostgreSQL says ended, so a lost removal cannot leak capacity.

Clocks are Redis' own (``TIME``), so API processes on different hosts agree. See docs/security.md.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from switchyard.common.events import once_more

log = logging.getLogger("switchyard.quotas")

PREFIX: Final = "switchyard:quota"
# How long an open stream's lease lasts without renewal, and how often an open stream renews it.
LEASE_S: Final = 30.0
RENEW_EVERY_S: Final = 10.0
# An unsettled reservation (job lost, worker gone for good) is dropped after this long, unrefunded.
RESERVATION_TTL_S: Final = 6 * 3600
# A backlog id without a job row is dropped by reconcile after this long (the row may be committing).
ORPHAN_GRACE_S: Final = 60.0

Limit = Literal["requests", "tokens", "streams"]


class Limits(BaseModel):
    """A key's limits; None: unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rps: float | None = Field(default=None, gt=0)
    max_streams: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)

    def over(self, rps: float | None, max_streams: int | None, tpm: int | None) -> Limits:
        """These limits with the given overrides (None keeps this one's)."""
        return Limits(rps=self.rps if rps is None else rps, max_streams=self.max_streams if max_streams is None else max_streams,
                      tpm=self.tpm if tpm is None else tpm)


UNLIMITED: Final = Limits()
# Per tier, generous: the tests and benchmarks (hundreds of req/s with the dev key) never reach them.
DEFAULT_TIER_LIMITS: Final[dict[str, Limits]] = {
    "high": Limits(rps=2000, max_streams=256, tpm=10_000_000),
    "normal": Limits(rps=1000, max_streams=64, tpm=2_000_000),
    "low": Limits(rps=200, max_streams=16, tpm=500_000),
}


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    m, s = divmod(math.ceil(seconds), 60)
    return f"{m}m{s}s"


@dataclass(frozen=True)
class Bucket:
    """A token bucket's state after a take: ``ok``; what is left; seconds until the take would fit
    (``wait``) and until the bucket is full again (``reset``)."""

    limit: float
    remaining: float
    wait_s: float
    reset_s: float
    ok: bool

    def headers(self, kind: Literal["requests", "tokens"]) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers of this bucket."""
        return {f"x-ratelimit-limit-{kind}": str(int(self.limit)), f"x-ratelimit-remaining-{kind}": str(max(0, int(self.remaining))),
                f"x-ratelimit-reset-{kind}": duration(self.reset_s)}


class QuotaExceeded(Exception):
    """Over a limit: answer 429 with ``Retry-After`` (whole seconds, at least 1) and ``headers``."""

    def __init__(self, limit: Limit, message: str, retry_after_s: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.limit, self.message = limit, message
        self.retry_after = max(1, math.ceil(retry_after_s))
        self.headers = {"Retry-After": str(self.retry_after), **(headers or {})}


# Token bucket. KEYS[1]: the bucket (hash t=tokens, ts=time). ARGV: capacity, refill per second,
# cost. Returns {ok, tokens left, seconds until cost fits, seconds until full} (floats as strings:
# Lua numbers returned to Redis become integers).
_TAKE = """
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local v = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then tokens, ts = cap, now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local ok, wait = 0, 0
if tokens >= cost then tokens = tokens - cost; ok = 1 else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.min(math.ceil(cap / rate * 1000) + 1000, 604800000))
return {ok, tostring(tokens), tostring(wait), tostring((cap - tokens) / rate)}
"""

# Reserve tokens for a job. KEYS[1]: the bucket, KEYS[2]: the job's reservation. ARGV: capacity,
# refill per second, cost, reservation TTL (s). As _TAKE; when it fits, the reservation remembers
# the bucket and the amount for ``settle``.
_RESERVE = _TAKE.replace(
    "return {ok",
    "if ok == 1 then redis.call('HSET', KEYS[2], 'bucket', KEYS[1], 'cap', ARGV[1], 'rate', ARGV[2], 'reserved', ARGV[3]);"
    " redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end\nreturn {ok",
)

# Settle a job's reservation. KEYS[1]: the reservation. ARGV: tokens used. Gives back reserved -
# used (never above capacity), once: the reservation is deleted. Returns the tokens given back.
# (The bucket's key comes from the reservation: one Redis, not a cluster.)
_SETTLE = """
local r = redis.call('HMGET', KEYS[1], 'bucket', 'cap', 'rate', 'reserved')
if r[1] == false then return '0' end
redis.call('DEL', KEYS[1])
local cap, rate, back = tonumber(r[2]), tonumber(r[3]), tonumber(r[4]) - tonumber(ARGV[1])
if back <= 0 then return '0' end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local v = redis.call('HMGET', r[1], 't', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then return '0' end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate + back)
redis.call('HSET', r[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', r[1], math.min(math.ceil(cap / rate * 1000) + 1000, 604800000))
return tostring(back)
"""

# Lease a stream slot. KEYS[1]: the key's leases (member: lease id, score: expiry). ARGV: max,
# lease id, lease seconds. Drops expired leases, counts, adds. Returns {ok, open leases, seconds
# until the earliest lease expires}.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = 1
  if first[2] then wait = tonumber(first[2]) - now end
  return {0, n, tostring(wait)}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 60)
return {1, n + 1, '0'}
"""

# Renew a lease (only if it is still held). KEYS[1]: the leases. ARGV: lease id, lease seconds.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
return n
"""

# Admit a job into its model's backlog. KEYS[1]: the backlog. ARGV: max, job id. Idempotent.
_ADMIT = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1e6, ARGV[2])
return 1
"""


class _Script:
    """A Lua script run by ``EVALSHA`` (loaded on first use, and again after a Redis restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha: str | None = None

    async def __call__(self, redis: Redis, keys: list[str], args: list[str | int | float]) -> Any:
        if self.sha is None:
            self.sha = str(await redis.script_load(self.source))
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = str(await redis.script_load(self.source))
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


def _bucket(raw: Any, limit: float) -> Bucket:
    ok, tokens, wait, reset = raw
    return Bucket(limit=limit, remaining=float(tokens), wait_s=float(wait), reset_s=float(reset), ok=int(ok) == 1)


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def reservation_key(job_id: str) -> str:
    return f"{PREFIX}:reservation:{job_id}"


class Quotas:
    """The per-key limits (``prefix``: a test's own key space)."""

    def __init__(self, redis: Redis, prefix: str = PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self._take, self._reserve, self._settle = _Script(_TAKE), _Script(_RESERVE), _Script(_SETTLE)
        self._lease, self._renew = _Script(_LEASE), _Script(_RENEW)

    def _key(self, key_id: str, what: str) -> str:
        return f"{self.prefix}:{key_id}:{what}"

    async def request(self, key_id: str, limits: Limits) -> Bucket | None:
        """Count one request against the key's requests per second; QuotaExceeded when over.
        None when the key has no such limit."""
        if limits.rps is None:
            return None
        cap = max(limits.rps, 1.0)
        b = _bucket(await self._take(self.redis, [self._key(key_id, "rps")], [cap, limits.rps, 1]), cap)
        if not b.ok:
            raise QuotaExceeded("requests", f"rate limit reached: {limits.rps:g} requests per second for this API key", b.wait_s, b.headers("requests"))
        return b

    async def tokens(self, key_id: str, limits: Limits, cost: int, job_id: str | None = None) -> Bucket | None:
        """Take ``cost`` tokens of the key's tokens per minute; with ``job_id``, keep it as the job's
        reservation, which ``settle`` trues up when the job ends. QuotaExceeded when it does not fit."""
        if limits.tpm is None:
            return None
        cap = float(limits.tpm)
        if cost > cap:
            raise QuotaExceeded("tokens", f"request too large: it needs about {cost} tokens, over this API key's {limits.tpm} tokens per minute",
                                60, Bucket(cap, 0, 60, 60, False).headers("tokens"))
        rate, key = cap / 60.0, self._key(key_id, "tpm")
        if cap == 0:  # no LLM work for this key (a zero refill would never fit)
            raise QuotaExceeded("tokens", "this API key has no token budget (tpm 0)", 60, Bucket(0, 0, 60, 60, False).headers("tokens"))
        if job_id is None:
            raw = await self._take(self.redis, [key], [cap, rate, cost])
        else:
            raw = await self._reserve(self.redis, [key, reservation_key(job_id)], [cap, rate, cost, RESERVATION_TTL_S])
        b = _bucket(raw, cap)
        if not b.ok:
            raise QuotaExceeded("tokens", f"rate limit reached: {limits.tpm} tokens per minute for this API key (this request needs about {cost})",
                                b.wait_s, b.headers("tokens"))
        return b

    async def settle(self, job_id: str, used: int) -> int:
        """The job's end: give back what its reservation did not use (once); the tokens given back."""
        return int(float(_text(await self._settle(self.redis, [reservation_key(job_id)], [max(0, used)]))))

    async def remaining_tokens(self, key_id: str, limits: Limits) -> Bucket | None:
        """The key's token bucket now (a take of 0)."""
        if not limits.tpm:
            return None
        return _bucket(await self._take(self.redis, [self._key(key_id, "tpm")], [float(limits.tpm), limits.tpm / 60.0, 0]), float(limits.tpm))

    async def open_stream(self, key_id: str, limits: Limits) -> Lease | None:
        """A stream slot for the key (release it when the stream ends); QuotaExceeded when all are taken."""
        if limits.max_streams is None:
            return None
        key, lease_id = self._key(key_id, "streams"), uuid.uuid4().hex
        ok, _, wait = await self._lease(self.redis, [key], [limits.max_streams, lease_id, LEASE_S])
        if int(ok) != 1:
            raise QuotaExceeded("streams", f"too many open streams: {limits.max_streams} at once for this API key", float(_text(wait)))
        return Lease(self, key, lease_id)


class Lease:
    """One open stream's slot: ``renew`` while it is open (cheap when not due), ``release`` at its end."""

    def __init__(self, quotas: Quotas, key: str, lease_id: str) -> None:
        self.quotas, self.key, self.lease_id = quotas, key, lease_id
        self.renewed = time.monotonic()

    async def renew(self) -> None:
        if time.monotonic() - self.renewed >= RENEW_EVERY_S:
            self.renewed = time.monotonic()
            try:
                await self.quotas._renew(self.quotas.redis, [self.key], [self.lease_id, LEASE_S])
            except RedisError:  # an open stream outlives a Redis blip; at worst its slot frees early
                log.warning("could not renew a stream lease", exc_info=True)

    async def release(self) -> None:
        try:
            await self.quotas.redis.zrem(self.key, self.lease_id)
        except RedisError:  # the lease expires on its own
            log.warning("could not release a stream lease", exc_info=True)


class Backlog:
    """Unfinished jobs per model (``namespace``: the job store's, e.g. its database name, so two
    platforms sharing one Redis do not share backlogs)."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace
        self._admit = _Script(_ADMIT)

    def key(self, model: str) -> str:
        return f"switchyard:backlog:{self.namespace}:{model}"

    async def admit(self, model: str, job_id: str, max_pending: int) -> bool:
        """Add the job to its model's backlog if there is room (atomic, and idempotent: tried again
        once on a broken connection); False when full."""
        return int(await once_more(lambda: self._admit(self.redis, [self.key(model)], [max_pending, job_id]))) == 1

    async def release(self, model: str, job_id: str) -> None:
        await self.redis.zrem(self.key(model), job_id)

    async def size(self, model: str) -> int:
        return int(await self.redis.zcard(self.key(model)))

    async def members(self) -> dict[str, list[tuple[str, float]]]:
        """Every model's backlog: model → [(job id, accept time)]."""
        out: dict[str, list[tuple[str, float]]] = {}
        start = len(self.key(""))
        async for raw in self.redis.scan_iter(match=self.key("*"), count=100):
            key = _text(raw)
            entries: list[Any] = await self.redis.zrange(key, 0, -1, withscores=True)
            out[key[start:]] = [(_text(m), float(score)) for m, score in entries]
        return out

    async def reconcile(self, members: dict[str, list[tuple[str, float]]], ended: Iterable[str], known: Iterable[str], now: float | None = None) -> int:
        """Drop the ids of ``members`` (read first) that PostgreSQL then says ``ended``, and those it
        does not ``know`` once older than ORPHAN_GRACE_S (a younger one's row may still be committing).
        Returns how many were dropped."""
        if now is None:
            clock: Any = await self.redis.time()  # the clock the scores were written with: (s, µs)
            now = float(clock[0]) + float(clock[1]) / 1e6
        ended_ids, known_ids = set(ended), set(known)
        dropped = 0
        for model, ids in members.items():
            gone = [j for j, accepted in ids if j in ended_ids or (j not in known_ids and now - accepted > ORPHAN_GRACE_S)]
            if gone:
                dropped += int(await self.redis.zrem(self.key(model), *gone))
        return dropped

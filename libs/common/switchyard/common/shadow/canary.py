"""Canary: a share of a model's live requests answered by its shadow candidate (``shadow.canary``),
the candidate's outcomes kept per model over a window, and the automatic rollback.

Outcomes go to one Redis sorted set per model (scored by time, trimmed to the window), written
where the answer is known (the API's V2 gateway and recsys route) in a background task, off the
request's path. Only requests the candidate answered count. The ``RollbackController`` (a task in
every API process; one acts at a time under a Redis lock) rolls a canary back once it had
``min_requests`` in its window and its error rate or p99 passed its threshold: a change row
(switchyard.common.shadow.overlay) that every process applies, setting the canary's weight to 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from switchyard.common.catalog import Catalog
from switchyard.common.db.catalog_changes import ChangeFollower
from switchyard.common.metrics import CANARY_REQUESTS, CATALOG_CHANGES
from switchyard.common.model_registry import ModelEntry
from switchyard.common.shadow.overlay import AUTOMATIC
from switchyard.common.shadow.spec import CanarySpec, ShadowSpec
from switchyard.common.v2.config import V2Model

log = logging.getLogger("switchyard.shadow")

# The response header naming the model that answered a canary-routed request.
SERVED_BY = "x-switchyard-served-by"


def active_canary(shadow: ShadowSpec | None) -> CanarySpec | None:
    """The model's canary when it sends traffic (weight above 0)."""
    return shadow.canary if shadow is not None and shadow.canary is not None and shadow.canary.weight > 0 else None


def routed_to_candidate(shadow: ShadowSpec | None) -> bool:
    """Whether this request of a model with ``shadow`` goes to its candidate (probability: the weight)."""
    canary = active_canary(shadow)
    return canary is not None and random.random() < canary.weight


def canary_snapshot(catalog: Catalog, entry: ModelEntry) -> dict[str, Any] | None:
    """For an LLM request the canary routes to the candidate: the job's catalog snapshot, the
    candidate's entry with a ``canary`` note (whose outcome the job's end records); else None."""
    if entry.shadow is None or not routed_to_candidate(entry.shadow) or (canary := active_canary(entry.shadow)) is None:
        return None
    snap = catalog.snapshot(entry.shadow.candidate)
    if snap is None or "llm" not in snap:
        return None
    return {**snap, "canary": {"model": entry.name, "candidate": entry.shadow.candidate, "window_s": canary.window_s}}


@dataclass(frozen=True)
class CanaryStats:
    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def stats_of(outcomes: Iterable[tuple[bool, float]]) -> CanaryStats:
    """``outcomes``: (ok, latency ms) per request; p99 by nearest rank."""
    rows = list(outcomes)
    lat = sorted(ms for _, ms in rows)
    p99 = lat[max(0, math.ceil(0.99 * len(lat)) - 1)] if lat else None
    return CanaryStats(requests=len(rows), errors=sum(1 for ok, _ in rows if not ok), p99_ms=p99)


def verdict(s: CanaryStats, spec: CanarySpec) -> str | None:
    """Why the canary must be rolled back (the measured numbers), or None."""
    if s.requests < spec.min_requests:
        return None
    seen = f"{s.requests} candidate requests in the last {spec.window_s:g} s"
    if s.error_rate > spec.max_error_rate:
        return f"error rate {s.error_rate:.3f} over max_error_rate {spec.max_error_rate:g} ({s.errors} errors in {seen})"
    if s.p99_ms is not None and s.p99_ms > spec.max_p99_ms:
        return f"p99 {s.p99_ms:.1f} ms over max_p99_ms {spec.max_p99_ms:g} ({seen})"
    return None


class CanaryOutcomes:
    """The candidate's outcomes per model (``namespace``: the platform's database name, as the
    backlog's, so two platforms sharing one Redis keep theirs apart)."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace
        self._tasks: set[asyncio.Task[None]] = set()

    def key(self, model: str) -> str:
        return f"switchyard:canary:{self.namespace}:{model}"

    async def record(self, model: str, ok: bool, latency_ms: float, window_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        key = self.key(model)
        member = f"{now:.6f}:{int(ok)}:{latency_ms:.3f}:{uuid.uuid4().hex[:8]}"
        async with self.redis.pipeline(transaction=False) as p:
            p.zadd(key, {member: now})
            p.zremrangebyscore(key, "-inf", now - window_s)
            p.expire(key, max(1, math.ceil(window_s * 2)))
            await p.execute()

    def note(self, model: str, candidate: str, ok: bool, latency_ms: float, window_s: float) -> None:
        """Record in the background (the client does not wait for Redis); counted in the metrics now."""
        CANARY_REQUESTS.labels(model=model, candidate=candidate, outcome="ok" if ok else "error").inc()
        task = asyncio.get_running_loop().create_task(self._record_quietly(model, ok, latency_ms, window_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def noted(self, model: str, candidate: str, ok: bool, latency_ms: float, window_s: float) -> None:
        """``note``, awaited (off the client's path already: a job's end)."""
        CANARY_REQUESTS.labels(model=model, candidate=candidate, outcome="ok" if ok else "error").inc()
        await self._record_quietly(model, ok, latency_ms, window_s)

    async def _record_quietly(self, model: str, ok: bool, latency_ms: float, window_s: float) -> None:
        try:
            await self.record(model, ok, latency_ms, window_s)
        except (RedisError, OSError) as e:
            log.warning("canary outcome not recorded", extra={"fields": {"model": model, "error": repr(e)}})

    async def window(self, model: str, window_s: float, now: float | None = None) -> CanaryStats:
        now = time.time() if now is None else now
        members = await self.redis.zrangebyscore(self.key(model), now - window_s, "+inf")
        rows = []
        for m in members:
            _, ok, ms, _ = (m.decode() if isinstance(m, bytes) else str(m)).split(":")
            rows.append((ok == "1", float(ms)))
        return stats_of(rows)

    async def clear(self, model: str) -> None:
        await self.redis.delete(self.key(model))

    async def close(self) -> None:
        """Let the outcomes still being written finish."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# KEYS[1]: the lock; ARGV[1]: its holder. Deletes it only if still held by that holder.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RollbackController:
    """Every ``every_s``: the models with an active canary whose window passed a threshold are
    rolled back (one API process acts at a time: a Redis lock per round)."""

    def __init__(self, outcomes: CanaryOutcomes, follower: ChangeFollower, every_s: float = 2.0) -> None:
        self.outcomes = outcomes
        self.follower = follower  # the process's catalog and the change table
        self.every_s = every_s
        self.lock = f"switchyard:canary-lock:{outcomes.namespace}"
        self._release = outcomes.redis.register_script(_RELEASE)

    def _canaries(self) -> list[tuple[str, str, CanarySpec]]:
        cat = self.follower.catalog.current
        models: list[ModelEntry | V2Model] = [*cat.registry.models, *cat.v2.models]
        return [(m.name, m.shadow.candidate, c) for m in models if m.shadow is not None and (c := active_canary(m.shadow)) is not None]

    async def tick(self) -> list[str]:
        """One round; the models rolled back."""
        me = uuid.uuid4().hex
        if not await self.outcomes.redis.set(self.lock, me, nx=True, px=int(max(self.every_s * 5, 10) * 1000)):
            return []  # another API process is at it
        done: list[str] = []
        try:
            await self.follower.sync()  # a rollback another process just made is not made twice
            for name, candidate, canary in self._canaries():
                why = verdict(await self.outcomes.window(name, canary.window_s), canary)
                if why is None:
                    continue
                await self.follower.store.record(model=name, action="rollback", candidate=candidate, actor=AUTOMATIC, reason=why)
                await self.outcomes.clear(name)
                CATALOG_CHANGES.labels(model=name, action="rollback", by="automatic").inc()
                log.warning("canary rolled back automatically", extra={"fields": {"model": name, "candidate": candidate, "reason": why}})
                done.append(name)
            if done:
                await self.follower.sync()
        finally:
            await self._release(keys=[self.lock], args=[me])
        return done

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.tick()
            except (RedisError, SQLAlchemyError, OSError) as e:
                log.warning("canary check failed; trying again", extra={"fields": {"error": repr(e)}})

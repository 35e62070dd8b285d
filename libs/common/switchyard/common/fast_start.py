"""Fast start: the API runs a completion's first attempt itself, the workflow adopts it (docs/llm-speed.md).

A completion accepted while its model has a short backlog is started by the API at once, without
waiting for Temporal to hand the job to a worker; its workflow is started as always. The job's
``runner`` key in Redis says who generates: the API (``api:<token>``, a short lease it renews) or a
worker (``worker``). The workflow's ``llm.generate`` activity, finding the API's lease, waits for
the API's end record (the generation, or its error) instead of calling the engine; finding the
lease lapsed (the API died or shut down), it takes over and resumes from the job's events, as a
retried attempt does. The API's run counts as attempt 1 (attempts are numbered by the job's row:
``JobStore.mark_running``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from switchyard.common.contracts import LlmGeneration

# The API's lease on a run: renewed every LEASE_RENEW_S; a run not renewed for LEASE_MS is taken over.
LEASE_MS = 3000
LEASE_RENEW_S = 1.0
# A worker's claim outlives its activity's longest attempt.
WORKER_CLAIM_MS = 20 * 60 * 1000

Renewal = Literal["held", "lost", "cancel"]
Adoption = Literal["record", "running", "cancelling", "taken", "none"]


class RunError(BaseModel):
    """An API run's failure, as the activity raises it (an ``EngineError``'s kind, or the error's type)."""

    type: str
    message: str
    retryable: bool
    retry_after_s: float | None = None


class RunEnd(BaseModel):
    """How the API's run ended (the record the adopting activity reads)."""

    outcome: Literal["succeeded", "failed", "cancelled"]
    generation: LlmGeneration | None = None
    error: RunError | None = None
    # Out-of-memory answers per endpoint position, as heartbeat details (llm_generation.OomState.as_details()).
    ooms: dict[str, Any] | None = None


def _keys(job_id: str) -> list[str]:
    base = f"switchyard:job:{job_id}"
    return [f"{base}:runner", f"{base}:fast", f"{base}:fast-end", f"{base}:cancel"]


# KEYS: runner, fast, fast-end, cancel.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
return 1
"""
_END = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
redis.call('DEL', KEYS[1])
return 1
"""
_ADOPT = """
local rec = redis.call('LPOP', KEYS[3])
if rec then return {'record', rec} end
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 4) == 'api:' then return {'running', ''} end
local fast = redis.call('EXISTS', KEYS[2])
if fast == 1 and redis.call('EXISTS', KEYS[4]) == 1 then return {'cancelling', ''} end
redis.call('SET', KEYS[1], 'worker', 'PX', ARGV[1])
if fast == 1 then return {'taken', ''} end
return {'none', ''}
"""


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class FastStartKeys:
    """The Redis side of fast start: the API's claim and lease, the worker's adoption, the end record."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis, self.ttl_s = redis, ttl_s  # ttl_s: as the job's events (the marker and record live as long)
        self._claim, self._renew = redis.register_script(_CLAIM), redis.register_script(_RENEW)
        self._end, self._adopt = redis.register_script(_END), redis.register_script(_ADOPT)

    async def claim(self, job_id: str, token: str) -> bool:
        """The API takes the run (only if no one has: a worker that got the job first keeps it)."""
        return int(await self._claim(keys=_keys(job_id), args=[f"api:{token}", LEASE_MS, self.ttl_s])) == 1

    async def renew(self, job_id: str, token: str) -> Renewal:
        """Extend the API's lease; ``lost`` when it lapsed (a worker may have taken over), ``cancel`` when the job's cancel was asked."""
        r = int(await self._renew(keys=_keys(job_id), args=[f"api:{token}", LEASE_MS]))
        return "held" if r == 1 else "cancel" if r == 2 else "lost"

    async def end(self, job_id: str, token: str, end: RunEnd | None) -> bool:
        """Give the run back, with its end record (None: no record, a worker takes over at once); False if the lease was lost."""
        payload = end.model_dump_json() if end is not None else ""
        return int(await self._end(keys=_keys(job_id), args=[f"api:{token}", payload, self.ttl_s])) == 1

    async def adopt(self, job_id: str) -> tuple[Adoption, RunEnd | None]:
        """The activity's look: the API's end ``record`` (taken off), the API still ``running``, the
        API stopped for a cancel (``cancelling``), or the run is now the worker's: ``taken`` over from
        the API, or ``none`` (no fast start)."""
        kind, rec = await self._adopt(keys=_keys(job_id), args=[WORKER_CLAIM_MS])
        kind = _s(kind)
        return kind, RunEnd.model_validate_json(_s(rec)) if kind == "record" else None  # type: ignore[return-value]

    async def wait_end(self, job_id: str, timeout_s: float) -> RunEnd | None:
        """The API's end record, waited for up to ``timeout_s``."""
        got: Any = await self.redis.blpop([_keys(job_id)[2]], timeout=timeout_s)
        return RunEnd.model_validate_json(_s(got[1])) if got else None

    async def request_cancel(self, job_id: str) -> None:
        """Ask whoever runs the job to stop (the API's run sees it at its next renewal)."""
        await self.redis.set(_keys(job_id)[3], "1", ex=self.ttl_s)

    async def api_holds_lease(self, job_id: str) -> bool:
        """Whether the API's lease on the job is still held (by any API process)."""
        v = await self.redis.get(_keys(job_id)[0])
        return v is not None and _s(v).startswith("api:")

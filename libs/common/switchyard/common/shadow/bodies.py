"""A V2 shadow case's request body, kept aside in Redis (claim check) instead of travelling through
Temporal: the image would otherwise sit in the workflow's history, be decoded as the workflow's
input and again as the activity's, and stay in the shadow worker's workflow cache while the case
waits. The body is sealed (``KeyRing.seal_bytes``, bound to the case id) like every Temporal
payload, and lapses with the case (``CASE_TIMEOUT``) if no worker takes it.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from switchyard.common.payload_codec import KeyRing
from switchyard.common.shadow.spec import CASE_TIMEOUT

PREFIX = "switchyard:shadow:body:"


def _context(case_id: str) -> str:
    return f"shadow.body:{case_id}"


class ShadowBodies:
    def __init__(self, redis: Redis, keys: KeyRing, ttl_s: float = CASE_TIMEOUT.total_seconds()) -> None:
        self.redis, self.keys, self.ttl_ms = redis, keys, int(ttl_s * 1000)

    async def put(self, case_id: str, body: bytes) -> None:
        await self.redis.set(PREFIX + case_id, self.keys.seal_bytes(body, _context(case_id)), px=self.ttl_ms)

    async def get(self, case_id: str) -> bytes | None:
        """The body, or None when it lapsed (or Redis lost it)."""
        sealed = cast("bytes | None", await self.redis.get(PREFIX + case_id))  # the client does not decode responses
        return None if sealed is None else self.keys.unseal_bytes(sealed, _context(case_id))

    async def drop(self, case_id: str) -> None:
        await self.redis.delete(PREFIX + case_id)

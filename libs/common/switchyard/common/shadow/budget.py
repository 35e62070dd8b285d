"""How many shadow cases may be waiting or running at once, platform-wide (one Redis sorted set).

A case takes a place when it is mirrored and gives it back when the shadow worker is done with it;
a place not given back (a worker killed mid-case) lapses after ``hold_s``. A full budget drops
the case (counted): shadow traffic must never queue up behind, or in front of, live work.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

KEY = "switchyard:shadow:inflight"

# KEYS[1]: the set (member: case id, score: when the place lapses); ARGV: now, lapse time, limit, id.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
return 1
"""


class ShadowBudget:
    def __init__(self, redis: Redis, limit: int, hold_s: float = 300.0, key: str = KEY) -> None:
        self.redis, self.limit, self.hold_s, self.key = redis, limit, hold_s, key
        self._take = redis.register_script(_TAKE)

    async def take(self, case_id: str) -> bool:
        """A place for ``case_id``; False when ``limit`` cases hold one already."""
        now = time.time()
        return bool(await self._take(keys=[self.key], args=[now, now + self.hold_s, self.limit, case_id]))

    async def give_back(self, case_id: str) -> None:
        await self.redis.zrem(self.key, case_id)

    async def held(self) -> int:
        """Places held now (lapsed ones excluded)."""
        return int(await self.redis.zcount(self.key, time.time(), "+inf"))

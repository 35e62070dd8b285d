"""The quota scripts (switchyard.common.quotas) against the real Redis: token buckets for requests
and tokens, token reservations settled at a job's end, stream leases, the per-model backlog. Each
test uses its own random key prefix and deletes it afterwards."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from switchyard.common import quotas as q
from switchyard.common.keys import principal_of
from switchyard.common.quotas import Backlog, Limits, QuotaExceeded, Quotas, duration

REDIS_URL = os.environ.get("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest_asyncio.fixture
async def redis() -> AsyncIterator[Redis]:
    r = Redis.from_url(REDIS_URL)
    yield r
    await r.aclose()


@pytest_asyncio.fixture
async def quotas(redis: Redis) -> AsyncIterator[Quotas]:
    prefix = f"switchyard:test-quota:{uuid.uuid4().hex}"
    yield Quotas(redis, prefix)
    keys = [k async for k in redis.scan_iter(match=prefix + ":*")]
    if keys:
        await redis.delete(*keys)


@pytest_asyncio.fixture
async def backlog(redis: Redis) -> AsyncIterator[Backlog]:
    b = Backlog(redis, f"test-{uuid.uuid4().hex}")
    yield b
    keys = [k async for k in redis.scan_iter(match=b.key("*"))]
    if keys:
        await redis.delete(*keys)


def test_reset_durations_are_openai_s_format() -> None:
    assert [duration(s) for s in (0.02, 0.999, 1, 1.5, 59.2, 60, 360, 361.2)] == ["20ms", "999ms", "1s", "1.5s", "59.2s", "1m0s", "6m0s", "6m2s"]


def test_a_key_s_own_limits_override_its_tier_s() -> None:
    from switchyard.common.db.models import ApiKey

    row = ApiKey(id=uuid.uuid4(), tenant="t", name="", prefix="sk-sy-abcd", key_hash="0" * 64, scopes=["jobs"], tier="normal", rps=None, max_streams=3, tpm=None)
    tiers = {"normal": Limits(rps=10, max_streams=5, tpm=1000)}
    assert principal_of(row, tiers).limits == Limits(rps=10, max_streams=3, tpm=1000)
    assert principal_of(row, {}).limits == Limits(max_streams=3)  # a tier without limits: only the key's own
    with pytest.raises(ValueError):
        Limits(rps=0)


@pytest.mark.asyncio
async def test_request_bucket_refuses_past_the_burst_then_refills(quotas: Quotas) -> None:
    limits, key = Limits(rps=5), "k1"
    buckets = [await quotas.request(key, limits) for _ in range(5)]  # capacity = burst = 5
    assert [int(b.remaining) for b in buckets if b] == [4, 3, 2, 1, 0]
    with pytest.raises(QuotaExceeded) as e:
        await quotas.request(key, limits)
    assert e.value.limit == "requests" and e.value.retry_after == 1 and e.value.headers["Retry-After"] == "1"
    assert e.value.headers["x-ratelimit-limit-requests"] == "5" and e.value.headers["x-ratelimit-remaining-requests"] == "0"
    await asyncio.sleep(0.45)  # 5/s: two more tokens
    assert await quotas.request(key, limits) and await quotas.request(key, limits)
    with pytest.raises(QuotaExceeded):
        await quotas.request(key, limits)
    assert await quotas.request("other-key", limits)  # per key
    assert await quotas.request(key, Limits()) is None  # no limit: nothing counted


@pytest.mark.asyncio
async def test_concurrent_requests_take_exactly_the_burst(quotas: Quotas) -> None:
    limits = Limits(rps=20)  # burst 20

    async def one() -> bool:
        try:
            await quotas.request("k", limits)
            return True
        except QuotaExceeded:
            return False

    results = await asyncio.gather(*(one() for _ in range(60)))
    # 60 at once: the burst (20), plus whatever refilled during the burst (20/s: at most a few).
    assert 20 <= sum(results) <= 23


@pytest.mark.asyncio
async def test_token_reservation_is_settled_with_what_the_job_used(quotas: Quotas, redis: Redis) -> None:
    limits, key = Limits(tpm=600), "k"  # refill: 10 tokens/s
    job = uuid.uuid4().hex
    b = await quotas.tokens(key, limits, 500, job)
    assert b is not None and 99 <= b.remaining <= 101
    with pytest.raises(QuotaExceeded) as e:  # 500 more do not fit
        await quotas.tokens(key, limits, 500, uuid.uuid4().hex)
    assert e.value.limit == "tokens" and e.value.retry_after >= 39 and e.value.headers["x-ratelimit-limit-tokens"] == "600"
    assert await quotas.settle(job, 120) == 380  # reserved 500, used 120
    assert await quotas.settle(job, 0) == 0  # once only
    after = await quotas.remaining_tokens(key, limits)
    assert after is not None and 480 <= after.remaining <= 490
    # The refund never exceeds the capacity.
    job2 = uuid.uuid4().hex
    await quotas.tokens(key, limits, 100, job2)
    await asyncio.sleep(0.2)
    await quotas.settle(job2, 0)
    full = await quotas.remaining_tokens(key, limits)
    assert full is not None and full.remaining <= 600
    # More than the whole budget can never fit: refused at once.
    with pytest.raises(QuotaExceeded, match="too large"):
        await quotas.tokens(key, limits, 601, uuid.uuid4().hex)
    await redis.delete(q.reservation_key(job), q.reservation_key(job2))


@pytest.mark.asyncio
async def test_stream_leases_cap_concurrent_streams_and_expire(quotas: Quotas, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = Limits(max_streams=2)
    a, b = await quotas.open_stream("k", limits), await quotas.open_stream("k", limits)
    assert a is not None and b is not None
    with pytest.raises(QuotaExceeded) as e:
        await quotas.open_stream("k", limits)
    assert e.value.limit == "streams"
    await a.release()  # a closed stream frees its slot
    c = await quotas.open_stream("k", limits)
    assert c is not None
    # A lease nobody renews (its API process died) expires: here after 0.3 s.
    monkeypatch.setattr(q, "LEASE_S", 0.3)
    d = await quotas.open_stream("k2", limits)
    assert d is not None
    monkeypatch.setattr(q, "RENEW_EVERY_S", 0.0)
    await asyncio.sleep(0.2)
    await d.renew()  # renewed: still held
    e2 = await quotas.open_stream("k2", limits)
    assert e2 is not None
    with pytest.raises(QuotaExceeded):
        await quotas.open_stream("k2", limits)
    await asyncio.sleep(0.4)
    assert await quotas.open_stream("k2", limits) is not None and await quotas.open_stream("k2", limits) is not None


@pytest.mark.asyncio
async def test_backlog_admits_exactly_the_max_under_concurrency(backlog: Backlog) -> None:
    ids = [uuid.uuid4().hex for _ in range(50)]
    admitted = await asyncio.gather(*(backlog.admit("m", j, 10) for j in ids))
    assert sum(admitted) == 10 and await backlog.size("m") == 10
    first = ids[admitted.index(True)]
    assert await backlog.admit("m", first, 10)  # the same job again: idempotent, not a second place
    await backlog.release("m", first)
    assert await backlog.size("m") == 9 and await backlog.admit("m", uuid.uuid4().hex, 10)
    assert await backlog.size("other") == 0


@pytest.mark.asyncio
async def test_reconcile_drops_ended_and_orphaned_ids(backlog: Backlog) -> None:
    ended, running, young_orphan, old_orphan = (uuid.uuid4().hex for _ in range(4))
    for j in (ended, running, young_orphan, old_orphan):
        assert await backlog.admit("m", j, 10)
    members = await backlog.members()
    accepted = dict(members["m"])
    now = accepted[old_orphan] + q.ORPHAN_GRACE_S + 1
    # Make the young orphan young at `now`.
    members["m"] = [(j, now if j == young_orphan else t) for j, t in members["m"]]
    dropped = await backlog.reconcile(members, ended=[ended], known=[ended, running], now=now)
    assert dropped == 2
    left = {j for j, _ in (await backlog.members())["m"]}
    assert left == {running, young_orphan}


@pytest.mark.asyncio
async def test_one_quota_check_costs_one_round_trip(quotas: Quotas) -> None:
    """The in-process cost of a requests-per-second check (one EVALSHA); printed for the notes."""
    limits = Limits(rps=1_000_000)
    await quotas.request("bench", limits)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        await quotas.request("bench", limits)
    per_call_us = (time.perf_counter() - t0) / n * 1e6
    print(f"quota check (rps, EVALSHA): {per_call_us:.0f} us per call")
    assert per_call_us < 5000



@pytest.mark.asyncio
async def test_answers_carry_the_rate_limit_headers() -> None:
    """KeyFirst's ``send`` adds the key's request headers (and token headers admission left on the
    request's state) to an answer, without overriding headers the answer already has."""
    from switchyard.api.auth import with_rate_headers
    from switchyard.common.quotas import Bucket

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    state: dict[str, object] = {"rate_tokens": Bucket(limit=3000, remaining=472.4, wait_s=0, reset_s=50.5, ok=True)}
    wrapped = with_rate_headers(send, Bucket(limit=10, remaining=7.9, wait_s=0, reset_s=0.21, ok=True), state)  # type: ignore[arg-type]
    await wrapped({"type": "http.response.start", "status": 200, "headers": [(b"x-ratelimit-limit-requests", b"own")]})
    await wrapped({"type": "http.response.body", "body": b"{}"})
    headers = dict(sent[0]["headers"])  # type: ignore[call-overload]
    assert headers == {b"x-ratelimit-limit-requests": b"own", b"x-ratelimit-remaining-requests": b"7", b"x-ratelimit-reset-requests": b"210ms",
                       b"x-ratelimit-limit-tokens": b"3000", b"x-ratelimit-remaining-tokens": b"472", b"x-ratelimit-reset-tokens": b"50.5s"}
    assert sent[1] == {"type": "http.response.body", "body": b"{}"}

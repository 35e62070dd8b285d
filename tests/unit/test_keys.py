"""API keys: generation, hashing, the Principal's rules, and the KeyStore (on a scratch database of
the real PostgreSQL) with its cache and revocation."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from switchyard.common.keys import KEY_LENGTH, KEY_PREFIX, KeyStore, Principal, check_scopes, generate, hash_key, key_from_headers, well_formed
from switchyard.common.priority import capped_priority
from switchyard.common.quotas import DEFAULT_TIER_LIMITS

PEPPER = "unit-test-pepper-0123456789"


def test_generated_keys_are_long_random_and_well_formed() -> None:
    keys = {generate() for _ in range(100)}
    assert len(keys) == 100
    for k in keys:
        assert k.startswith(KEY_PREFIX) and len(k) == KEY_LENGTH == len("sk-sy-") + 43 and well_formed(k)
    assert not well_formed("sk-gold") and not well_formed(generate() + "x") and not well_formed("xx-sy-" + generate()[6:])


def test_hash_is_hmac_sha256_hex_and_depends_on_the_pepper() -> None:
    k = generate()
    h = hash_key(PEPPER, k)
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == hash_key(PEPPER, k)
    assert h != hash_key(PEPPER + "x", k) and h != hash_key(PEPPER, generate())
    assert k not in h


def test_key_from_headers() -> None:
    assert key_from_headers({"authorization": "Bearer sk-sy-abc"}) == "sk-sy-abc"
    assert key_from_headers({"authorization": "bearer   sk-sy-abc "}) == "sk-sy-abc"
    assert key_from_headers({"x-api-key": "sk-sy-abc"}) == "sk-sy-abc"
    assert key_from_headers({"authorization": "Basic dXNlcjpwdw=="}) is None
    assert key_from_headers({"authorization": "Basic dXNlcjpwdw==", "x-api-key": "k"}) == "k"
    assert key_from_headers({}) is None and key_from_headers({"authorization": "Bearer "}) is None


def test_principal_rules() -> None:
    p = Principal(key_id="1", tenant="acme", scopes=["jobs", "openai"], tier="normal")
    assert isinstance(p.scopes, frozenset)
    assert p.allows("jobs") and p.allows("openai") and not p.allows("v2") and not p.allows("admin")
    assert not p.is_admin and p.sees("acme") and not p.sees("other")
    admin = Principal(key_id="2", tenant="ops", scopes=frozenset({"admin"}), tier="high")
    assert admin.is_admin and all(admin.allows(s) for s in ("jobs", "openai", "v2", "admin")) and admin.sees("acme")


def test_the_tier_caps_the_priority_and_is_the_default() -> None:
    assert [capped_priority(None, t) for t in ("high", "normal", "low")] == [1, 3, 5]
    assert capped_priority("high", "normal") == 3 and capped_priority(1, "low") == 5  # never higher than the tier
    assert capped_priority("low", "high") == 5 and capped_priority(4, "normal") == 4  # lower is fine
    assert capped_priority(2, "high") == 2


def test_scopes_are_validated() -> None:
    assert check_scopes(["jobs", "v2", "jobs"]) == ["jobs", "v2"]
    with pytest.raises(ValueError, match="unknown scope"):
        check_scopes(["jobs", "root"])
    with pytest.raises(ValueError):
        check_scopes([])



@pytest.mark.asyncio
async def test_store_creates_looks_up_lists_and_revokes(engine: AsyncEngine) -> None:
    store = KeyStore(engine, PEPPER)
    secret, row = await store.create("acme", ["jobs", "v2"], "high", "ci")
    assert well_formed(secret) and row.prefix == secret[:10] and row.key_hash == hash_key(PEPPER, secret)
    assert row.tenant == "acme" and row.scopes == ["jobs", "v2"] and row.tier == "high" and row.name == "ci" and row.created_at is not None
    p = await store.lookup(secret)
    assert p == Principal(key_id=str(row.id), tenant="acme", scopes=frozenset({"jobs", "v2"}), tier="high", limits=DEFAULT_TIER_LIMITS["high"])
    assert await store.lookup(generate()) is None and await store.lookup("sk-gold") is None
    # The secret is nowhere in the database.
    async with engine.connect() as conn:
        dump = str((await conn.execute(text("SELECT * FROM api_keys"))).all())
    assert secret not in dump
    await store.create("other")
    assert [k.tenant for k in await store.list()] == ["acme", "other"] and [k.id for k in await store.list("acme")] == [row.id]
    revoked = await store.revoke(row.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert await store.lookup(secret) is None  # this process's cache forgot it at once
    assert await store.revoke(uuid.uuid4()) is None
    with pytest.raises(ValueError):
        await store.create("acme", tier="gold")
    # A peppered hash from another pepper finds nothing.
    assert await KeyStore(engine, PEPPER + "x").lookup((await store.create("acme"))[0]) is None


@pytest.mark.asyncio
async def test_other_processes_see_a_revocation_within_the_ttl(engine: AsyncEngine) -> None:
    api = KeyStore(engine, PEPPER, positive_ttl_s=0.3, negative_ttl_s=0.1)
    cli = KeyStore(engine, PEPPER)  # e.g. `./switchyard keys revoke`, another process
    secret, row = await cli.create("acme")
    assert await api.lookup(secret) is not None
    await cli.revoke(row.id)
    assert await api.lookup(secret) is not None  # cached: still accepted, for at most the TTL
    await asyncio.sleep(0.35)
    assert await api.lookup(secret) is None


@pytest.mark.asyncio
async def test_a_cached_lookup_does_not_touch_the_database(engine: AsyncEngine) -> None:
    store = KeyStore(engine, PEPPER, negative_ttl_s=60)
    secret, _ = await store.create("acme")
    unknown = generate()
    assert await store.lookup(secret) is not None and await store.lookup(unknown) is None
    await engine.dispose()
    store.sessions.configure(bind=create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none"))  # any query would fail now
    assert await store.lookup(secret) is not None and await store.lookup(unknown) is None

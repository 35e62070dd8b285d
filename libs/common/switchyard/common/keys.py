"""API keys: generation, hashing, the caller they identify (``Principal``) and their store.

A key is ``sk-sy-`` + 43 URL-safe characters (256 random bits). Only HMAC-SHA256(pepper, key) is
stored: a key has full entropy, so a slow password hash would add nothing against guessing, while
it would cost every request milliseconds; the pepper (a server secret, never in the database) makes
a stolen table useless on its own. See docs/security.md.

``KeyStore.lookup`` is on every request's path: it caches answers in-process (found: 5 s, not
found: 1 s), so a cached lookup is one HMAC and one dict hit. ``revoke`` clears this process's
cache; other processes stop accepting a revoked key when their cached entry expires (≤ 5 s).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.common.db.models import ApiKey
from switchyard.common.quotas import DEFAULT_TIER_LIMITS, UNLIMITED, Limits

KEY_PREFIX: Final = "sk-sy-"
# secrets.token_urlsafe(32): 32 bytes → 43 characters.
KEY_LENGTH: Final = len(KEY_PREFIX) + 43
# Characters of a key kept for listings (``sk-sy-`` + 4).
LISTED_PREFIX: Final = 10

Scope = Literal["jobs", "openai", "v2", "admin"]
SCOPES: Final[tuple[str, ...]] = get_args(Scope)
Tier = Literal["high", "normal", "low"]
TIERS: Final[tuple[str, ...]] = get_args(Tier)
DEFAULT_SCOPES: Final[tuple[Scope, ...]] = ("jobs", "openai", "v2")

POSITIVE_TTL_S: Final = 5.0
NEGATIVE_TTL_S: Final = 1.0
# Bound on cached entries: random keys sent by a client must not grow the cache without limit.
CACHE_MAX: Final = 10_000


def generate() -> str:
    """A new secret key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(pepper: str, secret: str) -> str:
    """HMAC-SHA256(pepper, secret), hex: what the database stores and looks keys up by."""
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def well_formed(secret: str) -> bool:
    """Shaped like a key this module generates (anything else is refused without a lookup)."""
    return len(secret) == KEY_LENGTH and secret.startswith(KEY_PREFIX) and secret.isascii()


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key of a request: ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>`` (lower-case names)."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: its key, the key's tenant, scopes, priority tier and effective
    limits (the key's own, else its tier's; switchyard.common.quotas)."""

    key_id: str
    tenant: str
    # Any collection given; kept as a frozenset.
    scopes: Collection[str] = field(default_factory=frozenset)
    tier: str = "normal"
    limits: Limits = UNLIMITED

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", frozenset(self.scopes))

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        """``admin`` grants every scope."""
        return self.is_admin or scope in self.scopes

    def sees(self, tenant: str) -> bool:
        """Whether this caller may see a job of ``tenant``."""
        return self.is_admin or tenant == self.tenant


def principal_of(row: ApiKey, tier_limits: Mapping[str, Limits] = DEFAULT_TIER_LIMITS) -> Principal:
    limits = tier_limits.get(row.tier, UNLIMITED).over(row.rps, row.max_streams, row.tpm)
    return Principal(key_id=str(row.id), tenant=row.tenant, scopes=frozenset(row.scopes), tier=row.tier, limits=limits)


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, validated and de-duplicated in order; ValueError names an unknown one."""
    out: list[str] = []
    for s in scopes:
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r} (scopes: {', '.join(SCOPES)})")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError("a key needs at least one scope")
    return out


class KeyStore:
    def __init__(self, engine: AsyncEngine, pepper: str, *, positive_ttl_s: float = POSITIVE_TTL_S, negative_ttl_s: float = NEGATIVE_TTL_S,
                 tier_limits: Mapping[str, Limits] = DEFAULT_TIER_LIMITS) -> None:
        if not pepper:
            raise ValueError("the key pepper is empty")
        self.tier_limits = tier_limits
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._pepper = pepper
        self.positive_ttl_s, self.negative_ttl_s = positive_ttl_s, negative_ttl_s
        # key hash → (monotonic expiry, principal or None for "no such key")
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def hash(self, secret: str) -> str:
        return hash_key(self._pepper, secret)

    async def create(self, tenant: str, scopes: Sequence[str] = DEFAULT_SCOPES, tier: str = "normal", name: str = "", *,
                     rps: float | None = None, max_streams: int | None = None, tpm: int | None = None) -> tuple[str, ApiKey]:
        """A new key: (the secret, shown once; its row). ``rps``, ``max_streams``, ``tpm``: the key's
        own limits (None: its tier's)."""
        Limits(rps=rps, max_streams=max_streams, tpm=tpm)  # ValueError (pydantic's) when out of range
        if not tenant or len(tenant) > 64:
            raise ValueError("tenant must be 1 to 64 characters")
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r} (tiers: {', '.join(TIERS)})")
        if len(name) > 128:
            raise ValueError("name must be at most 128 characters")
        secret = generate()
        row = ApiKey(id=uuid.uuid4(), tenant=tenant, name=name, prefix=secret[:LISTED_PREFIX], key_hash=self.hash(secret),
                     scopes=check_scopes(scopes), tier=tier, rps=rps, max_streams=max_streams, tpm=tpm)
        async with self.sessions.begin() as s:
            s.add(row)
        async with self.sessions() as s:  # the row as stored (created_at from the server)
            stored = await s.get(ApiKey, row.id)
        assert stored is not None
        return secret, stored

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys, oldest first (revoked ones included, with ``revoked_at``)."""
        q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if tenant is not None:
            q = q.where(ApiKey.tenant == tenant)
        async with self.sessions() as s:
            return list((await s.execute(q)).scalars())

    async def revoke(self, key_id: uuid.UUID | str) -> ApiKey | None:
        """Revoke a key (idempotent: a revoked key keeps its first revocation time); None if there is no such key."""
        kid = key_id if isinstance(key_id, uuid.UUID) else uuid.UUID(key_id)
        async with self.sessions.begin() as s:
            await s.execute(update(ApiKey).where(ApiKey.id == kid, ApiKey.revoked_at.is_(None)).values(revoked_at=func.now()))
        async with self.sessions() as s:
            row = await s.get(ApiKey, kid)
        if row is not None:
            self._cache.pop(row.key_hash, None)
        return row

    async def lookup(self, secret: str) -> Principal | None:
        """The caller a key identifies, or None (unknown, revoked or malformed)."""
        if not well_formed(secret):
            return None
        digest = self.hash(secret)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.sessions() as s:
            row = (await s.execute(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))).scalar_one_or_none()
        found = principal_of(row, self.tier_limits) if row is not None else None
        if len(self._cache) >= CACHE_MAX:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[digest] = (now + (self.positive_ttl_s if found else self.negative_ttl_s), found)
        return found

    def forget(self) -> None:
        """Drop every cached answer."""
        self._cache.clear()

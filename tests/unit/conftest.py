"""Fixtures the unit tests that need the real PostgreSQL share."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from switchyard.common.db.migrate import upgrade

PG_SERVER = os.environ.get("SWITCHYARD_POSTGRES_DSN", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    """A scratch database with every migration applied, dropped afterwards."""
    dsn = f"{PG_SERVER}/switchyard_unit_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(upgrade, dsn)  # Alembic runs its own event loop
    eng = create_async_engine(dsn)
    try:
        yield eng
    finally:
        await eng.dispose()
        admin = create_async_engine(make_url(dsn).set(database="postgres"), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(dsn).database}" WITH (FORCE)'))
        await admin.dispose()

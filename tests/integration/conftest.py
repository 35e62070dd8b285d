"""One real Switchyard stack for the integration tests: Temporal dev server, PostgreSQL, Redis,
llama.cpp (SmolLM2-135M), worker-llm, API and Nginx, on free ports, in one pytest process."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from switchyard.devstack.client import JobClient
from switchyard.devstack.stack import Stack, StackConfig

PG_ADMIN = os.environ.get("SWITCHYARD_POSTGRES_DSN", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


async def _drop_db(name: str) -> None:
    engine = create_async_engine(PG_ADMIN.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    db = f"switchyard_test_{uuid.uuid4().hex[:8]}"
    state = Path(tempfile.mkdtemp(prefix="switchyard-test-", dir=os.environ.get("SWITCHYARD_TEST_STATE_DIR")))
    # One activity slot: the priority test needs a saturated worker; the rest does not mind.
    cfg = StackConfig.ephemeral(state, postgres_dsn=PG_ADMIN.rsplit("/", 1)[0] + f"/{db}", worker_concurrency=1, engine_parallel=2)
    s = Stack(cfg)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        asyncio.run(_drop_db(db))


@pytest.fixture(scope="session")
def client(stack: Stack) -> JobClient:
    """Talks to the platform through Nginx, as users do."""
    return JobClient(stack.ingress)

"""Apply Alembic migrations programmatically: ``python -m switchyard.common.db.migrate``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from switchyard.common.settings import CommonSettings


def alembic_config(dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    return cfg


async def ensure_database(dsn: str) -> None:
    """Create the target database if the server lacks it (local and CI convenience)."""
    url = make_url(dsn)
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database})
            if not exists:
                await conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    finally:
        await admin.dispose()


def upgrade(dsn: str) -> None:
    asyncio.run(ensure_database(dsn))
    command.upgrade(alembic_config(dsn), "head")


if __name__ == "__main__":
    upgrade(CommonSettings().postgres_dsn)

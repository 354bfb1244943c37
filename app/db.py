"""Engines, transactions and migrations for SQLite and PostgreSQL.

Writes go through `Database.write()`: one transaction, `BEGIN IMMEDIATE` on SQLite so two
writers never both read a balance and then both debit it. Reads go through `Database.read()`:
no transaction wrapped around them (autocommit), one round trip, for the hot actions.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import migrations

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_engine(url: str, begin: str | None) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module, so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if begin is not None:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)

    return engine


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = _sqlite_engine(url, "BEGIN IMMEDIATE")
            # Autocommit reads: each statement sees the latest commit, holds no lock.
            self.read_engine = _sqlite_engine(url, None)
        else:
            self.engine = create_async_engine(url, pool_size=10, max_overflow=20)
            self.read_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: commits on success, rolls back on any exception."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.read_engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A transaction whose reads all see one consistent state (for checks and reports)."""
        if self.is_sqlite:
            async with self.write() as conn:
                yield conn
            return
        engine = self.engine.execution_options(isolation_level="REPEATABLE READ")
        async with engine.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to head (alembic upgrade head) on this database."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade_head)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def ping(db: Database) -> bool:
    try:
        async with db.read() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # a health check reports; it never raises
        return False

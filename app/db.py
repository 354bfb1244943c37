"""Engines, transactions and migrations for SQLite and PostgreSQL.

Writes go through `Database.write()`: one transaction, `BEGIN IMMEDIATE` on SQLite so two
writers never both read a balance and then both debit it. Reads go through `Database.read()`:
no transaction wrapped around them (autocommit). The few reads on every request's path (the
key lookup, order statuses) go through `Database.fetch()`: the driver itself, without
SQLAlchemy's pool in between, which bench/README.md measured at a fraction of the cost.
"""

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
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


def _open_sqlite_reader(url: str) -> sqlite3.Connection:
    path = url.split(":///", 1)[1]
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
    )
    conn.execute("PRAGMA busy_timeout=2000")
    return conn


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
        self._sqlite_reader: sqlite3.Connection | None = None
        self._pg_pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def fetch(self, sqlite_sql: str, postgres_sql: str, *args: Any) -> list[Sequence[Any]]:
        """One hot read, straight through the driver; the SQL is given in each dialect.

        SQLite: a read-only stdlib connection used in the event loop. An indexed read in WAL
        mode never waits for a writer and takes microseconds, less than a thread hop costs.
        """
        if self.is_sqlite:
            if self._sqlite_reader is None:
                self._sqlite_reader = _open_sqlite_reader(self.url)
            return self._sqlite_reader.execute(sqlite_sql, args).fetchall()
        if self._pg_pool is None:
            async with self._pool_lock:
                if self._pg_pool is None:
                    self._pg_pool = await asyncpg.create_pool(
                        self.url.replace("postgresql+asyncpg://", "postgresql://", 1),
                        min_size=1,
                        max_size=10,
                    )
        return await self._pg_pool.fetch(postgres_sql, *args)

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
        if self._sqlite_reader is not None:
            self._sqlite_reader.close()
            self._sqlite_reader = None
        if self._pg_pool is not None:
            await self._pg_pool.close()
            self._pg_pool = None
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
